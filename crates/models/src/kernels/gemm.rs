//! Dense prefill: `y = x · wᵀ` for many rows of `x`, with `w` in f32, f16 or bf16 and every
//! product summed in f32.
//!
//! candle multiplies dense weights with the `gemm` crate, which reaches about 65% of the
//! FMA peak on these CPUs (a 512 × 1024 by 1024 × 3072 product on one Zen 4 core: 69-78
//! GFLOP/s of 113; `examples/dense_mm.rs`), and widens bf16 weights to f32 in memory on every
//! call. This is the textbook blocked GEMM (Goto, BLIS) with one AVX2+FMA micro-kernel:
//!
//! - `x` is packed once per call, in parallel, into panels of [`MR`] rows interleaved along
//!   `k` (so the kernel broadcasts one value per row from consecutive addresses);
//! - the work is cut into units of [`NC`] output features by up to 16 panels of `x`, shared
//!   out over the thread pool; a unit's weight rows are packed, [`KC`] values of `k` at a
//!   time, into panels of [`NR`] features interleaved along `k` (widened from f16/bf16 here),
//!   which stay in the L2 cache while the unit's panels of `x` pass by;
//! - the kernel keeps a 6 × 16 block of `y` in twelve registers over `KC` steps of two loads
//!   and six broadcasts for twelve FMAs.
//!
//! Besides weights (row-major, or packed at load), the prompt's attention multiplies with it:
//! queries by a head's keys (rows some values apart in the cache, [`gemm_t_strided`]) and
//! probabilities by its values (stored transposed to the kernel's view, [`gemm_nn`]).
//!
//! Each output is summed in the same order (blocks of `KC`, each in order) whatever the thread
//! count, so results do not depend on it.

use super::matvec::{SharedOut, Weights};
use super::packed::PackedDense;
use std::mem::MaybeUninit;

/// Rows of `x` per micro-kernel call.
pub const MR: usize = 6;
/// Output features (weight rows) per micro-kernel call.
pub const NR: usize = 16;
/// Steps along `k` per packed block.
pub const KC: usize = 256;
/// Output features per unit of work (and per packed weight block).
pub const NC: usize = 128;
/// Panels of x (of MR rows) per unit of work at most.
const PB: usize = 16;
// A unit's strips are whole strips of a packed weight (`gemm_packed` indexes them as o0 / NR).
const _: () = assert!(NC.is_multiple_of(NR));
// `pack_x` writes a full panel's six rows by name.
const _: () = assert!(MR == 6);

/// Whether [`gemm_t`] has a kernel for this CPU (AVX2, FMA, F16C).
pub fn available() -> bool {
    super::qgemm::available()
}

/// `y[r·n + o] = Σ_j x[r·k + j] · w[o·k + j]` for `m` rows of `x`. Sizes that do not agree,
/// or a CPU without [`available`], are refused (a caller's bug, never user input).
pub fn gemm_t(
    w: Weights,
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) -> Result<(), String> {
    if w.len() != n * k {
        return Err(format!("gemm sizes: weight {} for ({n}, {k})", w.len()));
    }
    gemm(Source::Rows(w, k), n, k, x, m, as_uninit(y))
}

/// [`gemm_t`] for f32 weight rows `ld` values apart (a head of an attention cache, whose keys
/// sit among other heads'): row o holds `w[o·ld .. o·ld + k]`. Sizes that do not fit `w`, or
/// a CPU without [`available`], are refused.
pub fn gemm_t_strided(
    w: &[f32],
    ld: usize,
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) -> Result<(), String> {
    rows_fit(w.len(), n, k, ld)?;
    gemm(Source::Rows(Weights::F32(w), ld), n, k, x, m, as_uninit(y))
}

/// Whether `rows` rows of `width` values, `ld` apart, fit in `len` values without overlapping.
fn rows_fit(len: usize, rows: usize, width: usize, ld: usize) -> Result<(), String> {
    if rows > 0 && width > 0 && (ld < width || (rows - 1) * ld + width > len) {
        return Err(format!(
            "gemm sizes: weight {len} for {rows} rows of {width}, {ld} apart"
        ));
    }
    Ok(())
}

