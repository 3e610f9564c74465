//! `pixlm bench`: speed and memory of the real NEO forward with random weights at a real shape
//! (no checkpoint needed): load time, prefill tokens/s for an image prompt, time to first
//! token, decode tokens/s, peak resident memory.

use crate::common::{peak_rss_bytes, ComputeArgs};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use clap::Args;
use pixlm_models::{
    ImageInput, KvCache, LogitsWanted, Model, ModelConfig, NeoSpecialIds, QuantFormat, SeqInput,
};
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// Model shape: neo-2b (spec §11.1: 40 layers, hidden 2048, untied), qwen3-0.6b (text),
    /// qwen3-30b-a3b-2l (Qwen3-30B-A3B's expert shapes — 128 experts, top-8 — with 2 of its 48
    /// layers, to fit in memory) or neo-tiny.
    #[arg(long, default_value = "neo-2b", value_parser = ["neo-2b", "qwen3-0.6b", "qwen3-30b-a3b-2l", "neo-tiny", "all"])]
    pub shape: String,
    /// Prompt tokens for the text shapes (default 128; 512 with --vs-llama-cpp).
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    /// Image tokens in the prefill prompt (rounded to a square grid).
    #[arg(long, default_value_t = 256)]
    pub image_tokens: usize,
    /// Tokens to decode after the prefill (default 16; 64 with --vs-llama-cpp).
    #[arg(long)]
    pub decode_tokens: Option<usize>,
    /// Put pixlm and llama.cpp side by side in one run: the same text shape with random
    /// weights, at each --format, prefill and decode tokens/s of both engines, their ratio and
    /// the fraction of the read-bandwidth ceiling each reaches. llama.cpp's llama-bench and
    /// llama-quantize are built once from the llama-cpp-python source package on PyPI
    /// (scripts/build_llama_cpp.sh, into ~/.cache/pixlm/llama.cpp or $PIXLM_LLAMA_CPP_DIR),
    /// and the GGUF files are written there too. Shapes: qwen3-0.6b and neo-2b (its language
    /// model); --shape all runs both.
    #[arg(long)]
    pub vs_llama_cpp: bool,
    /// Weight formats for --vs-llama-cpp (comma-separated or repeated): f32, f16, bf16, q8_0,
    /// q4_k, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub format: Vec<String>,
    /// With --vs-llama-cpp: rounds per measurement (default 3), each one llama-bench run then
    /// one pixlm run, reported as medians. Without it: timed runs of the prompt after a warm-up
    /// run (default 2; the time to first token is the best of them, as the GEMM rate it is
    /// compared with is the best of three).
    #[arg(long)]
    pub reps: Option<usize>,
    /// With --vs-llama-cpp: tokens already in the KV cache before each measurement (both
    /// engines prefill and decode after this many tokens of context, llama-bench's `-d`), to
    /// compare long contexts, where a decode step reads much of the cache. llama.cpp runs with
    /// flash attention on and off and its faster result counts. With --kv-cache-dtype both
    /// engines store the cache in that type (else each its default: pixlm f32, llama.cpp f16).
    #[arg(long, default_value_t = 0)]
    pub depth: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead of benchmarking, write a checkpoint of --shape with random weights to DIR in the
    /// Hugging Face layout (config.json, bf16 weights in model-0000i-of-0000n.safetensors
    /// shards with model.safetensors.index.json, the tokenizer files of --tokenizer-from), to
    /// serve or load a model of a real size where none can be downloaded (e.g. neo-2b: 5.8 GB).
    #[arg(long, value_name = "DIR", requires = "tokenizer_from")]
    pub write_model: Option<std::path::PathBuf>,
    /// Model directory whose tokenizer.json and tokenizer_config.json (and
    /// generation_config.json, if present) --write-model copies; its ids must fit the shape's
    /// 151,936-row vocabulary, e.g. ../shared/fixtures/neo-tiny/model.
    #[arg(long, value_name = "DIR", requires = "write_model")]
    pub tokenizer_from: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Weights filled from a fast deterministic generator: uniform with std 0.02 for matrices,
/// the init constant (1 for norms, 0 for biases) otherwise. With `record`, every tensor handed
/// out is also kept there by name (`bench --write-model` saves them).
#[derive(Default)]
pub(crate) struct RandomWeights {
    pub(crate) record: Option<RecordedWeights>,
}

