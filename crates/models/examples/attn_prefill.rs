//! Times attention over a causal prompt (Qwen3-0.6B's heads by default: 16 query heads, 8 kv
//! heads, 128 dims): pixlm's `kernels::attn::prefill_attention` against candle's matmul path
//! (`layers::attention::attention_reference`, what every prompt used before it).
//! `cargo run --release -p pixlm-models --example attn_prefill -- [tokens] [heads] [kv heads]`
use candle_core::{DType, Device, Tensor};
use pixlm_models::kernels::attn::prefill_attention;
use pixlm_models::layers::attention::{attention_reference_for_bench, block_mask};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| -> anyhow::Result<usize> {
        Ok(std::env::args()
            .nth(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(d))
    };
    let (n, heads, kv, d) = (arg(1, 512)?, arg(2, 16)?, arg(3, 8)?, 128);
    let t: Vec<i64> = (0..n as i64).collect();
    let mask = block_mask(&t, n, &Device::Cpu)?;
    // The full product's flops (the causal half is what a kernel that skips masked keys does).
    let flop = 4.0 * (heads * n * n * d) as f64;
    println!("{n} tokens, {heads} heads, {kv} kv heads: ms, best of 5 (candle path / pixlm)");
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let q = Tensor::randn(0f32, 1.0, (n, heads, d), &Device::Cpu)?.to_dtype(dtype)?;
        let k = Tensor::randn(0f32, 1.0, (kv, n, d), &Device::Cpu)?.to_dtype(dtype)?;
        let v = Tensor::randn(0f32, 1.0, (kv, n, d), &Device::Cpu)?.to_dtype(dtype)?;
        let mut best = [f64::MAX; 2];
        for _ in 0..5 {
            let s = Instant::now();
            std::hint::black_box(attention_reference_for_bench(
                &q,
                &k,
                &v,
                mask.as_ref(),
                0.1,
            )?);
            best[0] = best[0].min(s.elapsed().as_secs_f64());
            let s = Instant::now();
            std::hint::black_box(prefill_attention(
                &q,
                std::slice::from_ref(&k),
                std::slice::from_ref(&v),
                mask.as_ref(),
                0.1,
            )?);
            best[1] = best[1].min(s.elapsed().as_secs_f64());
        }
        println!(
            "{:>5}: {:7.2} / {:7.2} ms ({:.0} / {:.0} GFLOP/s of the full product)",
            format!("{dtype:?}"),
            best[0] * 1e3,
            best[1] * 1e3,
            flop / best[0] / 1e9,
            flop / best[1] / 1e9
        );
    }
    Ok(())
}
