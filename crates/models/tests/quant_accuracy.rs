//! Measurement, not a check (ignored by default): for each format, top-1 agreement of the
//! quantized model with f32 over every prompt position, max/mean logit error, greedy-decode
//! agreement, and the GGUF file size against the f32 weights, on the fixtures and on
//! random-weight NEO-shaped models.
//!
//! nice -n 19 cargo test --release -j 1 -p pixlm-models --test quant_accuracy -- --ignored --nocapture
//! (PIXLM_QUANT_SHAPES=neo-2b-2l,neo-1k-4l,fixtures picks the models; PIXLM_QUANT_HEAD=1 also
//! measures quantizing the output head.)

mod quant_common;

use candle_core::Tensor;
use pixlm_models::gguf;
use pixlm_models::layers::Linear;
use pixlm_models::{LoadOptions, Model, ModelConfig, NeoSpecialIds, QuantFormat};
use quant_common::*;
use std::path::{Path, PathBuf};

const FMTS: [QuantFormat; 2] = [QuantFormat::Q8_0, QuantFormat::Q4K];

fn row(
    name: &str,
    fmt: &str,
    a: &Agreement,
    greedy: (usize, usize),
    quantized: usize,
    dense: usize,
    size: Option<(u64, u64)>,
) {
    let size = size
        .map(|(file, f32b)| {
            format!(
                "{:.3}x ({:.1} MiB / {:.1} MiB f32)",
                file as f64 / f32b as f64,
                file as f64 / 1048576.0,
                f32b as f64 / 1048576.0
            )
        })
        .unwrap_or_else(|| "-".into());
    println!(
        "| {name} | {fmt} | {}/{} matrices | {:.1}% ({} pos) | {:.3e} | {:.3e} | {:.4} | {}/{} | {size} |",
        quantized,
        quantized + dense,
        100.0 * a.top1,
        a.positions,
        a.max_err,
        a.mean_err,
        a.max_err / a.ref_max,
        greedy.0,
        greedy.1,
    );
}

