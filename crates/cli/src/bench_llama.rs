//! `pixlm bench --vs-llama-cpp`: pixlm and llama.cpp side by side in one run, on the same
//! model shapes with random weights, at the same weight formats and thread count.
//!
//! llama.cpp's `llama-bench` and `llama-quantize` are built once from the source that the
//! `llama-cpp-python` package on PyPI vendors (`scripts/build_llama_cpp.sh`, into a cache
//! directory outside the repository). For each shape the harness writes one f32 GGUF file in
//! llama.cpp's `qwen3` layout with random weights, and `llama-quantize --pure` makes each other
//! format from it, keeping the token embedding / output head at the type pixlm keeps it at, so
//! both engines read the same bytes per token. pixlm runs the same shape through its real
//! Qwen3 forward (random weights from the same kind of generator). The engines take turns in
//! rounds (one llama-bench run, then one pixlm run, each round after its own read-bandwidth
//! probe), and each figure is the median over the rounds, each ratio the median of the
//! rounds' own ratios: this shared machine's speed drifts by a third over minutes, while the
//! two runs of a round see the same machine. The probe gives each engine's fraction of the
//! decode ceiling.

use crate::bench::{
    active_weight_bytes, argmax, read_bandwidth, text_config, weight_bytes, RandomWeights,
};
use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use pixlm_models::{HalfWeights, KvCache, LogitsWanted, Model, ModelConfig, QuantFormat, SeqInput};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// One weight format as both engines are run at it.
pub struct Format {
    pub name: &'static str,
    /// `llama-quantize` type for the linear layers (`None`: the f32 file as written).
    llama_type: Option<&'static str>,
    /// pixlm's compute dtype and load-time quantization. The output head and token embedding
    /// are in the quantized type when there is one (pixlm's default, issue #6), else in the
    /// weights' dtype, in both engines.
    dtype: DType,
    quant: Option<QuantFormat>,
    /// The dtype dense weights are kept in, when not `dtype`: f16/bf16 weights with f32
    /// activations, as pixlm runs a bf16 checkpoint by default and llama.cpp runs these files.
    weights: Option<DType>,
}

impl Format {
    /// The dtype of the dense weight matrices.
    fn weight_dtype(&self) -> DType {
        self.weights.unwrap_or(self.dtype)
    }
}

pub const FORMATS: [Format; 5] = [
    Format {
        name: "f32",
        llama_type: None,
        dtype: DType::F32,
        quant: None,
        weights: None,
    },
    Format {
        name: "f16",
        llama_type: Some("F16"),
        dtype: DType::F32,
        quant: None,
        weights: Some(DType::F16),
    },
    Format {
        name: "bf16",
        llama_type: Some("BF16"),
        dtype: DType::F32,
        quant: None,
        weights: Some(DType::BF16),
    },
    Format {
        name: "q8_0",
        llama_type: Some("Q8_0"),
        dtype: DType::F32,
        quant: Some(QuantFormat::Q8_0),
        weights: None,
    },
    Format {
        name: "q4_k",
        llama_type: Some("Q4_K"),
        dtype: DType::F32,
        quant: Some(QuantFormat::Q4K),
        weights: None,
    },
];

/// The text shapes compared: Qwen3-0.6B and the NEO-2B language model (spec §11.1) as a plain
/// Qwen3 stack (llama.cpp has no Native-RoPE; the text path is what both engines share).
pub fn vs_config(shape: &str) -> Result<serde_json::Value> {
    match shape {
        "qwen3-0.6b" => text_config(shape).context("qwen3-0.6b config"),
        "neo-2b" => text_config("neo-2b-text").context("neo-2b-text config"),
        other => bail!("--vs-llama-cpp compares the shapes qwen3-0.6b and neo-2b, not {other}"),
    }
}

/// Where llama.cpp is built: `$PIXLM_LLAMA_CPP_DIR`, else `~/.cache/pixlm/llama.cpp`.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PIXLM_LLAMA_CPP_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    home.join("pixlm").join("llama.cpp")
}

