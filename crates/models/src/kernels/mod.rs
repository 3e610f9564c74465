//! pixlm's own CPU kernels, used where a measurement shows candle is short of the hardware
//! limit (issue #7, `pixlm bench --vs-llama-cpp`). Each has a portable fallback and is tested
//! against a scalar reference; all run on candle's thread pool, so pixlm never has two pools
//! competing for the cores.

pub mod attn;
pub mod gemm;
pub mod matvec;
pub mod packed;
pub mod qgemm;
pub mod qmatvec;
#[cfg(target_arch = "x86_64")]
mod simd;
pub(crate) mod vexp;

use crate::error::Result;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

thread_local! {
    /// Whether this thread is running a [`parallel_for`] body.
    static IN_PARALLEL_FOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` over `0..n_items` in chunks on candle's thread pool (the calling thread takes part;
/// `--threads` / `RAYON_NUM_THREADS` sizes it). Chunks are disjoint and cover the range once.
/// Called from inside a body (a kernel that runs another per task), it runs `f` over the
/// whole range on the calling thread: the pool serves one call at a time, and its caller
/// holds it while taking part (candle runs nested calls from its own workers inline, but not
/// from the thread that made the outer call, which would wait for itself).
pub fn parallel_for<F: Fn(std::ops::Range<usize>) + Sync>(n_items: usize, f: F) {
    if IN_PARALLEL_FOR.with(|c| c.get()) {
        f(0..n_items);
        return;
    }
    /// Clears the flag when the body returns or unwinds.
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_PARALLEL_FOR.with(|c| c.set(self.0));
        }
    }
    candle_core::utils::barrier_pool().execute_chunked(n_items, |range| {
        let _reset = Reset(IN_PARALLEL_FOR.with(|c| c.replace(true)));
        f(range)
    })
}

/// Values per task of [`par_rows`]: about a 64 KiB piece of the output, big enough that a task
/// outweighs the pool's hand-off, small enough that two threads share a layer's rows evenly.
const PAR_ROWS_VALUES: usize = 1 << 14;

/// A new vector of `rows · width` values, filled by `f(rows, out)` with `out` the part of the
/// vector that holds those rows. Pieces of at least [`PAR_ROWS_VALUES`] values go to the pool's
/// threads; output small enough for one piece (a decode step's) stays on the calling thread.
/// Each piece is zeroed by the thread that fills it, just before, so no thread zeroes the whole
/// vector first while the others wait (a prompt's norms and rotations wrote megabytes per layer
/// on one thread).
pub(crate) fn par_rows<F>(rows: usize, width: usize, f: F) -> Vec<f32>
where
    F: Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
{
    let len = rows * width;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let per = PAR_ROWS_VALUES.div_ceil(width).max(1);
    let pieces = rows.div_ceil(per);
    let base = matvec::SharedOut(out.spare_capacity_mut().as_mut_ptr());
    let body = |range: std::ops::Range<usize>| {
        for p in range {
            let r = p * per..((p + 1) * per).min(rows);
            // SAFETY: piece p alone covers values r.start·width..r.end·width of the capacity
            // (at least rows·width = len values), and each piece goes to one thread.
            let piece = unsafe {
                std::slice::from_raw_parts_mut(base.ptr().add(r.start * width), r.len() * width)
            };
            for v in piece.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every value of `piece` was just written, and `MaybeUninit<f32>` has
            // `f32`'s layout.
            let piece = unsafe { &mut *(piece as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            f(r, piece);
        }
    };
    if pieces > 1 {
        parallel_for(pieces, body);
    } else {
        body(0..1);
    }
    // SAFETY: the pieces cover rows 0..rows, so all `len` values were written above.
    unsafe { out.set_len(len) };
    out
}

/// `t.transpose(0, 1)?.contiguous()` for a contiguous 3-D f32 CPU tensor without gradients,
/// (a, b, c) → (b, a, c), copied on the pool's threads (candle copies on one; a prompt's keys
/// and values are megabytes per layer); `None` for any other tensor.
pub(crate) fn swap01_f32(t: &Tensor) -> Result<Option<Tensor>> {
    let Ok((a, b, c)) = t.dims3() else {
        return Ok(None);
    };
    if !plain_cpu_f32(t) {
        return Ok(None);
    }
    let view = cpu_f32(t);
    let Some(src) = view.get() else {
        return Ok(None);
    };
    // Output row (j, i) of c values is input row (i, j).
    let out = par_rows(b * a, c, |rows, out| {
        for (r, o) in rows.zip(out.chunks_exact_mut(c)) {
            let (j, i) = (r / a, r % a);
            let at = (i * b + j) * c;
            o.copy_from_slice(&src[at..at + c]);
        }
    });
    Ok(Some(Tensor::from_vec(out, (b, a, c), t.device())?))
}

/// Whether `t` is an f32 tensor on the CPU that no gradient flows through: what the one-pass
/// f32 paths of the layers (norm, RoPE, SwiGLU) take.
pub(crate) fn plain_cpu_f32(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op()
}

/// A contiguous CPU f32 tensor's values, borrowed (the storage stays read-locked meanwhile).
pub(crate) struct F32View<G> {
    guard: G,
    range: Option<(usize, usize)>,
}

impl<G: std::ops::Deref<Target = Storage>> F32View<G> {
    /// The values, or `None` when the tensor is not a contiguous CPU f32 one.
    pub(crate) fn get(&self) -> Option<&[f32]> {
        let (start, end) = self.range?;
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => v.get(start..end),
            _ => None,
        }
    }
}

/// Borrows `t`'s values (see [`F32View::get`]).
pub(crate) fn cpu_f32(t: &Tensor) -> F32View<impl std::ops::Deref<Target = Storage> + '_> {
    let (guard, layout) = t.storage_and_layout();
    let range = layout.contiguous_offsets();
    F32View { guard, range }
}

/// `x · wᵀ` by [`matvec::matvec`] (at most [`matvec::MAX_ROWS`] rows in `x`, `(.., k)`) or
/// [`gemm::gemm_t`] (more rows, on CPUs it has a kernel for) when they apply: both on the CPU,
/// `w` a contiguous `(n, k)` f32/f16/bf16 matrix, and no gradient wanted through either
/// (training keeps candle's differentiable matmul). `None` otherwise, for the caller to use
/// candle. The result has `x`'s dtype, like candle's.
pub fn dense_matmul_t(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !matches!(x.device(), Device::Cpu) || !matches!(w.device(), Device::Cpu) {
        return Ok(None);
    }
    if w.track_op() || x.track_op() {
        return Ok(None);
    }
    let &[n, k] = w.dims() else {
        return Ok(None);
    };
    let dims = x.dims();
    if dims.last() != Some(&k) || k == 0 {
        return Ok(None);
    }
    let rows = x.elem_count() / k;
    let many = rows > matvec::MAX_ROWS;
    if rows == 0 || (many && !gemm::available()) {
        return Ok(None);
    }
    let done = with_cpu_weights(w, |weights| {
        rows_product(x, n, |xs| {
            let mut y = vec![0f32; rows * n];
            if many {
                gemm::gemm_t(weights, n, k, xs, rows, &mut y)?;
            } else {
                matvec::matvec(weights, n, k, xs, rows, &mut y)?;
            }
            Ok(y)
        })
    });
    done.transpose()
}

/// Runs `f` on `w`'s values when it is a contiguous CPU f32/f16/bf16 tensor (borrowed, the
/// storage read-locked meanwhile); `None` otherwise.
pub(crate) fn with_cpu_weights<R>(w: &Tensor, f: impl FnOnce(matvec::Weights) -> R) -> Option<R> {
    let (storage, layout) = w.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    let weights = match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => matvec::Weights::F32(&v[start..end]),
        Storage::Cpu(CpuStorage::F16(v)) => matvec::Weights::F16(&v[start..end]),
        Storage::Cpu(CpuStorage::BF16(v)) => matvec::Weights::BF16(&v[start..end]),
        _ => return None,
    };
    Some(f(weights))
}

/// `x` `(.., k)` on the CPU as f32 rows, `f` making the `(rows, n)` output from them, and the
/// output as a `(.., n)` tensor in `x`'s dtype. A contiguous f32 input is read where it is (a
/// prompt's activations are megabytes, and a copy on one thread keeps the other waiting).
fn rows_product(
    x: &Tensor,
    n: usize,
    f: impl FnOnce(&[f32]) -> std::result::Result<Vec<f32>, String>,
) -> Result<Tensor> {
    let y = {
        let view = cpu_f32(x);
        let owned: Vec<f32>;
        let xs = match view.get() {
            Some(v) => v,
            None => {
                owned = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                &owned[..]
            }
        };
        f(xs).map_err(crate::ModelError::Input)?
    };
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok(Tensor::from_vec(y, shape, x.device())?.to_dtype(x.dtype())?)
}

/// `x · wᵀ` for a weight packed at load ([`packed::PackedDense`]), `x` `(.., k)` on the CPU;
/// the result has `x`'s dtype. A gradient cannot flow through a packed weight (inference
/// loads pack; training builds dense layers), so an `x` that wants one is refused.
pub fn packed_matmul_t(x: &Tensor, w: &packed::PackedDense) -> Result<Tensor> {
    let k = w.k();
    let dims = x.dims();
    if dims.last() != Some(&k) || !x.device().is_cpu() || x.track_op() {
        return Err(crate::ModelError::Input(format!(
            "a packed ({}, {k}) weight takes CPU inputs (.., {k}) with no gradient, got {:?} on {:?}",
            w.n(),
            dims,
            x.device()
        )));
    }
    let rows = x.elem_count() / k.max(1);
    rows_product(x, w.n(), |xs| w.matmul_t_new(xs, rows))
}

/// Most rows of `x` [`quantized_matmul_t`] gives the row kernel ([`qmatvec::qmatvec`]) for
/// `fmt`. That kernel streams the weights once, but its integer work grows with every row;
/// tile kernels do more of it per loaded weight (pixlm's [`qgemm`], candle's repacked
/// tiles), and for Q8_0 without VNNI the few-rows kernel ([`q8_0_few_rows`]) from 5 rows.
/// Measured with `cargo run --release -p pixlm-models --example qmm_rows` (a 6144 ×
/// 2048 weight, milliseconds, row kernel / tile): on an AVX-512 VNNI CPU, Q8_0 at 4 rows
/// 0.77 / 0.86 (pixlm's VNNI tile), 6 rows 1.36 / 0.99. Q4_K, whose row kernel unpacks each
/// weight row once for up to four x rows: at 4 rows 0.42-0.47 / 0.73-0.81 (candle's VNNI
/// tiles), at 8 rows 0.90-1.04 / 0.97-1.04; built for Zen 3 (AVX2 only), 4 rows 0.51-0.61 /
/// 0.81-0.98, 8 rows 1.07-1.40 / 1.18-1.45, 12 rows 1.65-2.02 / 1.59-1.94 (candle's AVX2
/// tiles). Without VNNI see [`q8_0_tile_min_rows`].
pub fn quantized_max_rows(fmt: qmatvec::QFormat) -> usize {
    match fmt {
        qmatvec::QFormat::Q8_0 if qgemm::available() || candle_has_vnni_tiles() => 4,
        _ => matvec::MAX_ROWS,
    }
}

/// Whether [`quantized_matmul_t`] sends a Q8_0 product of `rows` rows to the few-rows kernel
/// ([`qgemm::rows::q8_0_rows`]): past [`quantized_max_rows`] and up to its
/// [`qgemm::rows::MAX_ROWS`], on CPUs with AVX2 and no VNNI (with VNNI, pixlm's or candle's
/// VNNI tiles take them). Measured on Zen 3 with `qmm_rows` (a 6144 × 2048 weight,
/// BENCHMARKS.md "Q8_0 decode steps of 5 to 8 sequences"): at 5 rows 0.83-0.90x the time of
/// the faster of the row and tile kernels, at 6 rows 0.86-0.96x, at 8 rows 0.83-1.0x the
/// tile's; at 1 to 4 rows the row kernel is level or ahead.
pub fn q8_0_few_rows(rows: usize) -> bool {
    qgemm::available()
        && !qgemm::vnni()
        && !candle_has_vnni_tiles()
        && rows > quantized_max_rows(qmatvec::QFormat::Q8_0)
        && rows <= qgemm::rows::MAX_ROWS
}

/// Fewest rows of `x` for which [`quantized_matmul_t`] sends a Q8_0 product to pixlm's tile
/// kernel ([`qgemm::q8_0_gemm`]); `None` where it does not (no AVX2; or AVX-VNNI without
/// AVX-512, where candle's VNNI tiles are the faster). Measured with `qmm_rows` (BENCHMARKS.md,
/// "An int8 tile kernel"): with AVX-512 VNNI the tile is ahead of the row kernel from 5 rows
/// and level with candle's tiles from 128 rows (10% behind at 8-32 rows: it packs its panels
/// per call, where candle keeps a second, repacked copy of every weight); built for Zen 3
/// (AVX2 only) it is ahead of the row kernel from 8 rows and 2.5-4.3x candle's generic path.
pub fn q8_0_tile_min_rows() -> Option<usize> {
    if !qgemm::available() {
        None
    } else if qgemm::vnni() {
        Some(quantized_max_rows(qmatvec::QFormat::Q8_0) + 1)
    } else if candle_has_vnni_tiles() {
        None
    } else {
        Some(8)
    }
}

/// Fewest rows of `x` for which [`quantized_matmul_t`] sends a Q4_K product to pixlm's tile
/// kernel ([`qgemm::q4k::q4k_gemm`]); `None` where it does not: without AVX2, and where
/// candle has VNNI tiles for Q4_K (faster there: 24.3 against 28.0 ms at 512 rows of a 6144 ×
/// 2048 weight). Against candle's AVX2 Q4_K tiles (`qmm_rows -- q4_k` built for Zen 3, see
/// BENCHMARKS.md) it is level at 8 rows and ahead from 16 (1.3x at 32 rows, 1.5x from 128).
pub fn q4k_tile_min_rows() -> Option<usize> {
    (qgemm::available() && !candle_has_vnni_tiles()).then_some(16)
}

/// Whether candle multiplies Q8_0 weights with its VNNI tiles on this CPU (its own test:
/// AVX-512 VNNI or AVX-VNNI, unless `MISTRALRS_FORCE_AVX2=1`).
fn candle_has_vnni_tiles() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var("MISTRALRS_FORCE_AVX2").as_deref() != Ok("1")
                && ((is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
                    || (is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2")))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `x · wᵀ` for a Q8_0 or Q4_K `w`, under the same conditions as [`dense_matmul_t`] (CPU, no
/// gradient): from [`q8_0_tile_min_rows`] / [`q4k_tile_min_rows`] rows on by the tile
/// kernels of [`qgemm`], else for at most [`quantized_max_rows`] rows by
/// [`qmatvec::qmatvec`]; `None` otherwise, for candle.
pub fn quantized_matmul_t(x: &Tensor, w: &QTensor) -> Result<Option<Tensor>> {
    let fmt = match w.dtype() {
        GgmlDType::Q8_0 => qmatvec::QFormat::Q8_0,
        GgmlDType::Q4K => qmatvec::QFormat::Q4K,
        _ => return Ok(None),
    };
    if !matches!(x.device(), Device::Cpu) || !matches!(w.device(), Device::Cpu) || x.track_op() {
        return Ok(None);
    }
    let &[n, k] = w.shape().dims() else {
        return Ok(None);
    };
    let dims = x.dims();
    if dims.last() != Some(&k) || k == 0 || !k.is_multiple_of(fmt.block()) {
        return Ok(None);
    }
    let rows = x.elem_count() / k;
    let tile_min = match fmt {
        qmatvec::QFormat::Q8_0 => q8_0_tile_min_rows(),
        qmatvec::QFormat::Q4K => q4k_tile_min_rows(),
    };
    let few = fmt == qmatvec::QFormat::Q8_0 && q8_0_few_rows(rows);
    let tile = !few && tile_min.is_some_and(|m| rows >= m);
    if rows == 0 || (rows > quantized_max_rows(fmt) && !tile && !few) {
        return Ok(None);
    }
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut y = vec![0f32; rows * n];
    let bytes = w.data()?;
    match (tile, fmt) {
        _ if few => qgemm::rows::q8_0_rows(&bytes, n, k, &xs, rows, &mut y),
        (true, qmatvec::QFormat::Q8_0) => qgemm::q8_0_gemm(&bytes, n, k, &xs, rows, &mut y),
        (true, qmatvec::QFormat::Q4K) => qgemm::q4k::q4k_gemm(&bytes, n, k, &xs, rows, &mut y),
        (false, _) => qmatvec::qmatvec(fmt, &bytes, n, k, &xs, rows, &mut y),
    }
    .map_err(crate::ModelError::Input)?;
    let mut shape = dims.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok(Some(
        Tensor::from_vec(y, shape, x.device())?.to_dtype(x.dtype())?,
    ))
}

/// Random quantized matrices and their exact products, for the kernels' tests.
#[cfg(test)]
pub(crate) mod test_data {
    use super::qmatvec::{quantize_row, QFormat};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    /// GGUF bytes of a random (n, k) matrix in `fmt`, and its dequantized values.
    pub fn weights(seed: u64, n: usize, k: usize, fmt: QFormat) -> (Vec<u8>, Vec<f32>) {
        let w = crate::seeded_randn(seed, 0.05, &[n, k]);
        let dtype = match fmt {
            QFormat::Q8_0 => GgmlDType::Q8_0,
            QFormat::Q4K => GgmlDType::Q4K,
        };
        let q = QTensor::quantize(&w, dtype).unwrap();
        let deq = q.dequantize(&Device::Cpu).unwrap();
        (
            q.data().unwrap().into_owned(),
            deq.flatten_all().unwrap().to_vec1().unwrap(),
        )
    }

    /// `rows × k` values drawn from N(0, 1).
    pub fn x_rows(seed: u64, rows: usize, k: usize) -> Vec<f32> {
        crate::seeded_randn(seed, 1.0, &[rows, k])
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// `n` values uniform in [-1, 1) from `seed` (splitmix64).
    pub fn uniform(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// `x · wᵀ` in f64 from the weights as given (row-major (n, k)), with each output's sum of
    /// |terms| (the scale of the rounding error an f32 sum may make).
    pub fn dense_reference(
        w: &[f32],
        n: usize,
        k: usize,
        x: &[f32],
        rows: usize,
    ) -> Vec<(f64, f64)> {
        let mut y = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for o in 0..n {
                let (mut s, mut a) = (0f64, 0f64);
                for j in 0..k {
                    let t = w[o * k + j] as f64 * x[r * k + j] as f64;
                    s += t;
                    a += t.abs();
                }
                y.push((s, a));
            }
        }
        y
    }

    /// Exact product (in f64) of the dequantized weights with x quantized by
    /// [`quantize_row`] in blocks of `block`: what the kernels compute, up to f32 rounding.
    /// This also checks that the block layout read there is the one candle writes.
    pub fn reference(
        deq: &[f32],
        n: usize,
        k: usize,
        x: &[f32],
        rows: usize,
        block: usize,
    ) -> Vec<f64> {
        let mut y = Vec::with_capacity(rows * n);
        for r in 0..rows {
            let xq = quantize_row(&x[r * k..(r + 1) * k], block);
            let xd: Vec<f64> = (0..k)
                .map(|j| xq.q[j] as f64 * xq.d[j / block] as f64)
                .collect();
            for o in 0..n {
                y.push((0..k).map(|j| deq[o * k + j] as f64 * xd[j]).sum());
            }
        }
        y
    }

    /// `got` within 1e-5 of `want`'s largest magnitude, element by element.
    pub fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() < 1e-5 * scale,
                "{what} [{i}]: {g} vs {w}"
            );
        }
    }

    /// A product `f(x, rows, y)` gives each of the `rows` x rows (of `k`) the same bits alone
    /// as in the call with all of them (`n` outputs per row).
    pub fn assert_rows_alone_match(
        n: usize,
        k: usize,
        x: &[f32],
        f: impl Fn(&[f32], usize, &mut [f32]),
    ) {
        let rows = x.len() / k;
        let mut all = vec![0f32; rows * n];
        f(x, rows, &mut all);
        for r in 0..rows {
            let mut one = vec![0f32; n];
            f(&x[r * k..(r + 1) * k], 1, &mut one);
            assert_eq!(&all[r * n..(r + 1) * n], &one[..], "row {r}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_parallel_for_runs_inline_instead_of_waiting_for_itself() {
        let total = std::sync::atomic::AtomicUsize::new(0);
        parallel_for(64, |outer| {
            for _ in outer {
                parallel_for(10, |inner| {
                    total.fetch_add(inner.len(), std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        assert_eq!(total.into_inner(), 640);
    }

    #[test]
    fn par_rows_gives_every_row_once_in_its_place() {
        // One piece, several pieces with a short last one, rows wider than a piece, and none.
        for (rows, width) in [(3, 5), (1000, 37), (5, PAR_ROWS_VALUES + 3), (0, 8), (4, 0)] {
            let out = par_rows(rows, width, |range, out| {
                assert_eq!(out.len(), range.len() * width);
                assert!(out.iter().all(|v| *v == 0.0), "pieces arrive zeroed");
                for (r, o) in range.zip(out.chunks_exact_mut(width)) {
                    for (c, v) in o.iter_mut().enumerate() {
                        *v += (r * 100_000 + c) as f32;
                    }
                }
            });
            let want: Vec<f32> = (0..rows * width)
                .map(|i| ((i / width.max(1)) * 100_000 + i % width.max(1)) as f32)
                .collect();
            assert_eq!(out, want, "{rows} x {width}");
        }
    }

    #[test]
    fn swap01_matches_candle_and_declines_other_tensors() {
        // A narrowed (offset) view, as the KV cache takes one sequence of a packed batch.
        let t = crate::seeded_randn(3, 1.0, &[700, 8, 24]);
        let part = t.narrow(0, 100, 513).unwrap();
        let got = swap01_f32(&part).unwrap().unwrap();
        let want = part.transpose(0, 1).unwrap().contiguous().unwrap();
        assert_eq!(got.dims(), want.dims());
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Strided, 2-D, bf16 and gradient-tracked tensors are left to candle.
        assert!(swap01_f32(&t.transpose(0, 1).unwrap()).unwrap().is_none());
        assert!(swap01_f32(&t.flatten_from(1).unwrap()).unwrap().is_none());
        let bf = t.to_dtype(DType::BF16).unwrap();
        assert!(swap01_f32(&bf).unwrap().is_none());
        let var = candle_core::Var::from_tensor(&t).unwrap();
        assert!(swap01_f32(var.as_tensor()).unwrap().is_none());
    }

    #[test]
    fn dense_matmul_t_matches_candle_and_declines_what_it_does_not_do() {
        let w = crate::seeded_randn(1, 0.1, &[37, 70]);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let w = w.to_dtype(dtype).unwrap();
            // 3 rows: the matrix-vector kernel; 20 rows: the GEMM (where the CPU has it).
            for rows in [3, 20] {
                let x = crate::seeded_randn(2, 1.0, &[1, rows, 70])
                    .to_dtype(dtype)
                    .unwrap();
                let Some(got) = dense_matmul_t(&x, &w).unwrap() else {
                    assert!(rows > matvec::MAX_ROWS && !gemm::available());
                    continue;
                };
                assert_eq!(got.dims(), &[1, rows, 37]);
                assert_eq!(got.dtype(), dtype);
                let want = x
                    .to_dtype(DType::F32)
                    .unwrap()
                    .broadcast_matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
                    .unwrap();
                let tol = if dtype == DType::F32 { 1e-5 } else { 0.05 };
                let d = crate::max_abs_diff(&got, &want).unwrap();
                assert!(d < tol, "{dtype:?}, {rows} rows: {d}");
            }
        }
        // A transposed (non-contiguous) weight, a variable being trained.
        let wt = crate::seeded_randn(4, 1.0, &[70, 37]).t().unwrap();
        let x1 = crate::seeded_randn(5, 1.0, &[1, 70]);
        assert!(dense_matmul_t(&x1, &wt).unwrap().is_none());
        let var = candle_core::Var::from_tensor(&w).unwrap();
        assert!(dense_matmul_t(&x1, var.as_tensor()).unwrap().is_none());
    }
}
