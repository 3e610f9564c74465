//! Parity against reference fixtures (format: `shared/fixtures/README.md`): every stage of a
//! case — input ids, pixels, positions, intermediate tensors, logits, greedy continuation —
//! compared with the tolerances the case states. `pixlm check` and the parity test both run
//! this code.

use crate::engine::{Engine, GenerateOptions};
use crate::error::{EngineError, Result};
use crate::messages::ChatMessage;
use candle_core::{DType, Device, Tensor};
use pixlm_models::{LoadOptions, LogitsWanted, Trace};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One comparison of a case.
#[derive(Clone, Debug)]
pub struct CheckLine {
    pub name: String,
    /// Max |port − expected|, or the number of mismatches for exact checks.
    pub value: f64,
    pub tolerance: f64,
    pub pass: bool,
    pub note: String,
}

#[derive(Clone, Debug)]
pub struct CaseReport {
    pub set: String,
    pub case: String,
    pub lines: Vec<CheckLine>,
    /// A failure before the comparisons could run (model not loadable, …).
    pub error: Option<String>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.lines.iter().all(|l| l.pass)
    }
}

/// The case directories under `root`: a case (has case.json), a fixture set (has cases/), or
/// a folder of fixture sets. Sorted for a stable order.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.is_dir() {
        return Err(EngineError::Check(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    if root.join("case.json").is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    let cases = root.join("cases");
    if cases.is_dir() {
        for e in sorted_dirs(&cases)? {
            if e.join("case.json").is_file() {
                out.push(e);
            }
        }
        return Ok(out);
    }
    for set in sorted_dirs(root)? {
        if set.join("cases").is_dir() {
            out.extend(discover(&set)?);
        }
    }
    if out.is_empty() {
        return Err(EngineError::Check(format!(
            "no fixture cases under {} (expected case.json, cases/, or fixture sets)",
            root.display()
        )));
    }
    Ok(out)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| EngineError::Check(format!("{}: {e}", dir.display())))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

/// Runs every case under `root`, loading each model once. `progress` is told each case's
/// name as it starts.
pub fn run_all(
    root: &Path,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<CaseReport>> {
    let cases = discover(root)?;
    let mut engines: HashMap<PathBuf, std::result::Result<Engine, String>> = HashMap::new();
    let mut reports = Vec::new();
    for case_dir in cases {
        let (set, case) = names(&case_dir);
        progress(&format!("{set}/{case}"));
        let report = match read_json(&case_dir.join("case.json")) {
            Err(e) => CaseReport {
                set,
                case,
                lines: vec![],
                error: Some(e.to_string()),
            },
            Ok(spec) => {
                let model_dir = case_dir.join(spec["model_dir"].as_str().unwrap_or("../../model"));
                let key = model_dir.canonicalize().unwrap_or(model_dir.clone());
                let engine = engines
                    .entry(key)
                    .or_insert_with(|| Engine::load(&model_dir, opts).map_err(|e| e.to_string()));
                match engine {
                    Err(e) => CaseReport {
                        set,
                        case,
                        lines: vec![],
                        error: Some(format!("loading {}: {e}", model_dir.display())),
                    },
                    Ok(engine) => match run_case(engine, &case_dir, &spec) {
                        Ok(lines) => CaseReport {
                            set,
                            case,
                            lines,
                            error: None,
                        },
                        Err(e) => CaseReport {
                            set,
                            case,
                            lines: vec![],
                            error: Some(e.to_string()),
                        },
                    },
                }
            }
        };
        reports.push(report);
    }
    Ok(reports)
}

fn names(case_dir: &Path) -> (String, String) {
    let case = case_dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let set = case_dir
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (set, case)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Check(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| EngineError::Check(format!("{}: {e}", path.display())))
}

fn tol(spec: &Value, name: &str, default: f64) -> f64 {
    spec["tolerances"]["f32"][name]["max_abs"]
        .as_f64()
        .unwrap_or(default)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(pixlm_models::max_abs_diff(a, b)? as f64)
}

fn line(name: &str, value: f64, tolerance: f64, note: impl Into<String>) -> CheckLine {
    CheckLine {
        name: name.into(),
        value,
        tolerance,
        pass: value <= tolerance,
        note: note.into(),
    }
}

fn exact(name: &str, ours: &[i64], expected: &[i64]) -> CheckLine {
    let mism = if ours.len() != expected.len() {
        ours.len().max(expected.len())
    } else {
        ours.iter().zip(expected).filter(|(a, b)| a != b).count()
    };
    let note = if mism == 0 {
        format!("{} equal", ours.len())
    } else {
        let first = ours
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(expected.len()));
        format!(
            "{mism} differ (lengths {} vs {}; first at {first})",
            ours.len(),
            expected.len()
        )
    };
    CheckLine {
        name: name.into(),
        value: mism as f64,
        tolerance: 0.0,
        pass: mism == 0,
        note,
    }
}

/// Byte-exact string comparison; the note shows where the strings part.
fn same_text(name: &str, ours: &str, expected: &str) -> CheckLine {
    if ours == expected {
        return CheckLine {
            name: name.into(),
            value: 0.0,
            tolerance: 0.0,
            pass: true,
            note: format!("{} bytes identical", ours.len()),
        };
    }
    let at = ours
        .bytes()
        .zip(expected.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(expected.len()));
    let snippet = |s: &str| {
        let start = char_floor(s, at.saturating_sub(20));
        let end = char_floor(s, at + 20);
        format!("{:?}", &s[start..end])
    };
    CheckLine {
        name: name.into(),
        value: 1.0,
        tolerance: 0.0,
        pass: false,
        note: format!(
            "differs at byte {at} (lengths {} vs {}): ours {} expected {}",
            ours.len(),
            expected.len(),
            snippet(ours),
            snippet(expected)
        ),
    }
}

/// The largest char boundary of `s` at or before byte `i`.
fn char_floor(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Qwen3-MoE routing: the experts chosen at every prompt position (exact, descending
/// probability) and their weights, one (L, k) slice per sparse layer.
fn router_lines(spec: &Value, trace: &Trace, sel: &Tensor, w: &Tensor) -> Result<Vec<CheckLine>> {
    let mut out = Vec::new();
    let n_exp = sel.dim(0)?;
    if let Some(layers) = spec["moe_layers"].as_array() {
        if layers.len() != n_exp {
            return Err(EngineError::Check(format!(
                "case.json lists {} moe_layers but router_selected_experts has {n_exp}",
                layers.len()
            )));
        }
    }
    if trace.router.len() != n_exp {
        out.push(CheckLine {
            name: "router_layers".into(),
            value: (trace.router.len() as f64 - n_exp as f64).abs(),
            tolerance: 0.0,
            pass: false,
            note: format!(
                "the model routed in {} layers, the reference in {n_exp}",
                trace.router.len()
            ),
        });
        return Ok(out);
    }
    let ids: Vec<Tensor> = trace
        .router
        .iter()
        .map(|(i, _)| i.to_dtype(DType::I64))
        .collect::<candle_core::Result<_>>()?;
    let ws: Vec<&Tensor> = trace.router.iter().map(|(_, w)| w).collect();
    let ours_ids: Vec<i64> = Tensor::stack(&ids, 0)?.flatten_all()?.to_vec1()?;
    let exp_ids: Vec<i64> = sel.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    out.push(exact("router_selected_experts", &ours_ids, &exp_ids));
    let ours_w = Tensor::stack(&ws, 0)?;
    out.push(line(
        "router_weights",
        max_abs(&ours_w, w)?,
        tol(spec, "router_weights", 1e-5),
        format!("{n_exp} layers"),
    ));
    Ok(out)
}

/// Top-k agreement allowing near-ties: every expected (id, value) must be matched by our
/// logit of that id within `tol`, and any id we rank above the expected k-th value by more
/// than `tol` must be among the expected ids. Returns (max value error, id violations).
fn topk_agreement(logits: &[f32], exp_ids: &[i64], exp_vals: &[f32], tol: f64) -> (f64, usize) {
    let mut err = 0f64;
    let mut bad = 0;
    for (&id, &v) in exp_ids.iter().zip(exp_vals) {
        match logits.get(id as usize) {
            Some(&x) => err = err.max((x as f64 - v as f64).abs()),
            None => bad += 1,
        }
    }
    let kth = exp_vals.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
    for (i, &x) in logits.iter().enumerate() {
        if (x as f64) > kth + tol && !exp_ids.contains(&(i as i64)) {
            bad += 1;
        }
    }
    (err, bad)
}

fn run_case(engine: &Engine, case_dir: &Path, spec: &Value) -> Result<Vec<CheckLine>> {
    let dev = Device::Cpu;
    let exp = candle_core::safetensors::load(case_dir.join("expected.safetensors"), &dev)?;
    let get = |n: &str| {
        exp.get(n)
            .ok_or_else(|| EngineError::Check(format!("expected.safetensors has no {n}")))
    };
    let messages: Vec<ChatMessage> = serde_json::from_value(spec["messages"].clone())
        .map_err(|e| EngineError::Check(format!("case.json messages: {e}")))?;
    let mut pre = engine.preprocess.clone();
    if let Some(p) = spec.get("preprocessing").filter(|p| p.is_object()) {
        if let Some(v) = p["min_pixels"].as_u64() {
            pre.min_pixels = v;
        }
        if let Some(v) = p["max_pixels"].as_u64() {
            pre.max_pixels = v;
        }
    }
    let kwargs = match spec.get("chat_template_kwargs") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(EngineError::Check(format!(
                "case.json chat_template_kwargs is not an object: {other}"
            )))
        }
    };
    let mut lines = Vec::new();
    let prepared = engine.prepare_with_kwargs(&messages, Some(case_dir), &pre, &kwargs)?;
    if let Some(want) = spec["prompt"].as_str() {
        lines.push(same_text("prompt", &prepared.prompt, want));
    }
    let ids: Vec<i64> = prepared.ids.iter().map(|&i| i as i64).collect();
    let exp_ids: Vec<i64> = get("input_ids")?.to_dtype(DType::I64)?.to_vec1()?;
    lines.push(exact("input_ids", &ids, &exp_ids));
    if exp.contains_key("grid_hw") {
        let grids: Vec<i64> = prepared
            .images
            .iter()
            .flat_map(|i| [i.grid_h as i64, i.grid_w as i64])
            .collect();
        let exp_g: Vec<i64> = get("grid_hw")?.flatten_all()?.to_vec1()?;
        lines.push(exact("grid_hw", &grids, &exp_g));
    }
    if let Ok(pv) = get("pixel_values") {
        let ours: Vec<f32> = prepared
            .images
            .iter()
            .flat_map(|i| i.pixels.iter().copied())
            .collect();
        let n = ours.len();
        let ours = Tensor::from_vec(ours, n, &dev)?;
        lines.push(line(
            "pixel_values",
            max_abs(&ours, pv)?,
            tol(spec, "pixel_values", 1e-6),
            "",
        ));
    }
    if let (Ok(thw), Some(neo)) = (get("thw_indexes"), engine.model.as_neo()) {
        let mut cache = pixlm_models::KvCache::new();
        let input = pixlm_models::SeqInput {
            ids: &prepared.ids,
            images: &prepared.images,
            decode: false,
            cache: &mut cache,
            logits: LogitsWanted::None,
        };
        let p = neo.positions(&input, &pixlm_models::KvCache::new())?;
        let ours: Vec<i64> = p.t.iter().chain(&p.h).chain(&p.w).copied().collect();
        let expv: Vec<i64> = thw.flatten_all()?.to_vec1()?;
        lines.push(exact("thw_indexes", &ours, &expv));
    }
    if lines.iter().any(|l| !l.pass) {
        // Later stages would only compare different inputs.
        return Ok(lines);
    }
    let mut trace = Trace::default();
    let (cache, logits) = engine.prefill(&prepared, LogitsWanted::All, Some(&mut trace))?;
    let tensors = [
        ("vision_embeds", &trace.vision_embeds, 2e-4),
        ("inputs_embeds", &trace.inputs_embeds, 2e-4),
        ("hidden_layer0", &trace.hidden_layer0, 1e-4),
        ("hidden_final_norm", &trace.hidden_final_norm, 2e-4),
    ];
    for (name, ours, default) in tensors {
        if let (Ok(e), Some(o)) = (get(name), ours) {
            lines.push(line(name, max_abs(o, e)?, tol(spec, name, default), ""));
        }
    }
    if let (Ok(sel), Ok(w)) = (get("router_selected_experts"), get("router_weights")) {
        lines.extend(router_lines(spec, &trace, sel, w)?);
    }
    let n = logits.dim(0)?;
    let last = logits.get(n - 1)?;
    let logit_tol = tol(spec, "logits_last", 1e-4);
    lines.push(line(
        "logits_last",
        max_abs(&last, get("logits_last")?)?,
        logit_tol,
        "",
    ));
    let all: Vec<Vec<f32>> = logits.to_vec2()?;
    if let (Ok(ti), Ok(tv)) = (get("prompt_top10_ids"), get("prompt_top10_values")) {
        let ti: Vec<Vec<i64>> = ti.to_vec2()?;
        let tv: Vec<Vec<f32>> = tv.to_vec2()?;
        let t = tol(spec, "prompt_top10_values", logit_tol);
        let (mut err, mut bad) = (0f64, 0);
        for ((l, i), v) in all.iter().zip(&ti).zip(&tv) {
            let (e, b) = topk_agreement(l, i, v, t);
            err = err.max(e);
            bad += b;
        }
        lines.push(line(
            "prompt_top10_values",
            err,
            t,
            format!("{} positions", ti.len()),
        ));
        lines.push(CheckLine {
            name: "prompt_top10_ids".into(),
            value: bad as f64,
            tolerance: 0.0,
            pass: bad == 0,
            note: "near-ties allowed".into(),
        });
    }
    // Greedy continuation with the KV cache, recording the logits behind each token.
    let exp_gen: Vec<i64> = spec["expected"]["generated_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
        .unwrap_or_default();
    let max_new = spec["generation"]["max_new_tokens"]
        .as_u64()
        .unwrap_or(exp_gen.len() as u64) as usize;
    let mut steps: Vec<Vec<f32>> = Vec::new();
    let mut on_step = |l: &[f32]| steps.push(l.to_vec());
    let opts = GenerateOptions {
        max_new_tokens: max_new,
        ..Default::default()
    };
    let g = engine.decode(
        cache,
        all[n - 1].clone(),
        &opts,
        &mut |_| {},
        Some(&mut on_step),
    )?;
    let ours: Vec<i64> = g.ids.iter().map(|&i| i as i64).collect();
    let mut gl = exact("generated_ids", &ours, &exp_gen);
    if let Some(m) = spec["expected"]["greedy_min_top2_margin"].as_f64() {
        gl.note = format!("{} (reference top-2 margin {m:.1e})", gl.note);
    }
    lines.push(gl);
    if let (Ok(ti), Ok(tv)) = (get("decode_top10_ids"), get("decode_top10_values")) {
        let ti: Vec<Vec<i64>> = ti.to_vec2()?;
        let tv: Vec<Vec<f32>> = tv.to_vec2()?;
        let t = tol(spec, "decode_top10_values", logit_tol);
        let (mut err, mut bad) = (0f64, 0);
        for ((l, i), v) in steps.iter().zip(&ti).zip(&tv) {
            let (e, b) = topk_agreement(l, i, v, t);
            err = err.max(e);
            bad += b;
        }
        if steps.len() < ti.len() {
            bad += ti.len() - steps.len();
        }
        lines.push(line(
            "decode_top10_values",
            err,
            t,
            format!("{} steps", steps.len().min(ti.len())),
        ));
        lines.push(CheckLine {
            name: "decode_top10_ids".into(),
            value: bad as f64,
            tolerance: 0.0,
            pass: bad == 0,
            note: "near-ties allowed".into(),
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_comparison_names_the_first_difference() {
        assert!(same_text("prompt", "héllo", "héllo").pass);
        let l = same_text("prompt", "<think>\n\n</think>é", "<think>\n</think>é");
        assert!(!l.pass);
        assert!(l.note.contains("differs at byte 8"), "{}", l.note);
        // Snippets cut at char boundaries even around multi-byte text.
        let l = same_text("prompt", &"é".repeat(30), &format!("{}x", "é".repeat(15)));
        assert!(!l.pass && l.note.contains("byte 30"), "{}", l.note);
    }
}
