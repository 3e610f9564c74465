//! Times a dense prefill product `x · wᵀ` (512 rows by default) for f32, f16 and bf16 weights:
//! pixlm's `kernels::gemm::gemm_t` against candle's matmul, which is what `Linear` used before
//! it. The figures behind `kernels::dense_matmul_t`'s choice for many rows:
//! `cargo run --release -p pixlm-models --example dense_mm` (arguments: rows, then `n×k`
//! shapes, e.g. `512 3072x1024,1024x3072`).
use candle_core::{DType, Device, Tensor};
use pixlm_models::kernels::gemm::gemm_t;
use pixlm_models::kernels::matvec::Weights;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(512);
    let shapes: Vec<(usize, usize)> = match std::env::args().nth(2) {
        Some(list) => list
            .split(',')
            .map(|s| {
                let (n, k) = s
                    .split_once('x')
                    .ok_or_else(|| anyhow::anyhow!("shape {s}"))?;
                Ok((n.trim().parse()?, k.trim().parse()?))
            })
            .collect::<anyhow::Result<_>>()?,
        // Qwen3-0.6B's gate/up, down and q projections.
        None => vec![(3072, 1024), (1024, 3072), (2048, 1024)],
    };
    println!("rows {rows}; GFLOP/s, best of 5 (candle matmul / pixlm gemm_t)");
    for (n, k) in shapes {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?.to_dtype(dtype)?;
            let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?.to_dtype(dtype)?;
            let flop = 2.0 * (rows * n * k) as f64;
            let ws = w.flatten_all()?;
            let (w32, w16, wb) = match dtype {
                DType::F32 => (ws.to_vec1()?, vec![], vec![]),
                DType::F16 => (vec![], ws.to_vec1()?, vec![]),
                _ => (vec![], vec![], ws.to_vec1()?),
            };
            let weights = match dtype {
                DType::F32 => Weights::F32(&w32),
                DType::F16 => Weights::F16(&w16),
                _ => Weights::BF16(&wb),
            };
            let mut best = [f64::MAX; 2];
            for _ in 0..5 {
                let t = Instant::now();
                std::hint::black_box(x.matmul(&w.t()?)?);
                best[0] = best[0].min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let mut y = vec![0f32; rows * n];
                gemm_t(weights, n, k, &xs, rows, &mut y).map_err(anyhow::Error::msg)?;
                std::hint::black_box(
                    Tensor::from_vec(y, (rows, n), &Device::Cpu)?.to_dtype(dtype)?,
                );
                best[1] = best[1].min(t.elapsed().as_secs_f64());
            }
            println!(
                "{n:>5} x {k:<5} {:>5}: {:6.1} / {:6.1}",
                format!("{dtype:?}"),
                flop / best[0] / 1e9,
                flop / best[1] / 1e9
            );
        }
    }
    Ok(())
}
