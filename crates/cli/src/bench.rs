//! `pixlm bench`: speed and memory of the real NEO forward with random weights at a real shape
//! (no checkpoint needed): load time, prefill tokens/s for an image prompt, time to first
//! token, decode tokens/s, peak resident memory.

use crate::common::{peak_rss_bytes, ComputeArgs};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use clap::Args;
use pixlm_models::{
    ImageInput, KvCache, LogitsWanted, Model, ModelConfig, NeoSpecialIds, SeqInput,
};
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// Model shape: neo-2b (spec §11.1: 40 layers, hidden 2048, untied) or neo-tiny.
    #[arg(long, default_value = "neo-2b", value_parser = ["neo-2b", "neo-tiny"])]
    pub shape: String,
    /// Image tokens in the prefill prompt (rounded to a square grid).
    #[arg(long, default_value_t = 256)]
    pub image_tokens: usize,
    /// Tokens to decode after the prefill.
    #[arg(long, default_value_t = 16)]
    pub decode_tokens: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Weights filled from a fast deterministic generator: uniform with std 0.02 for matrices,
/// the init constant (1 for norms, 0 for biases) otherwise.
struct RandomWeights;

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
        t.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn config(shape: &str) -> Result<ModelConfig> {
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
            "downsample_ratio": 0.5, "rope_theta_vision": 1e4}
    });
    Ok(ModelConfig::from_json_str(
        &j.to_string(),
        std::path::Path::new("bench-config"),
    )?)
}

fn argmax(t: &Tensor) -> Result<u32> {
    Ok(t.flatten_all()?.argmax(0)?.to_scalar::<u32>()?)
}

pub fn run(a: BenchArgs) -> Result<i32> {
    let opts = a.compute.load_options()?;
    let cfg = config(&a.shape)?;
    let ids = NeoSpecialIds {
        img_start: 151670,
        img_end: 151671,
        img_context: 151669,
    };
    let t0 = Instant::now();
    let vb = candle_nn::VarBuilder::from_backend(
        Box::new(RandomWeights),
        opts.dtype,
        opts.device.clone(),
    );
    let model = Model::from_var_builder(&vb, &cfg, Some(ids))?;
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
    let mut prompt: Vec<u32> = vec![151644, 872, 198, 151670];
    prompt.extend(std::iter::repeat_n(151669, side * side));
    prompt.extend([
        151671, 198, 74785, 419, 2168, 304, 7716, 13, 151645, 198, 151644, 77091, 198,
    ]);
    let mut cache = KvCache::new();
    let t1 = Instant::now();
    let out = model.forward(
        &mut [SeqInput {
            ids: &prompt,
            images: std::slice::from_ref(&image),
            decode: false,
            cache: &mut cache,
            logits: LogitsWanted::Last,
        }],
        None,
    )?;
    let mut next = argmax(
        out[0]
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no logits"))?,
    )?;
    let ttft = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    for _ in 0..a.decode_tokens {
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
    let r = serde_json::json!({
        "shape": a.shape,
        "dtype": a.compute.dtype,
        "threads": threads,
        "prompt_tokens": prompt.len(),
        "image_tokens": side * side,
        "load_s": load_s,
        "ttft_s": ttft,
        "prefill_tok_s": prompt.len() as f64 / ttft,
        "decode_tokens": a.decode_tokens,
        "decode_tok_s": a.decode_tokens as f64 / decode_s.max(1e-9),
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
            side * side
        );
        println!(
            "  time to first token     {ttft:>8.2} s  ({:.1} prompt tok/s)",
            prompt.len() as f64 / ttft
        );
        println!(
            "  decode                  {:>8.2} tok/s over {} tokens",
            a.decode_tokens as f64 / decode_s.max(1e-9),
            a.decode_tokens
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