/// The directory holding `llama-bench` and `llama-quantize`, building them first if needed.
fn llama_bin_dir() -> Result<PathBuf> {
    let dir = cache_dir();
    let bin = dir.join("bin");
    if bin.join("llama-bench").is_file() && bin.join("llama-quantize").is_file() {
        return Ok(bin);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build_llama_cpp.sh");
    if !script.is_file() {
        bail!(
            "llama.cpp is not built in {} and the build script {} is missing (run from a pixlm \
             checkout, or set PIXLM_LLAMA_CPP_DIR to a directory whose bin/ holds llama-bench \
             and llama-quantize)",
            dir.display(),
            script.display()
        );
    }
    eprintln!(
        "building llama.cpp (llama-bench, llama-quantize) into {}: several minutes, once",
        dir.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() || !bin.join("llama-bench").is_file() {
        bail!("building llama.cpp failed ({status}); see the output above");
    }
    Ok(bin)
}

/// Writes `cfg`'s weights, random, as an f32 GGUF in llama.cpp's `qwen3` layout (no
/// tokenizer: `tokenizer.ggml.model = none` with the vocabulary size, which llama-bench
/// accepts since it feeds random token ids).
fn write_f32_gguf(cfg: &serde_json::Value, path: &Path) -> Result<()> {
    let u = |k: &str| -> Result<usize> {
        cfg[k]
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("config {k}"))
    };
    let (d, layers, heads, kv, hd, inter, vocab) = (
        u("hidden_size")?,
        u("num_hidden_layers")?,
        u("num_attention_heads")?,
        u("num_key_value_heads")?,
        u("head_dim")?,
        u("intermediate_size")?,
        u("vocab_size")?,
    );
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    let mut shapes: Vec<(String, Vec<usize>, bool)> = vec![
        ("token_embd.weight".into(), vec![vocab, d], false),
        ("output_norm.weight".into(), vec![d], true),
    ];
    if !tied {
        shapes.push(("output.weight".into(), vec![vocab, d], false));
    }
    for l in 0..layers {
        let b = |n: &str| format!("blk.{l}.{n}.weight");
        shapes.extend([
            (b("attn_norm"), vec![d], true),
            (b("attn_q"), vec![heads * hd, d], false),
            (b("attn_k"), vec![kv * hd, d], false),
            (b("attn_v"), vec![kv * hd, d], false),
            (b("attn_output"), vec![d, heads * hd], false),
            (b("attn_q_norm"), vec![hd], true),
            (b("attn_k_norm"), vec![hd], true),
            (b("ffn_norm"), vec![d], true),
            (b("ffn_gate"), vec![inter, d], false),
            (b("ffn_up"), vec![inter, d], false),
            (b("ffn_down"), vec![d, inter], false),
        ]);
    }
    let mut tensors = Vec::with_capacity(shapes.len());
    for (name, shape, norm) in &shapes {
        let init = if *norm {
            candle_nn::Init::Const(1.0)
        } else {
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            }
        };
        let t: Tensor = RandomWeights::default().get(
            shape.as_slice().into(),
            name,
            init,
            DType::F32,
            &Device::Cpu,
        )?;
        tensors.push((name.clone(), QTensor::quantize(&t, GgmlDType::F32)?));
    }
    use gguf_file::Value as V;
    let meta: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("qwen3".into())),
        ("general.name", V::String("pixlm-bench-random".into())),
        ("general.file_type", V::U32(0)),
        ("qwen3.block_count", V::U32(layers as u32)),
        ("qwen3.context_length", V::U32(32768)),
        ("qwen3.embedding_length", V::U32(d as u32)),
        ("qwen3.feed_forward_length", V::U32(inter as u32)),
        ("qwen3.attention.head_count", V::U32(heads as u32)),
        ("qwen3.attention.head_count_kv", V::U32(kv as u32)),
        ("qwen3.attention.key_length", V::U32(hd as u32)),
        ("qwen3.attention.value_length", V::U32(hd as u32)),
        (
            "qwen3.rope.freq_base",
            V::F32(cfg["rope_theta"].as_f64().unwrap_or(1e6) as f32),
        ),
        ("qwen3.attention.layer_norm_rms_epsilon", V::F32(1e-6)),
        ("qwen3.vocab_size", V::U32(vocab as u32)),
        ("tokenizer.ggml.model", V::String("none".into())),
    ];
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    gguf_file::write(&mut w, &meta_refs, &t_refs)?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Tokens/s of llama.cpp on `model`: (prefill of `prompt` tokens, decode of `gen` tokens),
/// llama-bench's mean over `reps` runs.
fn llama_bench(bin: &Path, model: &Path, o: &VsOptions, reps: usize) -> Result<(f64, f64)> {
    let mut cmd = Command::new(bin.join("llama-bench"));
    cmd.args(["-m", &model.to_string_lossy()])
        .args(["-t", &o.threads.to_string()])
        .args(["-p", &o.prompt.to_string(), "-n", &o.gen.to_string()])
        .args(["-r", &reps.to_string(), "-o", "json"]);
    if o.depth > 0 {
        // Past a few hundred tokens llama.cpp's CPU flash attention (its `auto` choice) can be
        // the slower one (2048 tokens on a Zen 3: 11-15 against 22-23 tok/s): run both.
        cmd.args(["-d", &o.depth.to_string(), "-fa", "on,off"]);
    }
    if let Some(t) = o.kv_dtype {
        // candle's names are llama.cpp's: f32, f16, bf16.
        cmd.args(["-ctk", t.as_str(), "-ctv", t.as_str()]);
    }
    let out = cmd.output().context("running llama-bench")?;
    if !out.status.success() {
        bail!(
            "llama-bench failed on {}: {}",
            model.display(),
            stderr_tail(&out.stderr)
        );
    }
    parse_llama_bench(&out.stdout, o.prompt, o.gen)
}