fn prefix_match(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn measure(
    name: &str,
    dir: &Path,
    neo: Option<NeoSpecialIds>,
    prompt: &(Vec<u32>, Vec<pixlm_models::ImageInput>),
    export: bool,
) {
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let dense = Model::load(dir, &cfg, neo, &LoadOptions::default()).unwrap();
    let reference = all_logits(&dense, &prompt.0, &prompt.1);
    let g_ref = greedy(&dense, &prompt.0, &prompt.1, 16);
    let head_f32 = if std::env::var_os("PIXLM_QUANT_HEAD").is_some() {
        Some(head_logits_input(&dense, dir, prompt))
    } else {
        None
    };
    drop(dense);
    for fmt in FMTS {
        let opts = LoadOptions {
            quant: Some(fmt),
            ..Default::default()
        };
        let (q, r) = Model::load_with_report(dir, &cfg, neo, &opts).unwrap();
        let got = all_logits(&q, &prompt.0, &prompt.1);
        let a = compare(&reference, &got);
        let g = greedy(&q, &prompt.0, &prompt.1, 16);
        let size = if export {
            let tmp = temp_dir("acc");
            let out = tmp.path().join(format!("{fmt}.gguf"));
            let texts = texts(&std::fs::read_to_string(dir.join("config.json")).unwrap());
            let rep = gguf::export(dir, &cfg, neo, fmt, false, &texts, &out, &mut |_| {}).unwrap();
            Some((rep.file_bytes, rep.f32_bytes))
        } else {
            None
        };
        row(
            name,
            fmt.name(),
            &a,
            (prefix_match(&g_ref, &g), g_ref.len()),
            r.num_quantized(),
            r.num_dense(),
            size,
        );
        if let Some((hn, head, ref_logits)) = &head_f32 {
            // The same final hidden states through a quantized head, against the f32 head.
            if let Ok(qh) = Linear::quantized(head, fmt) {
                let ql = qh.forward(hn).unwrap();
                let ah = compare(ref_logits, &ql);
                row(
                    &format!("{name} (head only)"),
                    fmt.name(),
                    &ah,
                    (0, 0),
                    1,
                    0,
                    None,
                );
            }
        }
    }
}

/// Final-norm hidden states, the head weight, and the f32 logits, for the head experiment.
fn head_logits_input(
    m: &Model,
    dir: &Path,
    prompt: &(Vec<u32>, Vec<pixlm_models::ImageInput>),
) -> (Tensor, Tensor, Tensor) {
    let mut trace = pixlm_models::Trace::default();
    let mut cache = pixlm_models::KvCache::new();
    let l = m
        .forward(
            &mut [pixlm_models::SeqInput {
                ids: &prompt.0,
                images: &prompt.1,
                decode: false,
                cache: &mut cache,
                logits: pixlm_models::LogitsWanted::All,
            }],
            Some(&mut trace),
        )
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    let hn = trace.hidden_final_norm.unwrap();
    // The head as the checkpoint stores it (untied), else the tied embedding table.
    let st =
        unsafe { candle_core::safetensors::MmapedSafetensors::new(dir.join("model.safetensors")) }
            .unwrap();
    let head = [
        "language_model.lm_head.weight",
        "lm_head.weight",
        "language_model.model.embed_tokens.weight",
        "model.embed_tokens.weight",
    ]
    .iter()
    .find_map(|n| st.load(n, &candle_core::Device::Cpu).ok())
    .unwrap()
    .to_dtype(candle_core::DType::F32)
    .unwrap();
    (hn, head, l)
}

fn fixtures() -> Option<PathBuf> {
    let p = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    p.join("neo-tiny/model").is_dir().then_some(p)
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn quantization_accuracy() {
    let shapes = std::env::var("PIXLM_QUANT_SHAPES")
        .unwrap_or_else(|_| "fixtures,neo-1k-4l,neo-2b-2l".into());
    println!("| model | format | quantized | top-1 agreement | max abs logit err | mean abs logit err | max err / max abs logit | greedy prefix match | GGUF size vs f32 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for shape in shapes.split(',') {
        match shape {
            "fixtures" => {
                let Some(fx) = fixtures() else { continue };
                let neo = NeoSpecialIds {
                    img_start: 151670,
                    img_end: 151671,
                    img_context: 151669,
                };
                measure(
                    "neo-tiny (fixture)",
                    &fx.join("neo-tiny/model"),
                    Some(neo),
                    &prompt_for(151643, Some(neo), 32),
                    true,
                );
                for q in ["qwen3-tiny", "qwen3-moe-tiny"] {
                    measure(
                        &format!("{q} (fixture)"),
                        &fx.join(q).join("model"),
                        None,
                        &prompt_for(151643, None, 32),
                        true,
                    );
                }
            }
            other => {
                let s = match other {
                    // NEO-2B's layer shapes (hidden 2048, 16/8 heads of 128, intermediate 6144),
                    // 2 layers, vocabulary cut to 8192 so it fits a test.
                    "neo-2b-2l" => Shape {
                        hidden: 2048,
                        inter: 6144,
                        heads: 16,
                        kv: 8,
                        head_dim: 128,
                        layers: 2,
                        vocab: 8192,
                        vision: 1024,
                        tied: false,
                    },
                    "neo-1k-4l" => Shape {
                        hidden: 1024,
                        inter: 3072,
                        heads: 8,
                        kv: 4,
                        head_dim: 128,
                        layers: 4,
                        vocab: 4096,
                        vision: 256,
                        tied: false,
                    },
                    "neo-256-2l" => Shape {
                        hidden: 256,
                        inter: 512,
                        heads: 4,
                        kv: 2,
                        head_dim: 64,
                        layers: 2,
                        vocab: 512,
                        vision: 32,
                        tied: false,
                    },
                    _ => panic!("unknown shape {other}"),
                };
                let dir_guard = temp_dir(other);
                let dir = dir_guard.path();
                write_random_neo(dir, &s, 11);
                measure(
                    &format!("{other} (random)"),
                    dir,
                    Some(ids(s.vocab)),
                    &prompt(&s, 32),
                    true,
                );
            }
        }
    }
}
