//! Times x·wᵀ for a quantized weight at 1 to 512 rows: pixlm's row kernel
//! (`kernels::qmatvec`), its tile kernel (`kernels::qgemm`, `kernels::qgemm::q4k`) and Q8_0's
//! few-rows kernel (`kernels::qgemm::rows`), all called directly
//! whatever `kernels::quantized_matmul_t` would choose, against candle's QMatMul. The figures
//! behind `kernels::quantized_max_rows`, `kernels::q8_0_few_rows` and `kernels::q8_0_tile_min_rows`:
//! `cargo run --release -p pixlm-models --example qmm_rows -- q8_0` (or `q4_k`; a third
//! argument, e.g. `1,8,512`, picks the row counts).
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use pixlm_models::kernels::qgemm;
use pixlm_models::kernels::qmatvec::{qmatvec, QFormat};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    // `QMM_SHAPE=NxK` and `QMM_LAYERS=L` change the weight's shape and how many distinct
    // weights take turns (one small weight stays in cache: the kernels' compute rate alone).
    let (n, k) = match std::env::var("QMM_SHAPE").ok() {
        Some(s) => {
            let (n, k) = s
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("QMM_SHAPE {s}: want NxK"))?;
            (n.trim().parse()?, k.trim().parse()?)
        }
        None => (6144usize, 2048usize),
    };
    let fmt = match std::env::args().nth(1).as_deref() {
        Some("q4_k") => GgmlDType::Q4K,
        _ => GgmlDType::Q8_0,
    };
    let layers: usize = match std::env::var("QMM_LAYERS").ok() {
        Some(l) => l.parse()?,
        None => 24, // distinct weights so that none stays in cache
    };
    let ws: Vec<QTensor> = (0..layers)
        .map(|i| {
            let w =
                Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?.affine(1.0, i as f64 * 1e-4)?;
            QTensor::quantize(&w, fmt)
        })
        .collect::<candle_core::Result<_>>()?;
    let qms: Vec<QMatMul> = ws
        .iter()
        .map(|w| QMatMul::from_qtensor(QTensor::quantize(&w.dequantize(&Device::Cpu)?, fmt)?))
        .collect::<candle_core::Result<_>>()?;
    let row_counts: Vec<usize> = match std::env::args().nth(2) {
        Some(list) => list
            .split(',')
            .map(|r| r.trim().parse())
            .collect::<Result<_, _>>()?,
        None => vec![1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 512],
    };
    let tile = qgemm::available();
    for rows in row_counts {
        // The few-rows kernel (`kernels::qgemm::rows`): Q8_0, at most 8 rows.
        let few = tile && fmt == GgmlDType::Q8_0 && rows <= qgemm::rows::MAX_ROWS;
        let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
        let mut best = [f64::MAX; 4];
        // Fewer weights and repetitions where each product is long (compute-bound anyway).
        let (layers, reps) = if rows >= 64 {
            (layers.min(4), 2)
        } else {
            (layers, 5)
        };
        for _ in 0..reps {
            let t = Instant::now();
            let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let qfmt = if fmt == GgmlDType::Q8_0 {
                QFormat::Q8_0
            } else {
                QFormat::Q4K
            };
            for w in &ws[..layers] {
                let mut y = vec![0f32; rows * n];
                qmatvec(qfmt, &w.data()?, n, k, &xs, rows, &mut y).map_err(anyhow::Error::msg)?;
                std::hint::black_box(y);
            }
            best[0] = best[0].min(t.elapsed().as_secs_f64() / layers as f64);
            if tile {
                let t = Instant::now();
                for w in &ws[..layers] {
                    let mut y = vec![0f32; rows * n];
                    if fmt == GgmlDType::Q8_0 {
                        qgemm::q8_0_gemm(&w.data()?, n, k, &xs, rows, &mut y)
                    } else {
                        qgemm::q4k::q4k_gemm(&w.data()?, n, k, &xs, rows, &mut y)
                    }
                    .map_err(anyhow::Error::msg)?;
                    std::hint::black_box(y);
                }
                best[2] = best[2].min(t.elapsed().as_secs_f64() / layers as f64);
            }
            if few {
                let t = Instant::now();
                for w in &ws[..layers] {
                    let mut y = vec![0f32; rows * n];
                    qgemm::rows::q8_0_rows(&w.data()?, n, k, &xs, rows, &mut y)
                        .map_err(anyhow::Error::msg)?;
                    std::hint::black_box(y);
                }
                best[3] = best[3].min(t.elapsed().as_secs_f64() / layers as f64);
            }
            let t = Instant::now();
            for q in &qms[..layers] {
                std::hint::black_box(q.forward(&x)?);
            }
            best[1] = best[1].min(t.elapsed().as_secs_f64() / layers as f64);
        }
        let gb = (n * k) as f64
            * if fmt == GgmlDType::Q8_0 {
                34.0 / 32.0
            } else {
                144.0 / 256.0
            }
            / 1e9;
        let gmac = (n * k * rows) as f64 / 1e9;
        let tile_col = if tile {
            format!(
                "  tile {:8.3} ms ({:5.1} GMAC/s)",
                best[2] * 1e3,
                gmac / best[2]
            )
        } else {
            String::new()
        };
        let few_col = if few {
            format!("  few {:8.3} ms ({:5.1} GB/s)", best[3] * 1e3, gb / best[3])
        } else {
            String::new()
        };
        println!(
            "{fmt:?} rows {rows:3}: pixlm {:8.3} ms ({:5.1} GB/s){tile_col}{few_col}  candle {:8.3} ms ({:5.1} GB/s, {:5.1} GMAC/s)",
            best[0] * 1e3,
            gb / best[0],
            best[1] * 1e3,
            gb / best[1],
            gmac / best[1]
        );
    }
    Ok(())
}