/// (prefill, decode) tokens/s from llama-bench's `-o json` output: the `avg_ts` of its
/// pp{prompt} and tg{gen} tests, the faster where several settings ran each.
fn parse_llama_bench(json: &[u8], prompt: usize, gen: usize) -> Result<(f64, f64)> {
    let v: serde_json::Value =
        serde_json::from_slice(json).context("reading llama-bench's JSON")?;
    let mut pp: Option<f64> = None;
    let mut tg: Option<f64> = None;
    let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    for r in v.as_array().into_iter().flatten() {
        let ts = r["avg_ts"].as_f64();
        if r["n_prompt"].as_u64() == Some(prompt as u64) && r["n_gen"].as_u64() == Some(0) {
            pp = best(pp, ts);
        }
        if r["n_gen"].as_u64() == Some(gen as u64) && r["n_prompt"].as_u64() == Some(0) {
            tg = best(tg, ts);
        }
    }
    match (pp, tg) {
        (Some(p), Some(t)) => Ok((p, t)),
        _ => bail!("llama-bench's JSON lacks the pp{prompt} or tg{gen} result"),
    }
}

/// The last lines of a tool's error output, for the error message.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.reverse();
    lines.join(" | ")
}

fn quantize(bin: &Path, src: &Path, dst: &Path, f: &Format, threads: usize) -> Result<()> {
    let Some(ty) = f.llama_type else {
        return Ok(());
    };
    let table = if f.quant.is_some() {
        ty.to_string()
    } else {
        f.weight_dtype().as_str().to_string()
    };
    let out = Command::new(bin.join("llama-quantize"))
        .arg("--pure")
        .args(["--token-embedding-type", &table])
        .args(["--output-tensor-type", &table])
        .arg(src)
        .arg(dst)
        .arg(ty)
        .arg(threads.to_string())
        .output()
        .context("running llama-quantize")?;
    if !out.status.success() {
        bail!(
            "llama-quantize to {ty} failed: {}",
            stderr_tail(&out.stderr)
        );
    }
    Ok(())
}

