//! Times a decode-sized dense product `x · wᵀ` (1 to 16 rows of `x`, one per running
//! sequence) on a 6144 × 2048 weight in f32, f16 and bf16: pixlm's row kernel
//! (`kernels::matvec`), its blocked GEMM (`kernels::gemm::gemm_t`) and the same weights packed
//! at load (`kernels::packed`, what models use), all called directly whatever
//! `kernels::dense_matmul_t` would choose. Distinct weights in turn, so none
//! stays in cache. The figures behind `kernels::matvec::MAX_ROWS`:
//! `cargo run --release -p pixlm-models --example dense_rows` (an argument, e.g. `1,8`, picks
//! the row counts; a second, e.g. `256x2048`, the weight's shape).
use half::{bf16, f16};
use pixlm_models::kernels::gemm::{self, gemm_t};
use pixlm_models::kernels::matvec::{matvec, Weights};
use pixlm_models::kernels::packed::PackedDense;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let (n, k) = match std::env::args().nth(2) {
        Some(shape) => {
            let (n, k) = shape
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("shape {shape}: want NxK"))?;
            (n.trim().parse()?, k.trim().parse()?)
        }
        None => (6144usize, 2048usize),
    };
    let row_counts: Vec<usize> = match std::env::args().nth(1) {
        Some(list) => list
            .split(',')
            .map(|r| r.trim().parse())
            .collect::<Result<_, _>>()?,
        None => vec![1, 2, 4, 6, 8, 12, 16],
    };
    let mut s = 1u64;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
    };
    let layers = 6; // distinct weights, together past the last-level cache
    let w32: Vec<Vec<f32>> = (0..layers)
        .map(|_| (0..n * k).map(|_| rnd()).collect())
        .collect();
    let w16: Vec<Vec<f16>> = w32
        .iter()
        .map(|w| w.iter().map(|&v| f16::from_f32(v)).collect())
        .collect();
    let wb: Vec<Vec<bf16>> = w32
        .iter()
        .map(|w| w.iter().map(|&v| bf16::from_f32(v)).collect())
        .collect();
    let packed = |fmt: &str| -> anyhow::Result<Vec<PackedDense>> {
        if !PackedDense::available() {
            return Ok(Vec::new());
        }
        (0..layers)
            .map(|l| {
                let w = match fmt {
                    "f32" => Weights::F32(&w32[l]),
                    "f16" => Weights::F16(&w16[l]),
                    _ => Weights::BF16(&wb[l]),
                };
                PackedDense::pack(w, n, k).map_err(anyhow::Error::msg)
            })
            .collect()
    };
    let packs = [packed("f32")?, packed("f16")?, packed("bf16")?];
    println!("{n} x {k}: ms per product, best of 5 (row kernel / gemm_t / packed)");
    for rows in row_counts {
        let x: Vec<f32> = (0..rows * k).map(|_| rnd() * 25.0).collect();
        let mut line = format!("{rows:>3} rows:");
        for (fi, fmt) in ["f32", "f16", "bf16"].into_iter().enumerate() {
            let mut best = [f64::MAX; 3];
            for _ in 0..5 {
                for (which, b) in best.iter_mut().enumerate() {
                    if which > 0 && !gemm::available() {
                        continue;
                    }
                    let t = Instant::now();
                    for l in 0..layers {
                        let w = match fmt {
                            "f32" => Weights::F32(&w32[l]),
                            "f16" => Weights::F16(&w16[l]),
                            _ => Weights::BF16(&wb[l]),
                        };
                        let mut y = vec![0f32; rows * n];
                        match which {
                            0 => matvec(w, n, k, &x, rows, &mut y),
                            1 => gemm_t(w, n, k, &x, rows, &mut y),
                            _ => packs[fi][l].matmul_t(&x, rows, &mut y),
                        }
                        .map_err(anyhow::Error::msg)?;
                        std::hint::black_box(y);
                    }
                    *b = b.min(t.elapsed().as_secs_f64() / layers as f64);
                }
            }
            line += &format!(
                "  {fmt} {:7.3} / {:7.3} / {:7.3}",
                best[0] * 1e3,
                best[1] * 1e3,
                best[2] * 1e3
            );
        }
        println!("{line}");
    }
    Ok(())
}
