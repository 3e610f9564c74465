//! Matrix-vector products for dense weights: `y = x · wᵀ` for a few rows of `x` (decode steps,
//! one row per sequence), with `w` in f32, f16 or bf16 and everything summed in f32.
//!
//! Decode is bound by reading the weights, so the kernels stream each weight row once, widen
//! f16/bf16 to f32 in registers (never a widened copy in memory, which is what candle does for
//! bf16), and fuse four output rows per pass so each load of `x` serves four rows. The output
//! rows are shared out over the thread pool ([`super::parallel_for`]); every output is one dot
//! product summed in the same order whatever the thread count, so results do not depend on it.
//!
//! Models loaded for inference on CPUs with AVX2 pack their dense weights instead
//! ([`super::packed`], faster at every row count and batch-invariant at all of them); these
//! kernels serve row-major weights: CPUs without AVX2 (the portable kernel) and dense layers
//! built without a loader.

use half::{bf16, f16};

/// Most rows of `x` the kernels take: past this a GEMM (candle's) re-uses each loaded weight
/// across enough rows to beat streaming it once per row.
pub const MAX_ROWS: usize = 8;

/// A row-major `(n, k)` weight matrix in its stored type.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl Weights<'_> {
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
            Weights::BF16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes_per_weight(&self) -> usize {
        match self {
            Weights::F32(_) => 4,
            Weights::F16(_) | Weights::BF16(_) => 2,
        }
    }
}

/// The dot products of `x` (length `k`) with the `m` (1 to 4) weight rows starting at row `o0`.
type Dot4 = fn(Weights, usize, usize, usize, &[f32]) -> [f32; 4];

/// `y[r·n + o] = Σ_j x[r·k + j] · w[o·k + j]` for `rows` rows of `x`. Sizes that do not agree
/// are refused (a caller's bug, never user input).
pub fn matvec(
    w: Weights,
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<(), String> {
    if w.len() != n * k || x.len() != rows * k || y.len() != rows * n {
        return Err(format!(
            "matvec sizes: weight {} for ({n}, {k}), x {} for {rows} rows, y {}",
            w.len(),
            x.len(),
            y.len()
        ));
    }
    if n == 0 || rows == 0 {
        return Ok(());
    }
    let (dot, dot_pair) = dot4_kernel();
    let out = SharedOut(y.as_mut_ptr());
    let groups = n.div_ceil(4);
    let body = |range: std::ops::Range<usize>| {
        for g in range {
            let o0 = g * 4;
            let m = (n - o0).min(4);
            let mut r = 0;
            while r < rows {
                // Two x rows per pass widen each weight once for both; each row's sums are
                // the single-row kernel's, in its order, so a row's bits do not depend on
                // what shares its pass.
                let (d, both) = if r + 1 < rows {
                    let xs = &x[r * k..(r + 2) * k];
                    (dot_pair(w, o0, m, k, &xs[..k], &xs[k..]), 2)
                } else {
                    let d = dot(w, o0, m, k, &x[r * k..(r + 1) * k]);
                    ([d, [0.0; 4]], 1)
                };
                for (dr, d) in d.iter().take(both).enumerate() {
                    for (i, v) in d.iter().take(m).enumerate() {
                        // SAFETY: r + dr < rows and o0 + i < n, so the index is inside `y`
                        // (length rows·n, checked above); group g alone writes outputs
                        // o0..o0+m, and each group is handed to exactly one thread, so no two
                        // writes alias.
                        unsafe { *out.ptr().add((r + dr) * n + o0 + i) = *v };
                    }
                }
                r += both;
            }
        }
    };
    // Below ~64K weights the pool's wake-up costs more than the work.
    if n * k < 1 << 16 {
        body(0..groups);
    } else {
        super::parallel_for(groups, body);
    }
    Ok(())
}

/// An output buffer's base pointer, shared by the threads that write disjoint parts of it.
pub(crate) struct SharedOut<T = f32>(pub(crate) *mut T);
// SAFETY: every user writes through the pointer only at indices owned by one thread each
// (see `matvec`, `qmatvec`, `attn`, `qgemm`), and the buffer outlives the parallel loop that
// uses it; `T` is a plain number type in all of them.
unsafe impl<T> Sync for SharedOut<T> {}
unsafe impl<T> Send for SharedOut<T> {}

impl<T> SharedOut<T> {
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }
}