/// Tokens/s of pixlm's real forward at `cfg`, one (prefill of `prompt` tokens, decode of `gen`
/// tokens after a one-token prompt, as llama-bench's tg test does) per round. The model is
/// built and warmed up once; `before_round(i)` runs just before round `i` is timed (the
/// harness runs llama.cpp's round there, so the two engines alternate).
fn pixlm_rounds(
    cfg: &ModelConfig,
    f: &Format,
    o: &VsOptions,
    mut before_round: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<(f64, f64)>> {
    let (prompt, gen, reps, depth) = (o.prompt, o.gen, o.reps, o.depth);
    let vb = candle_nn::VarBuilder::from_backend(
        Box::new(RandomWeights::default()),
        f.dtype,
        Device::Cpu,
    );
    let half = match f.weights {
        Some(t) => HalfWeights::All(t),
        None => HalfWeights::None,
    };
    let (mut model, _) = Model::from_var_builder_with(&vb, cfg, None, f.quant, half)?;
    model.set_kv_dtype(o.kv_dtype)?;
    let ids: Vec<u32> = (0..prompt as u32)
        .map(|i| 1000 + (i * 7919) % 100_000)
        .collect();
    let context: Vec<u32> = (0..depth as u32)
        .map(|i| 2000 + (i * 104_729) % 100_000)
        .collect();
    let step = |ids: &[u32], cache: &mut KvCache, decode: bool| -> Result<u32> {
        let out = model.forward(
            &mut [SeqInput {
                ids,
                images: &[],
                decode,
                cache,
                logits: LogitsWanted::Last,
            }],
            None,
        )?;
        argmax(out[0].as_ref().context("no logits")?)
    };
    // One untimed warm-up of each path, as llama-bench does before its timed runs (the whole
    // prompt, then one decode step): the first run of a prompt size pays the page faults of
    // memory the process has not touched yet (a 512-token prompt's first run took 10% longer
    // than the next ones) and starts the thread pool.
    // With a depth, each measurement starts from a cache holding `depth` tokens (prefilled
    // untimed, as llama-bench does), so the warm-up covers that prefill too.
    let with_context = |cache: &mut KvCache| -> Result<()> {
        if !context.is_empty() {
            step(&context, cache, false)?;
        }
        Ok(())
    };
    let mut cache = KvCache::new();
    with_context(&mut cache)?;
    let first = step(&ids, &mut cache, false)?;
    step(&[first], &mut cache, true)?;
    let mut rounds = Vec::with_capacity(reps);
    for i in 0..reps {
        before_round(i)?;
        let mut cache = KvCache::new();
        with_context(&mut cache)?;
        let t = Instant::now();
        step(&ids, &mut cache, false)?;
        let pp = prompt as f64 / t.elapsed().as_secs_f64();
        let mut cache = KvCache::new();
        let mut next = if context.is_empty() {
            step(&ids[..1], &mut cache, false)?
        } else {
            step(&context, &mut cache, false)?
        };
        let t = Instant::now();
        for _ in 0..gen {
            next = step(&[next], &mut cache, true)?;
        }
        rounds.push((pp, gen as f64 / t.elapsed().as_secs_f64()));
    }
    Ok(rounds)
}

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Whether pixlm's model and llama.cpp's file fit in memory side by side (with a fifth to
/// spare), so that the two engines can take turns: `MemAvailable` from /proc/meminfo, or
/// false where it cannot be read.
fn both_fit(pixlm_bytes: f64, llama_file: &Path) -> bool {
    let file = std::fs::metadata(llama_file).map(|m| m.len() as f64);
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb * 1024.0)
    });
    match (file, avail) {
        (Ok(file), Some(avail)) => (pixlm_bytes + file) * 1.2 < avail,
        _ => false,
    }
}

/// What the harness runs: shapes × formats, and the workload of each measurement.
pub struct VsOptions {
    pub shapes: Vec<String>,
    pub formats: Vec<String>,
    pub threads: usize,
    pub prompt: usize,
    pub gen: usize,
    pub reps: usize,
    pub json: bool,
    /// Tokens of context before each measurement (llama-bench's `-d`).
    pub depth: usize,
    /// The KV cache's type for both engines (f32, f16, bf16); `None`: each engine's default.
    pub kv_dtype: Option<DType>,
}