/// `y[r·n + o] = Σ_p x[r·k + p] · w[p·ld + o]`: `x` (m × k) times the f32 matrix `w`
/// (k × n, rows `ld` apart; an attention head's values), with [`gemm_t`]'s kernel and order of
/// sums. Sizes that do not fit `w`, or a CPU without [`available`], are refused.
pub fn gemm_nn(
    w: &[f32],
    ld: usize,
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) -> Result<(), String> {
    rows_fit(w.len(), k, n, ld)?;
    gemm(Source::Cols(w, ld), n, k, x, m, as_uninit(y))
}

/// [`gemm_t`] for weights packed at load ([`PackedDense`]): the same sums in the same order,
/// without packing the weights (f32) or only widening a contiguous block of them (f16/bf16).
pub fn gemm_packed(w: &PackedDense, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), String> {
    gemm(Source::Packed(w), w.n(), w.k(), x, m, as_uninit(y))
}

/// [`gemm_packed`] into memory not yet written (a fresh output's capacity, so that a prompt's
/// megabytes of output are not zeroed first on one thread while the others wait): every one
/// of the `m · n` values of `y` is written, each output stored on its first block of `k` (or
/// 0 where `k` is 0) before any addition reads it.
pub fn gemm_packed_uninit(
    w: &PackedDense,
    x: &[f32],
    m: usize,
    y: &mut [MaybeUninit<f32>],
) -> Result<(), String> {
    gemm(Source::Packed(w), w.n(), w.k(), x, m, y)
}

/// `y` seen as memory `gemm` writes: it only ever stores initialized f32 values into it.
fn as_uninit(y: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's size and alignment, and `gemm` writes only valid
    // f32 values through the view, so `y` stays initialized for its owner.
    unsafe { std::slice::from_raw_parts_mut(y.as_mut_ptr().cast(), y.len()) }
}