/// [`Dot4`] for two x rows at once.
type Dot4Pair = fn(Weights, usize, usize, usize, &[f32], &[f32]) -> [[f32; 4]; 2];

/// The fastest dot-product kernels this CPU runs (one x row, two x rows).
fn dot4_kernel() -> (Dot4, Dot4Pair) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return (avx2::dot4, avx2::dot4_pair);
        }
    }
    (scalar::dot4, scalar::dot4_pair)
}

/// Rows `o0..o0+4` of the weights, the last one repeated when `m < 4` (so every pointer is in
/// bounds and the extra results are ignored).
fn row_starts(o0: usize, m: usize, k: usize) -> [usize; 4] {
    let last = m.saturating_sub(1);
    [o0, o0 + last.min(1), o0 + last.min(2), o0 + last.min(3)].map(|r| r * k)
}

pub(crate) mod scalar {
    use super::{row_starts, Weights};

    /// The portable kernel, and the reference the SIMD ones are tested against.
    pub fn dot4(w: Weights, o0: usize, m: usize, k: usize, x: &[f32]) -> [f32; 4] {
        let starts = row_starts(o0, m, k);
        starts.map(|s| {
            let mut acc = 0f32;
            for (j, &xj) in x.iter().enumerate().take(k) {
                let wj = match w {
                    Weights::F32(v) => v[s + j],
                    Weights::F16(v) => v[s + j].to_f32(),
                    Weights::BF16(v) => v[s + j].to_f32(),
                };
                acc += wj * xj;
            }
            acc
        })
    }

