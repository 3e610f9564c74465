//! Times decode attention (one query row against a long KV cache, Qwen3-0.6B's heads by
//! default: 16 query heads, 8 kv heads, 128 dims) with the cache stored in f32, f16 and bf16:
//! `kernels::attn::decode_attention` on 28 distinct caches in turn (one per layer, together
//! past the last-level cache, as a decode step reads them). Prints ms per layer and the cache
//! bytes read per second.
//! `cargo run --release -p pixlm-models --example attn_decode -- [keys] [heads] [kv heads]`
use candle_core::{DType, Device, Tensor};
use pixlm_models::kernels::attn::decode_attention;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| -> anyhow::Result<usize> {
        Ok(std::env::args()
            .nth(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(d))
    };
    let (keys, heads, kv, d, layers) = (arg(1, 2048)?, arg(2, 16)?, arg(3, 8)?, 128, 28);
    println!("{keys} keys, {heads} heads, {kv} kv heads, {layers} layers: best of 5 passes");
    let q = Tensor::randn(0f32, 1.0, (1, heads, d), &Device::Cpu)?;
    let scale = 1.0 / (d as f64).sqrt();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let caches = (0..layers)
            .map(|_| -> anyhow::Result<(Tensor, Tensor)> {
                Ok((
                    Tensor::randn(0f32, 1.0, (kv, keys, d), &Device::Cpu)?.to_dtype(dtype)?,
                    Tensor::randn(0f32, 1.0, (kv, keys, d), &Device::Cpu)?.to_dtype(dtype)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let s = Instant::now();
            for (k, v) in &caches {
                let out = decode_attention(
                    &q,
                    std::slice::from_ref(k),
                    std::slice::from_ref(v),
                    None,
                    scale,
                )?
                .ok_or_else(|| anyhow::anyhow!("the decode kernel declined"))?;
                std::hint::black_box(out);
            }
            best = best.min(s.elapsed().as_secs_f64());
        }
        let bytes = (2 * kv * keys * d * dtype.size_in_bytes() * layers) as f64;
        println!(
            "  {dtype:?}: {:.3} ms per layer, {:.1} GB/s of cache",
            best * 1e3 / layers as f64,
            bytes / best / 1e9
        );
    }
    Ok(())
}