/// Where a product's weights come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Row-major, rows the given number of values apart, packed per call.
    Rows(Weights<'a>, usize),
    /// f32 stored transposed, value (o, p) at p·ld + o (ld given), packed per call.
    Cols(&'a [f32], usize),
    /// Packed at load, in the strips the kernel reads.
    Packed(&'a PackedDense),
}

fn gemm(
    w: Source,
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [MaybeUninit<f32>],
) -> Result<(), String> {
    if x.len() != m * k || y.len() != m * n {
        return Err(format!(
            "gemm sizes: ({n}, {k}) weight, x {} for {m} rows, y {}",
            x.len(),
            y.len()
        ));
    }
    if !available() {
        return Err("gemm_t needs AVX2, FMA and F16C".into());
    }
    if n == 0 || m == 0 {
        return Ok(());
    }
    if k == 0 {
        y.fill(MaybeUninit::new(0.0));
        return Ok(());
    }
    // x as panels: panel i, block b holds rows 6i..6i+6 (zero past m) for k in
    // b·KC..b·KC+kc, at (i·k + b·KC)·MR, value (p, r) at + p·MR + r. Written once, in
    // parallel, without zeroing the buffer first.
    let panels = m.div_ceil(MR);
    let len = panels * MR * k;
    let mut xp: Vec<f32> = Vec::with_capacity(len);
    {
        let out = SharedOut(xp.spare_capacity_mut().as_mut_ptr());
        super::parallel_for(panels, |range| {
            for i in range {
                // SAFETY: panel i alone is written here, the values i·MR·k..(i+1)·MR·k of
                // `xp`'s capacity (at least panels·MR·k), and each panel goes to one thread.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out.ptr().add(i * MR * k), MR * k) };
                pack_x(x, m, k, i * MR, dst);
            }
        });
    }
    // SAFETY: `pack_x` wrote all MR·k values of every panel (rows past m as zeros), i.e. the
    // first `len` values of the capacity.
    unsafe { xp.set_len(len) };
    // Outputs are written through this pointer only: stored at b0 = 0, read and added to
    // after, so nothing uninitialized is ever read.
    let out = SharedOut(y.as_mut_ptr().cast::<f32>());
    // Units of work: NC features × up to PB panels of x. Cutting the rows too gives a prompt's
    // narrow products (1024 features: 8 feature blocks) enough units that two threads finish
    // together; each output is still summed by one unit, block by block in order.
    let row_blocks = panels.div_ceil(PB);
    super::parallel_for(n.div_ceil(NC) * row_blocks, |units| {
        let mut wp = vec![0f32; NC * KC];
        let mut tile = [0f32; MR * NR];
        for u in units {
            let (u, rb) = (u / row_blocks, u % row_blocks);
            let my_panels = rb * PB..panels.min((rb + 1) * PB);
            let o0 = u * NC;
            let nc = NC.min(n - o0);
            let strips = nc.div_ceil(NR);
            for b0 in (0..k).step_by(KC) {
                let kc = KC.min(k - b0);
                match w {
                    Source::Rows(w, ld) => pack_w(w, ld, o0, nc, b0, kc, &mut wp),
                    Source::Cols(w, ld) => pack_cols(w, ld, o0, nc, b0, kc, &mut wp),
                    Source::Packed(p) if p.dtype() != candle_core::DType::F32 => {
                        for s in 0..strips {
                            let dst = &mut wp[s * NR * kc..(s + 1) * NR * kc];
                            p.widen_block(o0 / NR + s, b0, kc, dst);
                        }
                    }
                    Source::Packed(_) => {}
                }
                for i in my_panels.clone() {
                    let r0 = i * MR;
                    let rows = MR.min(m - r0);
                    let a = &xp[i * MR * k + b0 * MR..i * MR * k + (b0 + kc) * MR];
                    for s in 0..strips {
                        let c0 = o0 + s * NR;
                        let cols = NR.min(n - c0);
                        let b = match w {
                            Source::Rows(..) | Source::Cols(..) => {
                                &wp[s * NR * kc..(s + 1) * NR * kc]
                            }
                            Source::Packed(p) => match p.f32_block(o0 / NR + s, b0, kc) {
                                Some(b) => b,
                                None => &wp[s * NR * kc..(s + 1) * NR * kc],
                            },
                        };
                        if rows == MR && cols == NR {
                            // SAFETY: the kernel reads kc·MR values of `a` and kc·NR of `b`
                            // (their lengths) and writes (adds to, past the first block) the
                            // MR × NR block of `y` at (r0, c0) with row stride n: r0 + MR <= m
                            // and c0 + NR <= n, so it is inside `y`, in the columns and rows
                            // (panels) of unit (u, rb), which only this thread writes.
                            unsafe {
                                avx2::kernel(
                                    kc,
                                    a.as_ptr(),
                                    b.as_ptr(),
                                    out.ptr().add(r0 * n + c0),
                                    n,
                                    b0 > 0,
                                )
                            };
                            continue;
                        }
                        // SAFETY: as above, into `tile` (MR × NR, row stride NR).
                        unsafe {
                            avx2::kernel(kc, a.as_ptr(), b.as_ptr(), tile.as_mut_ptr(), NR, false)
                        };
                        for r in 0..rows {
                            for (c, v) in tile[r * NR..r * NR + cols].iter().enumerate() {
                                // SAFETY: r0 + r < m and c0 + c < n, so the index is inside
                                // `y` (m·n, checked above). Unit (u, rb) alone writes the
                                // columns o0..o0+nc of its panels' rows, and each unit goes to
                                // one thread.
                                unsafe {
                                    let p = out.ptr().add((r0 + r) * n + c0 + c);
                                    *p = if b0 == 0 { *v } else { *p + *v };
                                }
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

/// Packs rows r0..r0+MR of `x` (zeros past m) as `pack_x`'s layout for every block of `k`,
/// writing every value of `dst` (`MR · k`).
fn pack_x(x: &[f32], m: usize, k: usize, r0: usize, dst: &mut [MaybeUninit<f32>]) {
    let rows = MR.min(m - r0);
    for b0 in (0..k).step_by(KC) {
        let kc = KC.min(k - b0);
        let blk = &mut dst[b0 * MR..(b0 + kc) * MR];
        if rows == MR {
            // Written in order, MR values per step from MR rows read side by side.
            let row = |r: usize| &x[(r0 + r) * k + b0..(r0 + r) * k + b0 + kc];
            let (x0, x1, x2, x3, x4, x5) = (row(0), row(1), row(2), row(3), row(4), row(5));
            for (p, d) in blk.chunks_exact_mut(MR).enumerate() {
                d[0].write(x0[p]);
                d[1].write(x1[p]);
                d[2].write(x2[p]);
                d[3].write(x3[p]);
                d[4].write(x4[p]);
                d[5].write(x5[p]);
            }
            continue;
        }
        for r in 0..MR {
            if r < rows {
                let row = &x[(r0 + r) * k + b0..(r0 + r) * k + b0 + kc];
                for (p, v) in row.iter().enumerate() {
                    blk[p * MR + r].write(*v);
                }
            } else {
                for p in 0..kc {
                    blk[p * MR + r].write(0.0);
                }
            }
        }
    }
}

/// [`pack_w`] for weights stored transposed (value (o, p) at p·ld + o): each step p of a
/// strip is NR consecutive values of row b0 + p.
fn pack_cols(w: &[f32], ld: usize, o0: usize, nc: usize, b0: usize, kc: usize, dst: &mut [f32]) {
    for s in 0..nc.div_ceil(NR) {
        let strip = &mut dst[s * NR * kc..(s + 1) * NR * kc];
        let c0 = o0 + s * NR;
        let cols = NR.min(nc - s * NR);
        for (p, d) in strip.chunks_exact_mut(NR).enumerate() {
            let at = (b0 + p) * ld + c0;
            d[..cols].copy_from_slice(&w[at..at + cols]);
            d[cols..].fill(0.0);
        }
    }
}

/// Packs weight rows o0..o0+nc (row o at o·ld), values b0..b0+kc, as f32 strips of NR rows:
/// strip s at s·NR·kc, value (p, j) at + p·NR + j, zeros for rows past nc.
fn pack_w(w: Weights, ld: usize, o0: usize, nc: usize, b0: usize, kc: usize, dst: &mut [f32]) {
    let strips = nc.div_ceil(NR);
    for s in 0..strips {
        let strip = &mut dst[s * NR * kc..(s + 1) * NR * kc];
        let rows = NR.min(nc - s * NR);
        let mut done = 0;
        if rows == NR {
            // SAFETY: `available()` (checked by `gemm`) gives AVX2 and F16C; rows
            // o0 + s·NR .. + NR (< n) of `w`, `ld` apart, have values b0..b0 + kc (b0 + kc <= k):
            // `gemm_t` checked w.len() = n·k with ld = k, `gemm_t_strided` (n − 1)·ld + k <=
            // w.len(). `strip` holds NR·kc values.
            done = unsafe { avx2::pack_strip(w, ld, o0 + s * NR, b0, kc, strip) };
        } else {
            strip.fill(0.0);
        }
        if done == kc {
            continue;
        }
        for j in 0..rows {
            let at = (o0 + s * NR + j) * ld + b0;
            let strip = &mut strip[done * NR..];
            match w {
                Weights::F32(w) => {
                    for (p, v) in w[at + done..at + kc].iter().enumerate() {
                        strip[p * NR + j] = *v;
                    }
                }
                Weights::F16(w) => {
                    for (p, v) in w[at + done..at + kc].iter().enumerate() {
                        strip[p * NR + j] = v.to_f32();
                    }
                }
                Weights::BF16(w) => {
                    for (p, v) in w[at + done..at + kc].iter().enumerate() {
                        strip[p * NR + j] = v.to_f32();
                    }
                }
            }
        }
    }
}

mod avx2 {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// `c[r·ldc + j] (+)= Σ_p a[p·MR + r] · b[p·NR + j]` over p < kc, for r < MR, j < NR;
    /// added to what `c` holds when `add`, else stored.
    ///
    /// # Safety
    /// AVX2 and FMA are available ([`super::available`]); `a` holds kc·MR values, `b`
    /// kc·NR, and `c` the MR × NR block with row stride `ldc`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel(
        kc: usize,
        a: *const f32,
        b: *const f32,
        tile: *mut f32,
        ldc: usize,
        add: bool,
    ) {
        use super::{MR, NR};
        let mut c = [[_mm256_setzero_ps(); 2]; MR];
        let step = |c: &mut [[__m256; 2]; MR], a: *const f32, b: *const f32| {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r));
                cr[0] = _mm256_fmadd_ps(av, b0, cr[0]);
                cr[1] = _mm256_fmadd_ps(av, b1, cr[1]);
            }
        };
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc / 4 {
            step(&mut c, ap, bp);
            step(&mut c, ap.add(MR), bp.add(NR));
            step(&mut c, ap.add(2 * MR), bp.add(2 * NR));
            step(&mut c, ap.add(3 * MR), bp.add(3 * NR));
            ap = ap.add(4 * MR);
            bp = bp.add(4 * NR);
        }
        for _ in 0..kc % 4 {
            step(&mut c, ap, bp);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for (r, cr) in c.iter().enumerate() {
            let (p0, p1) = (tile.add(r * ldc), tile.add(r * ldc + 8));
            if add {
                _mm256_storeu_ps(p0, _mm256_add_ps(_mm256_loadu_ps(p0), cr[0]));
                _mm256_storeu_ps(p1, _mm256_add_ps(_mm256_loadu_ps(p1), cr[1]));
            } else {
                _mm256_storeu_ps(p0, cr[0]);
                _mm256_storeu_ps(p1, cr[1]);
            }
        }
    }

    /// Packs the first multiple of 8 of the kc values (from b0) of weight rows o..o+NR into
    /// `strip` as (p, j) at p·NR + j, eight by eight through an in-register transpose, widening
    /// f16/bf16. Returns how many values of each row it packed.
    ///
    /// # Safety
    /// AVX2 and F16C are available; rows o..o+NR of `w` (row stride k) have values
    /// b0..b0+kc, and `strip` holds NR·kc values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn pack_strip(
        w: super::Weights,
        k: usize,
        o: usize,
        b0: usize,
        kc: usize,
        strip: &mut [f32],
    ) -> usize {
        use super::{Weights, NR};
        let full = kc / 8 * 8;
        for half in 0..2 {
            let row0 = (o + half * 8) * k + b0;
            for p0 in (0..full).step_by(8) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (j, rj) in r.iter_mut().enumerate() {
                    let at = row0 + j * k + p0;
                    *rj = match w {
                        Weights::F32(w) => _mm256_loadu_ps(w[at..at + 8].as_ptr()),
                        Weights::F16(w) => _mm256_cvtph_ps(_mm_loadu_si128(
                            w[at..at + 8].as_ptr() as *const __m128i
                        )),
                        Weights::BF16(w) => {
                            let h = _mm_loadu_si128(w[at..at + 8].as_ptr() as *const __m128i);
                            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                        }
                    };
                }
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let cols = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (q, col) in cols.iter().enumerate() {
                    let at = (p0 + q) * NR + half * 8;
                    _mm256_storeu_ps(strip[at..at + 8].as_mut_ptr(), *col);
                }
            }
        }
        full
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn pack_strip(
        _: super::Weights,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [f32],
    ) -> usize {
        0
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn kernel(
        _: usize,
        _: *const f32,
        _: *const f32,
        _: *mut f32,
        _: usize,
        _: bool,
    ) {
        unreachable!("gemm_t refuses CPUs without AVX2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Sums in f64, so the kernel's f32 rounding is the only error.
    fn reference(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for o in 0..n {
                let s: f64 = (0..k)
                    .map(|j| x[r * k + j] as f64 * w[o * k + j] as f64)
                    .sum();
                y[r * n + o] = s as f32;
            }
        }
        y
    }

    #[test]
    fn matches_reference_on_odd_shapes_for_every_format() {
        if !available() {
            return;
        }
        // Partial row panels, partial feature strips and units, k below, at and past KC, and
        // rows past one unit's PB panels (200 rows: units of 16, 16 and 2 panels).
        let shapes = [
            (9, 1, 1),
            (13, 131, 67),
            (33, 257, 300),
            (70, 300, 520),
            (200, 131, 300),
        ];
        for &(m, n, k) in &shapes {
            let w = lcg(1 + n as u64, n * k);
            let x = lcg(2 + m as u64, m * k);
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let cases: [(Weights, Vec<f32>); 3] = [
                (Weights::F32(&w), w.clone()),
                (Weights::F16(&w16), w16.iter().map(|v| v.to_f32()).collect()),
                (Weights::BF16(&wb), wb.iter().map(|v| v.to_f32()).collect()),
            ];
            for (weights, widened) in cases {
                let want = reference(&widened, n, k, &x, m);
                let mut y = vec![f32::NAN; m * n];
                gemm_t(weights, n, k, &x, m, &mut y).unwrap();
                let tol = 1e-5 * (k as f32).sqrt() * 4.0;
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= tol,
                        "({m}, {n}, {k}) {weights:?}: y[{i}] = {a}, want {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn strided_and_transposed_weights_give_the_same_bits_as_contiguous_rows() {
        if !available() {
            return;
        }
        // Shapes of attention heads (k = 128 or a key count past KC) and odd ones.
        for &(m, n, k, pad) in &[(9, 1, 1, 3), (64, 37, 128, 128), (13, 131, 300, 5)] {
            let w = lcg(5 + n as u64, n * k);
            let x = lcg(6 + m as u64, m * k);
            let mut want = vec![f32::NAN; m * n];
            gemm_t(Weights::F32(&w), n, k, &x, m, &mut want).unwrap();
            // The rows `pad` values apart, with NaN between them: none may be read.
            let ld = k + pad;
            let mut strided = vec![f32::NAN; (n - 1) * ld + k];
            for o in 0..n {
                strided[o * ld..o * ld + k].copy_from_slice(&w[o * k..(o + 1) * k]);
            }
            let mut y = vec![f32::NAN; m * n];
            gemm_t_strided(&strided, ld, n, k, &x, m, &mut y).unwrap();
            assert_eq!(bits(&y), bits(&want), "strided ({m}, {n}, {k})");
            // The same weight stored transposed, rows of n values `pad` apart.
            let ld = n + pad;
            let mut cols = vec![f32::NAN; (k - 1) * ld + n];
            for o in 0..n {
                for p in 0..k {
                    cols[p * ld + o] = w[o * k + p];
                }
            }
            let mut y = vec![f32::NAN; m * n];
            gemm_nn(&cols, ld, n, k, &x, m, &mut y).unwrap();
            assert_eq!(bits(&y), bits(&want), "transposed ({m}, {n}, {k})");
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn refuses_mismatched_sizes() {
        let w = vec![0f32; 6];
        let mut y = vec![0f32; 4];
        assert!(gemm_t(Weights::F32(&w), 2, 3, &[0.0; 5], 2, &mut y).is_err());
        // Rows past the end of the slice, and rows closer together than their length.
        let mut y = vec![0f32; 6];
        assert!(gemm_t_strided(&w, 4, 2, 3, &[0.0; 9], 3, &mut y).is_err());
        assert!(gemm_t_strided(&w, 2, 2, 3, &[0.0; 9], 3, &mut y).is_err());
        assert!(gemm_nn(&w, 4, 2, 3, &[0.0; 9], 3, &mut y).is_err());
        assert!(gemm_nn(&w, 1, 2, 2, &[0.0; 6], 3, &mut y).is_err());
        assert!(gemm_t_strided(&w, 4, 1, 3, &[0.0; 9], 3, &mut y[..3]).is_ok());
    }
}