/// The tensors a [`RandomWeights`] handed out, by name.
pub(crate) type RecordedWeights =
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Tensor>>>;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let t = match h {
            candle_nn::Init::Const(c) => Tensor::full(c as f32, s, dev)?,
            _ => {
                let mut x: u64 = 0x2545_F491_4F6C_DD1D;
                for b in name.bytes() {
                    x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
                let a = 0.02f32 * 3f32.sqrt();
                let v: Vec<f32> = (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
                    })
                    .collect();
                Tensor::from_vec(v, s, dev)?
            }
        };
        let t = t.to_dtype(dtype)?;
        if let Some(record) = &self.record {
            record
                .lock()
                .map_err(|_| candle_core::Error::Msg("weight recorder poisoned".into()))?
                .insert(name.to_string(), t.clone());
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

pub(crate) fn text_config(shape: &str) -> Option<serde_json::Value> {
    let base = |hidden: usize, layers: usize, heads: usize, kv: usize, inter: usize, tied: bool| {
        serde_json::json!({"model_type": "qwen3", "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": 128,
            "intermediate_size": inter, "vocab_size": 151936, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "tie_word_embeddings": tied, "max_position_embeddings": 32768})
    };
    match shape {
        "qwen3-0.6b" => Some(base(1024, 28, 16, 8, 3072, true)),
        // NEO-2B's language model (spec §11.1) as a plain Qwen3 stack, for `--vs-llama-cpp`.
        "neo-2b-text" => Some(base(2048, 40, 16, 8, 6144, false)),
        "qwen3-30b-a3b-2l" => {
            let mut c = base(2048, 2, 32, 4, 6144, false);
            c["model_type"] = "qwen3_moe".into();
            c["num_experts"] = 128.into();
            c["num_experts_per_tok"] = 8.into();
            c["moe_intermediate_size"] = 768.into();
            c["norm_topk_prob"] = true.into();
            c["decoder_sparse_step"] = 1.into();
            c["rope_theta"] = 1e7.into();
            Some(c)
        }
        _ => None,
    }
}

/// Bytes of weights one decode step must read: every layer's attention and feed-forward (for
/// MoE: the router and the top-k experts only), the final norm and the output head; one
/// embedding row is negligible.
pub(crate) fn active_weight_bytes(cfg: &ModelConfig, linear_bytes: f64, head_bytes: f64) -> f64 {
    let t = match cfg {
        ModelConfig::Neo(c) => &c.llm_config,
        ModelConfig::Qwen3(c) => c,
    };
    let (d, hd) = (t.hidden_size as f64, t.head_dim() as f64);
    let (nh, nkv) = (t.num_attention_heads as f64, t.num_key_value_heads as f64);
    let native = matches!(cfg, ModelConfig::Neo(_));
    let mut attn = d * hd * (2.0 * nh + 2.0 * nkv); // q, o, k, v
    if native {
        attn += d * hd * (nh + nkv); // q_proj_hw, k_proj_hw
    }
    let mut total = 0.0;
    for i in 0..t.num_hidden_layers {
        let ffn = if t.is_moe_layer(i) {
            d * t.num_experts as f64
                + t.num_experts_per_tok as f64 * 3.0 * d * t.moe_intermediate_size as f64
        } else {
            3.0 * d * t.intermediate_size as f64
        };
        total += attn + ffn;
    }
    total * linear_bytes + d * t.vocab_size as f64 * head_bytes // output head
}

/// Bytes per weight of the linear layers and of the output head at compute `dtype` with
/// load-time `quant`: quantized linears store their GGUF blocks (Q8_0: 34 bytes per 32
/// weights, Q4_K: 144 per 256); the head stays dense at `dtype`. (Layers too narrow for the
/// block size stay dense; the NEO and Qwen3 shapes fit.)
pub(crate) fn weight_bytes(dtype: DType, quant: Option<QuantFormat>) -> (f64, f64) {
    // A quantized load quantizes the head (and embeddings) too (issue #6, BENCHMARKS.md).
    let dense = dtype.size_in_bytes() as f64;
    let linear = quant.map_or(dense, |q| {
        let g = q.ggml();
        g.type_size() as f64 / g.block_size() as f64
    });
    (linear, linear)
}

/// f32 FLOP/s of this machine now on a prefill-like product (512 × 2048 by 2048 × 6144, 12.9
/// GFLOP): the best of three runs each of candle's GEMM and pixlm's (`kernels::gemm`, where
/// the CPU has it), whichever is faster.
pub(crate) fn gemm_flops() -> Result<f64> {
    let (m, k, n) = (512usize, 2048usize, 6144usize);
    let dev = Device::Cpu;
    let a = Tensor::ones((m, k), DType::F32, &dev)?;
    let b = Tensor::ones((k, n), DType::F32, &dev)?;
    let (xs, ws) = (vec![1f32; m * k], vec![1f32; n * k]);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        std::hint::black_box(a.matmul(&b)?);
        best = best.min(t.elapsed().as_secs_f64());
        if pixlm_models::kernels::gemm::available() {
            let t = Instant::now();
            let mut y = vec![0f32; m * n];
            pixlm_models::kernels::gemm::gemm_t(
                pixlm_models::kernels::matvec::Weights::F32(&ws),
                n,
                k,
                &xs,
                m,
                &mut y,
            )
            .map_err(anyhow::Error::msg)?;
            std::hint::black_box(y);
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (m * k * n) as f64 / best.max(1e-9))
}

/// Read bandwidth of this machine now, in bytes/s: all threads summing a 1 GiB buffer.
pub(crate) fn read_bandwidth() -> f64 {
    let n = (1usize << 30) / 4;
    let buf = vec![1.0f32; n];
    let threads = candle_core::utils::get_num_threads().max(1);
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(n.div_ceil(threads))
                .map(|c| {
                    s.spawn(move || {
                        let mut acc = [0f32; 16];
                        for ch in c.chunks_exact(16) {
                            for k in 0..16 {
                                acc[k] += ch[k];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.max((n * 4) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

fn config(shape: &str) -> Result<ModelConfig> {
    Ok(ModelConfig::from_json_str(
        &config_json(shape)?.to_string(),
        std::path::Path::new("bench-config"),
    )?)
}

/// The Hugging Face `config.json` of a benchmark shape.
pub(crate) fn config_json(shape: &str) -> Result<serde_json::Value> {
    if let Some(c) = text_config(shape) {
        return Ok(c);
    }
    let (hidden, layers, extra, heads, kv, hd, inter, vis, tied) = match shape {
        "neo-2b" => (2048, 40, 12, 16, 8, 128, 6144, 1024, false),
        "neo-tiny" => (64, 4, 2, 4, 2, 16, 128, 32, true),
        other => bail!("unknown shape {other}"),
    };
    let j = serde_json::json!({
        "model_type": "neo_chat", "template": "neo1_0", "tie_word_embeddings": tied,
        "llm_config": {"model_type": "qwen3", "hidden_size": hidden, "num_hidden_layers": layers,
            "extra_num_layers": extra, "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": hd, "intermediate_size": inter, "vocab_size": 151936, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "rope_theta_hw": 1e4, "tie_word_embeddings": tied,
            "max_position_embeddings": 32768},
        "vision_config": {"hidden_size": vis, "llm_hidden_size": hidden, "patch_size": 16,
            "downsample_ratio": 0.5, "rope_theta_vision": 1e4,
            "min_pixels": 65536, "max_pixels": 4194304}
    });
    Ok(j)
}

pub(crate) fn argmax(t: &Tensor) -> Result<u32> {
    Ok(t.flatten_all()?.argmax(0)?.to_scalar::<u32>()?)
}

pub fn run(a: BenchArgs) -> Result<i32> {
    if let (Some(out), Some(tok)) = (&a.write_model, &a.tokenizer_from) {
        crate::bench_model::write_random_model(&a.shape, out, tok)?;
        return Ok(0);
    }
    let opts = a.compute.load_options()?;
    if a.vs_llama_cpp {
        if a.compute.quant.is_some() || a.compute.dtype != "f32" || a.compute.gpu {
            bail!("--vs-llama-cpp chooses formats with --format (not --quant, --dtype or --gpu)");
        }
        let reps = a.reps.unwrap_or(3);
        if reps == 0 {
            bail!("--reps must be at least 1");
        }
        let formats: Vec<String> = if a.format.iter().any(|f| f == "all") {
            crate::bench_llama::FORMATS
                .iter()
                .map(|f| f.name.to_string())
                .collect()
        } else {
            a.format.clone()
        };
        let shapes = match a.shape.as_str() {
            "all" => vec!["qwen3-0.6b".to_string(), "neo-2b".to_string()],
            s => vec![s.to_string()],
        };
        return crate::bench_llama::run(crate::bench_llama::VsOptions {
            shapes,
            formats,
            threads: candle_core::utils::get_num_threads(),
            prompt: a.prompt_tokens.unwrap_or(512),
            gen: a.decode_tokens.unwrap_or(64),
            reps,
            json: a.json,
            depth: a.depth,
            kv_dtype: opts.kv_dtype,
        });
    }
    if a.shape == "all" {
        bail!("--shape all is for --vs-llama-cpp; pick one shape");
    }
    if a.depth > 0 {
        bail!("--depth is for --vs-llama-cpp (without it, --prompt-tokens sets the context decode starts from)");
    }
    let prompt_tokens = a.prompt_tokens.unwrap_or(128);
    let decode_tokens = a.decode_tokens.unwrap_or(16);
    let cfg = config(&a.shape)?;
    let ids = NeoSpecialIds {
        img_start: 151670,
        img_end: 151671,
        img_context: 151669,
    };
    let t0 = Instant::now();
    let vb = candle_nn::VarBuilder::from_backend(
        Box::new(RandomWeights::default()),
        opts.dtype,
        opts.device.clone(),
    );
    let (mut model, _) = Model::from_var_builder_quantized(&vb, &cfg, Some(ids), opts.quant)?;
    model.set_kv_dtype(opts.kv_dtype)?;
    let load_s = t0.elapsed().as_secs_f64();
    // An image prompt: a square grid of about `image_tokens` tokens inside the neo1_0 template.
    let side = ((a.image_tokens as f64).sqrt().round() as usize).max(1);
    let (gh, gw) = (2 * side, 2 * side);
    let mut x: u32 = 12345;
    let pixels: Vec<f32> = (0..gh * gw * 768)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    let image = ImageInput {
        pixels,
        grid_h: gh,
        grid_w: gw,
    };
    let is_neo = matches!(cfg, ModelConfig::Neo(_));
    let mut prompt: Vec<u32> = Vec::new();
    let images: Vec<ImageInput> = if is_neo {
        prompt.extend([151644, 872, 198, 151670]);
        prompt.extend(std::iter::repeat_n(151669, side * side));
        prompt.extend([
            151671, 198, 74785, 419, 2168, 304, 7716, 13, 151645, 198, 151644, 77091, 198,
        ]);
        vec![image]
    } else {
        prompt.extend((0..prompt_tokens as u32).map(|i| 1000 + (i * 7919) % 100_000));
        Vec::new()
    };
    // The prompt runs twice from an empty cache: the first pass also pays one-time costs
    // (candle repacks quantized weights on their first product), the second is the TTFT of
    // a server that has answered before.
    let prefill = || -> Result<(f64, u32, KvCache)> {
        let mut cache = KvCache::new();
        let t = Instant::now();
        let out = model.forward(
            &mut [SeqInput {
                ids: &prompt,
                images: &images,
                decode: false,
                cache: &mut cache,
                logits: LogitsWanted::Last,
            }],
            None,
        )?;
        let next = argmax(
            out[0]
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no logits"))?,
        )?;
        Ok((t.elapsed().as_secs_f64(), next, cache))
    };
    let (first_ttft, _, _) = prefill()?;
    let mut runs = Vec::new();
    let mut best = prefill()?;
    runs.push(best.0);
    for _ in 1..a.reps.unwrap_or(2).max(1) {
        let r = prefill()?;
        runs.push(r.0);
        if r.0 < best.0 {
            best = r;
        }
    }
    let (ttft, mut next, mut cache) = best;
    let t2 = Instant::now();
    for _ in 0..decode_tokens {
        let out = model.forward(
            &mut [SeqInput {
                ids: &[next],
                images: &[],
                decode: true,
                cache: &mut cache,
                logits: LogitsWanted::Last,
            }],
            None,
        )?;
        next = argmax(
            out[0]
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no logits"))?,
        )?;
    }
    let decode_s = t2.elapsed().as_secs_f64();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(candle_core::utils::get_num_threads);
    let (linear, head) = weight_bytes(opts.dtype, opts.quant);
    let bytes = active_weight_bytes(&cfg, linear, head);
    let bw = read_bandwidth();
    let decode_tok_s = decode_tokens as f64 / decode_s.max(1e-9);
    let ceiling = bw / bytes;
    // Issue #7's prefill bound: 2 FLOPs per weight of the linear layers per prompt token (the
    // output head runs for the last token only) at the f32 GEMM rate measured now.
    let gemm = gemm_flops()?;
    let linear_params = active_weight_bytes(&cfg, 1.0, 0.0);
    let bound_s = 2.0 * linear_params * prompt.len() as f64 / gemm;
    let r = serde_json::json!({
        "shape": a.shape,
        "dtype": a.compute.dtype,
        "quant": opts.quant.map(|q| format!("{q:?}")),
        "threads": threads,
        "prompt_tokens": prompt.len(),
        "image_tokens": if is_neo { side * side } else { 0 },
        "active_weight_gib": bytes / (1u64 << 30) as f64,
        "read_bandwidth_gb_s": bw / 1e9,
        "decode_ceiling_tok_s": ceiling,
        "decode_bandwidth_fraction": decode_tok_s / ceiling,
        "load_s": load_s,
        "first_ttft_s": first_ttft,
        "ttft_s": ttft,
        "ttft_runs_s": runs,
        "prefill_tok_s": prompt.len() as f64 / ttft,
        "gemm_gflop_s": gemm / 1e9,
        "prefill_compute_bound_s": bound_s,
        "ttft_over_compute_bound": ttft / bound_s,
        "decode_tokens": decode_tokens,
        "decode_tok_s": decode_tok_s,
        "peak_rss_gib": peak_rss_bytes().map(|b| b as f64 / (1u64 << 30) as f64),
    });
    if a.json {
        println!("{r}");
    } else {
        println!(
            "shape {} ({} threads, {} compute)",
            a.shape, threads, a.compute.dtype
        );
        println!("  load (random weights)   {load_s:>8.2} s");
        println!(
            "  prompt                  {:>8} tokens ({} image tokens)",
            prompt.len(),
            if is_neo { side * side } else { 0 }
        );
        println!(
            "  time to first token     {ttft:>8.2} s  ({:.1} prompt tok/s; best of {} runs: {}; a first run took {first_ttft:.2} s with one-time costs)",
            prompt.len() as f64 / ttft,
            runs.len(),
            runs.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  compute bound of TTFT   {bound_s:>8.2} s  (2 × {:.2} G linear weights × {} tokens at {:.0} GFLOP/s f32 GEMM): TTFT is {:.2}x it",
            linear_params / 1e9,
            prompt.len(),
            gemm / 1e9,
            ttft / bound_s
        );
        println!(
            "  decode                  {decode_tok_s:>8.2} tok/s over {} tokens",
            decode_tokens
        );
        println!(
            "  decode ceiling          {ceiling:>8.2} tok/s = {:.1} GB/s read / {:.2} GiB of active weights ({:.0}% reached)",
            bw / 1e9,
            bytes / (1u64 << 30) as f64,
            100.0 * decode_tok_s / ceiling
        );
        if let Some(b) = peak_rss_bytes() {
            println!(
                "  peak memory             {:>8.2} GiB",
                b as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_bytes_follow_the_gguf_blocks() {
        assert_eq!(
            weight_bytes(DType::F32, Some(QuantFormat::Q8_0)),
            (34.0 / 32.0, 34.0 / 32.0)
        );
        assert_eq!(
            weight_bytes(DType::F32, Some(QuantFormat::Q4K)),
            (144.0 / 256.0, 144.0 / 256.0)
        );
        assert_eq!(weight_bytes(DType::BF16, None), (2.0, 2.0));
        assert_eq!(weight_bytes(DType::F32, None), (4.0, 4.0));
    }
}