    pub fn dot4_pair(
        w: Weights,
        o0: usize,
        m: usize,
        k: usize,
        x0: &[f32],
        x1: &[f32],
    ) -> [[f32; 4]; 2] {
        [dot4(w, o0, m, k, x0), dot4(w, o0, m, k, x1)]
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::simd::hsum;
    use super::{row_starts, Weights};
    use std::arch::x86_64::*;

    pub fn dot4(w: Weights, o0: usize, m: usize, k: usize, x: &[f32]) -> [f32; 4] {
        let s = row_starts(o0, m, k);
        assert!(x.len() >= k && s[3] + k <= w.len(), "dot4 out of bounds");
        // SAFETY: `dot4_kernel` hands this function out only after detecting avx2, fma and
        // f16c; the assert above keeps every row `s[i]..s[i]+k` and `x[..k]` in bounds, which
        // is all the kernels read.
        unsafe {
            match w {
                Weights::F32(v) => dot4_f32(v.as_ptr(), s, k, x.as_ptr()),
                Weights::F16(v) => dot4_f16(v.as_ptr().cast(), s, k, x.as_ptr()),
                Weights::BF16(v) => dot4_bf16(v.as_ptr().cast(), s, k, x.as_ptr()),
            }
        }
    }

    pub fn dot4_pair(
        w: Weights,
        o0: usize,
        m: usize,
        k: usize,
        x0: &[f32],
        x1: &[f32],
    ) -> [[f32; 4]; 2] {
        let s = row_starts(o0, m, k);
        assert!(
            x0.len() >= k && x1.len() >= k && s[3] + k <= w.len(),
            "dot4_pair out of bounds"
        );
        // SAFETY: as in `dot4`, for both x rows.
        unsafe {
            match w {
                Weights::F32(v) => dot4_pair_f32(v.as_ptr(), s, k, x0.as_ptr(), x1.as_ptr()),
                Weights::F16(v) => dot4_pair_f16(v.as_ptr().cast(), s, k, x0.as_ptr(), x1.as_ptr()),
                Weights::BF16(v) => {
                    dot4_pair_bf16(v.as_ptr().cast(), s, k, x0.as_ptr(), x1.as_ptr())
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    /// bf16 is the top half of an f32: zero-extend to 32 bits and shift left by 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    }

    fn widen_f16(b: u16) -> f32 {
        half::f16::from_bits(b).to_f32()
    }

    fn widen_bf16(b: u16) -> f32 {
        half::bf16::from_bits(b).to_f32()
    }

    fn widen_f32(v: f32) -> f32 {
        v
    }

    /// One kernel per stored type. The four rows are read one after the other (they are
    /// adjacent in memory, so the whole matrix is one sequential stream the hardware
    /// prefetcher follows; interleaving four rows measured 1.6x slower at f16), 32 columns a
    /// step into 4 accumulators, then the columns left over one by one. `x` stays in L1.
    macro_rules! dot4_impl {
        ($name:ident, $t:ty, $load:ident, $widen:ident) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name(w: *const $t, s: [usize; 4], k: usize, x: *const f32) -> [f32; 4] {
                let mut out = [0f32; 4];
                for i in 0..4 {
                    let p = w.add(s[i]);
                    let mut a = [_mm256_setzero_ps(); 4];
                    let mut j = 0;
                    while j + 32 <= k {
                        for u in 0..4 {
                            let xv = _mm256_loadu_ps(x.add(j + 8 * u));
                            a[u] = _mm256_fmadd_ps($load(p.add(j + 8 * u)), xv, a[u]);
                        }
                        j += 32;
                    }
                    while j + 8 <= k {
                        let xv = _mm256_loadu_ps(x.add(j));
                        a[0] = _mm256_fmadd_ps($load(p.add(j)), xv, a[0]);
                        j += 8;
                    }
                    let mut acc = hsum(_mm256_add_ps(
                        _mm256_add_ps(a[0], a[1]),
                        _mm256_add_ps(a[2], a[3]),
                    ));
                    while j < k {
                        acc += $widen(*p.add(j)) * *x.add(j);
                        j += 1;
                    }
                    out[i] = acc;
                }
                out
            }
        };
    }

    /// `dot4_impl` for two x rows: each weight vector is loaded and widened once and meets
    /// both rows; each row's accumulators, steps and tail are `dot4_impl`'s, in its order.
    macro_rules! dot4_pair_impl {
        ($name:ident, $t:ty, $load:ident, $widen:ident) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name(
                w: *const $t,
                s: [usize; 4],
                k: usize,
                x0: *const f32,
                x1: *const f32,
            ) -> [[f32; 4]; 2] {
                let mut out = [[0f32; 4]; 2];
                for i in 0..4 {
                    let p = w.add(s[i]);
                    let mut a = [_mm256_setzero_ps(); 4];
                    let mut b = [_mm256_setzero_ps(); 4];
                    let mut j = 0;
                    while j + 32 <= k {
                        for u in 0..4 {
                            let wv = $load(p.add(j + 8 * u));
                            a[u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0.add(j + 8 * u)), a[u]);
                            b[u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1.add(j + 8 * u)), b[u]);
                        }
                        j += 32;
                    }
                    while j + 8 <= k {
                        let wv = $load(p.add(j));
                        a[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0.add(j)), a[0]);
                        b[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1.add(j)), b[0]);
                        j += 8;
                    }
                    let mut acc0 = hsum(_mm256_add_ps(
                        _mm256_add_ps(a[0], a[1]),
                        _mm256_add_ps(a[2], a[3]),
                    ));
                    let mut acc1 = hsum(_mm256_add_ps(
                        _mm256_add_ps(b[0], b[1]),
                        _mm256_add_ps(b[2], b[3]),
                    ));
                    while j < k {
                        let wj = $widen(*p.add(j));
                        acc0 += wj * *x0.add(j);
                        acc1 += wj * *x1.add(j);
                        j += 1;
                    }
                    out[0][i] = acc0;
                    out[1][i] = acc1;
                }
                out
            }
        };
    }

    dot4_pair_impl!(dot4_pair_f32, f32, load_f32, widen_f32);
    dot4_pair_impl!(dot4_pair_f16, u16, load_f16, widen_f16);
    dot4_pair_impl!(dot4_pair_bf16, u16, load_bf16, widen_bf16);

    dot4_impl!(dot4_f32, f32, load_f32, widen_f32);
    dot4_impl!(dot4_f16, u16, load_f16, widen_f16);
    dot4_impl!(dot4_bf16, u16, load_bf16, widen_bf16);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{dense_reference as reference, uniform as data};

    fn check(kind: &str, w: Weights, w_f32: &[f32], n: usize, k: usize, rows: usize) {
        let x = data(7 + k as u64, rows * k);
        let want = reference(w_f32, n, k, &x, rows);
        let mut y = vec![f32::NAN; rows * n];
        matvec(w, n, k, &x, rows, &mut y).unwrap();
        let mut y_scalar = vec![f32::NAN; rows * n];
        for r in 0..rows {
            for g in 0..n.div_ceil(4) {
                let m = (n - g * 4).min(4);
                let d = scalar::dot4(w, g * 4, m, k, &x[r * k..(r + 1) * k]);
                y_scalar[r * n + g * 4..r * n + g * 4 + m].copy_from_slice(&d[..m]);
            }
        }
        for (i, ((got, sc), (s, a))) in y.iter().zip(&y_scalar).zip(&want).enumerate() {
            let tol = 1e-6 * a + 1e-6;
            assert!(
                (*got as f64 - s).abs() <= tol && (*sc as f64 - s).abs() <= tol,
                "{kind} n={n} k={k} rows={rows} [{i}]: kernel {got}, scalar {sc}, want {s}"
            );
        }
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        for &(n, k, rows) in &[
            (1, 1, 1),
            (3, 7, 1),
            (4, 8, 2),
            (5, 15, 3),
            (9, 16, 1),
            (13, 33, 8),
            (64, 100, 4),
            (257, 1029, 2),
            (300, 256, 1),
        ] {
            let w = data(n as u64 * 31 + k as u64, n * k);
            check("f32", Weights::F32(&w), &w, n, k, rows);
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            check("f16", Weights::F16(&h), &hf, n, k, rows);
            let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let bf: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            check("bf16", Weights::BF16(&b), &bf, n, k, rows);
        }
    }

    #[test]
    fn each_row_gets_its_own_bits_whatever_shares_its_pass() {
        // Rows go through the kernels in pairs (the last alone when odd): every row must come
        // out as it does alone, in every format, tails (k % 32, k % 8) included.
        let (n, k) = (37, 75);
        let w = data(11, n * k);
        let x = data(12, 5 * k);
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        for weights in [Weights::F32(&w), Weights::F16(&h), Weights::BF16(&b)] {
            crate::kernels::test_data::assert_rows_alone_match(n, k, &x, |x, rows, y| {
                matvec(weights, n, k, x, rows, y).unwrap()
            });
        }
    }

    #[test]
    fn same_result_whatever_the_split() {
        // Large enough to go through the pool; each output must equal its own single dot.
        let (n, k, rows) = (1000, 96, 2);
        let w: Vec<bf16> = data(5, n * k).iter().map(|&v| bf16::from_f32(v)).collect();
        let x = data(6, rows * k);
        let mut y = vec![0f32; rows * n];
        matvec(Weights::BF16(&w), n, k, &x, rows, &mut y).unwrap();
        let (dot, _) = dot4_kernel();
        for r in 0..rows {
            for o in 0..n {
                let d = dot(Weights::BF16(&w), o, 1, k, &x[r * k..(r + 1) * k]);
                assert_eq!(y[r * n + o].to_bits(), d[0].to_bits(), "row {r} out {o}");
            }
        }
    }

    #[test]
    fn refuses_sizes_that_disagree() {
        let w = vec![0f32; 12];
        let mut y = vec![0f32; 3];
        assert!(matvec(Weights::F32(&w), 3, 4, &[0.0; 3], 1, &mut y).is_err());
        assert!(matvec(Weights::F32(&w), 4, 4, &[0.0; 4], 1, &mut y).is_err());
        assert!(matvec(Weights::F32(&w), 3, 4, &[0.0; 4], 1, &mut y).is_ok());
    }
}