pub fn run(o: VsOptions) -> Result<i32> {
    let formats: Vec<&Format> = o
        .formats
        .iter()
        .map(|n| {
            FORMATS
                .iter()
                .find(|f| f.name == n)
                .with_context(|| format!("unknown --format {n} (f32, f16, bf16, q8_0, q4_k)"))
        })
        .collect::<Result<_>>()?;
    let configs: Vec<serde_json::Value> = o
        .shapes
        .iter()
        .map(|s| vs_config(s))
        .collect::<Result<_>>()?;
    let bin = llama_bin_dir()?;
    let work = cache_dir().join("models");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    if !o.json {
        println!(
            "{} threads; prefill {} tokens, decode {} tokens; {} rounds, each one llama-bench run \
             then one pixlm run after a read-bandwidth probe (GB/s); medians over the rounds, \
             ratios the median of the rounds' ratios (this machine is shared: its speed drifts \
             by a third from minute to minute)",
            o.threads, o.prompt, o.gen, o.reps
        );
        if o.depth > 0 {
            println!(
                "after {} tokens of context (llama.cpp: the faster of flash attention on and off); \
                 KV cache: {}; the ceiling counts the weights only",
                o.depth,
                o.kv_dtype.map_or("pixlm f32, llama.cpp f16", |t| t.as_str())
            );
        }
        println!(
            "{:<11} {:<5} {:>5} {:>10} {:>10} {:>6} {:>7} {:>7} {:>11} {:>11} {:>6}",
            "shape",
            "fmt",
            "GB/s",
            "llama tg",
            "pixlm tg",
            "ratio",
            "llama%",
            "pixlm%",
            "llama pp",
            "pixlm pp",
            "ratio"
        );
    }
    for (shape, cfg) in o.shapes.iter().zip(&configs) {
        let f32_path = work.join(format!("{shape}-f32.gguf"));
        if !f32_path.is_file() {
            eprintln!("writing {} (random weights)", f32_path.display());
            write_f32_gguf(cfg, &f32_path)?;
        }
        let mc = ModelConfig::from_json_str(&cfg.to_string(), Path::new("bench-config"))?;
        for f in &formats {
            let path = match f.llama_type {
                None => f32_path.clone(),
                Some(_) => {
                    let p = work.join(format!("{shape}-{}.gguf", f.name));
                    if !p.is_file() {
                        eprintln!("llama-quantize → {}", p.display());
                        quantize(&bin, &f32_path, &p, f, o.threads)?;
                    }
                    p
                }
            };
            let (linear, head) = weight_bytes(f.weight_dtype(), f.quant);
            let bytes = active_weight_bytes(&mc, linear, head);
            // The engines take turns, one llama-bench run then one pixlm run per round, each
            // round with its own bandwidth probe, and the ratios are the median of the rounds'
            // ratios: the machine's speed drifts by a third over minutes, and a pair of runs
            // seconds apart sees the same machine. Where both models do not fit in memory at
            // once (NEO-2B at f32), llama.cpp runs all its rounds first, as before.
            let paired = both_fit(bytes * 1.1, &path);
            let mut llama: Vec<(f64, f64, f64)> = Vec::new(); // (probe, prefill, decode)
            if !paired {
                let bw = read_bandwidth();
                let (lpp, ltg) = llama_bench(&bin, &path, &o, o.reps)?;
                llama.push((bw, lpp, ltg));
            }
            let pixlm = pixlm_rounds(&mc, f, &o, |_| {
                if paired {
                    let bw = read_bandwidth();
                    let (lpp, ltg) = llama_bench(&bin, &path, &o, 1)?;
                    llama.push((bw, lpp, ltg));
                }
                Ok(())
            })?;
            if path != f32_path {
                // Remade in seconds from the f32 file; the NEO-2B ones are gigabytes each.
                std::fs::remove_file(&path).ok();
            }
            // Per round: (probe, llama pp, llama tg, pixlm pp, pixlm tg); unpaired, every
            // round is compared with llama.cpp's mean.
            let rounds: Vec<[f64; 5]> = pixlm
                .iter()
                .enumerate()
                .map(|(i, &(ppp, ptg))| {
                    let (bw, lpp, ltg) = llama[if paired { i } else { 0 }];
                    [bw, lpp, ltg, ppp, ptg]
                })
                .collect();
            let col = |j: usize| median(rounds.iter().map(|r| r[j]).collect());
            let (bw, lpp, ltg, ppp, ptg) = (col(0), col(1), col(2), col(3), col(4));
            let decode_ratio = median(rounds.iter().map(|r| r[4] / r[2]).collect());
            let prefill_ratio = median(rounds.iter().map(|r| r[3] / r[1]).collect());
            let fraction = |j: usize| median(rounds.iter().map(|r| r[j] * bytes / r[0]).collect());
            let ceiling = bw / bytes;
            if o.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "shape": shape, "format": f.name, "threads": o.threads,
                        "depth": o.depth, "kv_cache_dtype": o.kv_dtype.map(|t| t.as_str()),
                        "read_bandwidth_gb_s": bw / 1e9, "weight_gib_per_token": bytes / (1u64 << 30) as f64,
                        "decode_ceiling_tok_s": ceiling,
                        "llama_cpp": {"decode_tok_s": ltg, "prefill_tok_s": lpp, "bandwidth_fraction": fraction(2),
                            "effective_read_gb_s": ltg * bytes / 1e9},
                        "pixlm": {"decode_tok_s": ptg, "prefill_tok_s": ppp,
                            "effective_read_gb_s": ptg * bytes / 1e9},
                        "decode_ratio": decode_ratio, "prefill_ratio": prefill_ratio,
                        "bandwidth_fraction": fraction(4),
                        "paired_rounds": paired,
                        "rounds": rounds.iter().map(|r| serde_json::json!({
                            "read_bandwidth_gb_s": r[0] / 1e9,
                            "llama_cpp": {"prefill_tok_s": r[1], "decode_tok_s": r[2]},
                            "pixlm": {"prefill_tok_s": r[3], "decode_tok_s": r[4]},
                        })).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!(
                    "{:<11} {:<5} {:>5.1} {:>10.2} {:>10.2} {:>5.2}x {:>6.0}% {:>6.0}% {:>11.1} {:>11.1} {:>5.2}x",
                    shape,
                    f.name,
                    bw / 1e9,
                    ltg,
                    ptg,
                    decode_ratio,
                    100.0 * fraction(2),
                    100.0 * fraction(4),
                    lpp,
                    ppp,
                    prefill_ratio
                );
                if !paired {
                    println!("  (both models do not fit in memory at once: llama.cpp ran its {} runs first)", o.reps);
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(Vec::new()).is_nan());
        // A missing file never counts as fitting.
        assert!(!both_fit(1.0, Path::new("/nonexistent/model.gguf")));
    }

    #[test]
    fn llama_bench_json_gives_prefill_and_decode() {
        let json = br#"[{"n_prompt": 512, "n_gen": 0, "avg_ts": 118.5, "stddev_ts": 1.0},
                        {"n_prompt": 0, "n_gen": 64, "avg_ts": 12.6, "stddev_ts": 0.1}]"#;
        assert_eq!(parse_llama_bench(json, 512, 64).unwrap(), (118.5, 12.6));
        // A run that lacks one of the two tests, or other sizes, is an error, not a zero.
        let err = parse_llama_bench(json, 256, 64).unwrap_err().to_string();
        assert!(err.contains("pp256"), "{err}");
        assert!(parse_llama_bench(b"not json", 512, 64).is_err());
        // Flash attention on and off (a --depth run): the faster of each test counts.
        let json = br#"[{"n_prompt": 512, "n_gen": 0, "n_depth": 2048, "flash_attn": true, "avg_ts": 90.0},
                        {"n_prompt": 0, "n_gen": 64, "n_depth": 2048, "flash_attn": true, "avg_ts": 11.3},
                        {"n_prompt": 512, "n_gen": 0, "n_depth": 2048, "flash_attn": false, "avg_ts": 80.0},
                        {"n_prompt": 0, "n_gen": 64, "n_depth": 2048, "flash_attn": false, "avg_ts": 22.2}]"#;
        assert_eq!(parse_llama_bench(json, 512, 64).unwrap(), (90.0, 22.2));
    }

    #[test]
    fn gguf_has_llama_cpp_qwen3_layout() {
        // The NEO-2B language model: 40 layers, hidden 2048, untied.
        let neo = vs_config("neo-2b").unwrap();
        assert_eq!(neo["num_hidden_layers"], 40);
        assert_eq!(neo["hidden_size"], 2048);
        assert_eq!(neo["tie_word_embeddings"], false);
        let mut cfg = vs_config("qwen3-0.6b").unwrap();
        for (k, v) in [
            ("hidden_size", 64),
            ("num_hidden_layers", 2),
            ("intermediate_size", 96),
            ("vocab_size", 100),
            ("num_attention_heads", 4),
            ("num_key_value_heads", 2),
            ("head_dim", 16),
        ] {
            cfg[k] = v.into();
        }
        cfg["tie_word_embeddings"] = false.into();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vs.gguf");
        write_f32_gguf(&cfg, &path).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        assert_eq!(
            c.metadata["general.architecture"].to_string().unwrap(),
            "qwen3"
        );
        assert_eq!(c.metadata["qwen3.block_count"].to_u32().unwrap(), 2);
        assert_eq!(c.metadata["qwen3.vocab_size"].to_u32().unwrap(), 100);
        // 3 global tensors (untied: output.weight) + 11 per layer. candle reads the shapes
        // back in its order (output width first); the file holds them reversed, as ggml's ne0
        // = input width that llama.cpp's qwen3 loader checks.
        assert_eq!(c.tensor_infos.len(), 3 + 2 * 11);
        let dims = |n: &str| c.tensor_infos[n].shape.dims().to_vec();
        assert_eq!(dims("blk.1.attn_q.weight"), vec![64, 64]);
        assert_eq!(dims("blk.0.attn_k.weight"), vec![32, 64]);
        assert_eq!(dims("blk.0.ffn_down.weight"), vec![64, 96]);
        assert_eq!(dims("blk.0.attn_q_norm.weight"), vec![16]);
        assert_eq!(dims("output.weight"), vec![100, 64]);
        assert_eq!(
            c.tensor_infos["token_embd.weight"].ggml_dtype,
            GgmlDType::F32
        );
    }
}
