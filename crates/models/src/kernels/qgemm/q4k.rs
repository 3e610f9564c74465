//! Q4_K weights times many rows of `x`: [`super`]'s tile kernel for Q4_K's 256-weight
//! super-blocks, in place of candle's repacked Q4_K tiles (which, like its Q8_0 ones, keep a
//! second copy of every weight).
//!
//! A Q4_K super-block holds eight sub-blocks of 32 four-bit values `q` (0 to 15), each with a
//! 6-bit scale `sc` and min `m`: `w = d · sc · q − dmin · m`. `x` is quantized to Q8_K
//! (int8, one f32 scale per 256, and its sums per 32), as llama.cpp and
//! [`super::super::qmatvec`] do, so that per super-block
//! `Σ w·x = dx · (d · Σ_j sc_j · Σ q·xq − dmin · Σ_j m_j · Σ_j xq)`.
//!
//! Eight weight rows are packed per call, nibbles unpacked to bytes, in the layout of the
//! Q8_0 panels: per sub-block and 4-byte step one vector holds four values of each of the
//! eight rows. The values are unsigned, so `maddubs` takes them as they are against x's
//! signed bytes (no sign trick), and a sub-block's eight steps add up in 16 bits without
//! overflow (at most 8 · 2 · 15 · 127 = 30,480); one `madd` by the rows' scales then widens
//! and scales them at once. The mins term is one more `madd` per pair of sub-blocks.

use super::{for_each_tile, ready, PANEL};
use crate::kernels::matvec::SharedOut;
use crate::kernels::qmatvec::{
    f16_at, quantize_row, scales_mins, QFormat, QuantizedRow, Q4_K_BYTES, QK_K,
};

/// Bytes of one packed super-block: 8 sub-blocks × 8 steps × 32 bytes.
const PACKED_SB: usize = 8 * 8 * 32;

/// `x`'s rows quantized to Q8_K by [`quantize_row`] (values, one scale per super-block, and
/// the sum of each 32-value sub-block as i16), on the thread pool when `x` is large.
fn quantize_x(x: &[f32], k: usize) -> Vec<QuantizedRow> {
    let rows = x.len() / k;
    let mut out: Vec<QuantizedRow> = (0..rows)
        .map(|_| QuantizedRow {
            d: Vec::new(),
            q: Vec::new(),
            sums: Vec::new(),
        })
        .collect();
    let p = SharedOut(out.as_mut_ptr());
    let body = |range: std::ops::Range<usize>| {
        for r in range {
            // SAFETY: r < rows indexes inside `out`; each row is in one range and each range
            // goes to one thread, and `out` outlives the loop. The old (empty) value is
            // dropped by the assignment.
            unsafe { *p.ptr().add(r) = quantize_row(&x[r * k..(r + 1) * k], QK_K) };
        }
    };
    if x.len() < 1 << 15 {
        body(0..rows);
    } else {
        crate::kernels::parallel_for(rows, body);
    }
    out
}

/// One panel: `quants[(sb·8 + j)·256 + s·32 + i·4 + t]` value `4s + t` of sub-block `j` of
/// row `i`; `sc[(sb·8 + j)·16 + 2i + h]` (both `h`) that sub-block's scale (for `madd`); `mins[(sb·4 +
/// t)·16 + 2i + h]` the min of sub-block `2t + h`; `d`, `dmin` per super-block and row.
struct Panel {
    quants: Vec<u8>,
    sc: Vec<i16>,
    mins: Vec<i16>,
    d: Vec<f32>,
    dmin: Vec<f32>,
}

impl Panel {
    fn new(nsb: usize) -> Panel {
        Panel {
            quants: vec![0; nsb * PACKED_SB],
            sc: vec![0; nsb * 8 * 16],
            mins: vec![0; nsb * 4 * 16],
            d: vec![0.0; nsb * PANEL],
            dmin: vec![0.0; nsb * PANEL],
        }
    }
}

/// The scales, mins and super-block factors of rows `o0..o0+m` (the rest zero).
fn pack_scales(w: &[u8], row_bytes: usize, o0: usize, m: usize, p: &mut Panel) {
    let nsb = row_bytes / Q4_K_BYTES;
    for i in 0..PANEL {
        for sb in 0..nsb {
            let blk = (i < m).then(|| {
                let at = (o0 + i) * row_bytes + sb * Q4_K_BYTES;
                &w[at..at + Q4_K_BYTES]
            });
            p.d[sb * PANEL + i] = blk.map_or(0.0, |b| f16_at(b, 0));
            p.dmin[sb * PANEL + i] = blk.map_or(0.0, |b| f16_at(b, 2));
            let (scs, mns) = blk.map_or((0, 0), |b| scales_mins(&b[4..16]));
            for j in 0..8 {
                let (sc, mn) = ((scs >> (8 * j)) as u8 as i16, (mns >> (8 * j)) as u8 as i16);
                p.sc[(sb * 8 + j) * 16 + 2 * i] = sc;
                p.sc[(sb * 8 + j) * 16 + 2 * i + 1] = sc;
                p.mins[(sb * 4 + j / 2) * 16 + 2 * i + j % 2] = mn;
            }
        }
    }
}

/// The quants of rows `o0..o0+m` (the rest zero), one byte at a time: the reference the
/// SIMD packing is tested against, and the packing of a last, partial panel.
fn pack_quants(w: &[u8], row_bytes: usize, o0: usize, m: usize, quants: &mut [u8]) {
    let nsb = row_bytes / Q4_K_BYTES;
    for i in 0..PANEL {
        for sb in 0..nsb {
            for j in 0..8 {
                for v in 0..32 {
                    let q = if i < m {
                        let b = (o0 + i) * row_bytes + sb * Q4_K_BYTES + 16 + (j / 2) * 32 + v;
                        (w[b] >> (4 * (j % 2))) & 0x0F
                    } else {
                        0
                    };
                    quants[(sb * 8 + j) * 256 + (v / 4) * 32 + i * 4 + v % 4] = q;
                }
            }
        }
    }
}

/// `y[r·n + o] = Σ_j x[r·k + j] · w[o, j]` for Q4_K weights `w` (`n` rows of `k / 256`
/// GGUF super-blocks). `k` must be a multiple of 256; sizes that disagree, or a CPU without
/// AVX2 (see [`super::available`]), are refused.
pub fn q4k_gemm(
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<(), String> {
    if !ready("q4k_gemm", QFormat::Q4K, w, n, k, x, rows, y)? {
        return Ok(());
    }
    let nsb = k / QK_K;
    let row_bytes = nsb * Q4_K_BYTES;
    let xr = quantize_x(x, k);
    for_each_tile(
        n,
        rows,
        (n * k).saturating_mul(rows),
        y,
        || Panel::new(nsb),
        |o0, m, p| {
            pack_scales(w, row_bytes, o0, m, p);
            #[cfg(target_arch = "x86_64")]
            if m == PANEL {
                avx2::pack_quants(w, row_bytes, o0, &mut p.quants);
                return;
            }
            pack_quants(w, row_bytes, o0, m, &mut p.quants);
        },
        |p, r0, t, out| {
            #[cfg(target_arch = "x86_64")]
            avx2::tile(p, &xr[r0..r0 + t], nsb, out);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (p, r0, t, out);
        },
    );
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// [`super::pack_quants`] for eight whole rows: each 32-byte chunk's low and high nibbles
    /// (sub-blocks `2c` and `2c + 1`) split in registers, then the eight rows transposed.
    pub fn pack_quants(w: &[u8], row_bytes: usize, o0: usize, quants: &mut [u8]) {
        let nsb = row_bytes / Q4_K_BYTES;
        assert!(
            w.len() >= (o0 + PANEL) * row_bytes
                && quants.len() >= nsb * PACKED_SB
                && crate::kernels::qgemm::available(),
            "q4_k panel out of bounds"
        );
        // SAFETY: `available()` found avx2; the assert keeps the eight rows' `nsb` blocks
        // (chunks read at +16 .. +144 of each) and the packed super-blocks written in bounds.
        unsafe {
            pack_quants_avx2(
                w.as_ptr().add(o0 * row_bytes),
                row_bytes,
                nsb,
                quants.as_mut_ptr(),
            )
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn pack_quants_avx2(w: *const u8, row_bytes: usize, nsb: usize, out: *mut u8) {
        let low = _mm256_set1_epi8(0x0F);
        for sb in 0..nsb {
            for c in 0..4 {
                let v: [__m256i; 8] = std::array::from_fn(|i| {
                    _mm256_loadu_si256(w.add(i * row_bytes + sb * Q4_K_BYTES + 16 + c * 32).cast())
                });
                let lo = v.map(|v| _mm256_and_si256(v, low));
                let hi = v.map(|v| _mm256_and_si256(_mm256_srli_epi16::<4>(v), low));
                let at = out.add((sb * 8 + 2 * c) * 256);
                crate::kernels::qgemm::avx2::store_transposed(lo, at);
                crate::kernels::qgemm::avx2::store_transposed(hi, at.add(256));
            }
        }
    }

    /// The x rows `xr` (1 to 4) against one packed panel.
    pub fn tile(p: &Panel, xr: &[QuantizedRow], nsb: usize, out: &mut [[f32; PANEL]; 4]) {
        let t = xr.len();
        assert!(
            (1..=4).contains(&t)
                && p.quants.len() >= nsb * PACKED_SB
                && p.sc.len() >= nsb * 128
                && p.mins.len() >= nsb * 64
                && p.d.len() >= nsb * PANEL
                && p.dmin.len() >= nsb * PANEL
                && xr.iter().all(|x| x.q.len() >= nsb * QK_K
                    && x.d.len() >= nsb
                    && x.sums.len() >= nsb * 8)
                && crate::kernels::qgemm::available(),
            "q4_k tile out of bounds"
        );
        let xs: [&QuantizedRow; 4] = std::array::from_fn(|j| &xr[j.min(t - 1)]);
        // SAFETY: `available()` found avx2, fma and f16c; the assert keeps the `nsb` packed
        // super-blocks and the `nsb` super-blocks of each x row read in bounds (rows past `t`
        // repeat the last one and are not stored).
        unsafe {
            match t {
                1 => tile_n::<1>(p, xs, nsb, out),
                2 => tile_n::<2>(p, xs, nsb, out),
                3 => tile_n::<3>(p, xs, nsb, out),
                _ => tile_n::<4>(p, xs, nsb, out),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_n<const R: usize>(
        p: &Panel,
        xs: [&QuantizedRow; 4],
        nsb: usize,
        out: &mut [[f32; PANEL]; 4],
    ) {
        let quants = p.quants.as_ptr();
        let xq: [*const i8; 4] = std::array::from_fn(|r| xs[r].q.as_ptr());
        let mut acc = [_mm256_setzero_ps(); R];
        for sb in 0..nsb {
            let mut isum = [_mm256_setzero_si256(); R];
            for j in 0..8 {
                let mut a16 = [_mm256_setzero_si256(); R];
                let qb = quants.add((sb * 8 + j) * 256);
                for s in 0..8 {
                    let wv = _mm256_loadu_si256(qb.add(s * 32).cast());
                    for r in 0..R {
                        let at = xq[r].add(sb * QK_K + j * 32 + s * 4);
                        let xv = _mm256_set1_epi32(at.cast::<i32>().read_unaligned());
                        a16[r] = _mm256_add_epi16(a16[r], _mm256_maddubs_epi16(wv, xv));
                    }
                }
                let sc = _mm256_loadu_si256(p.sc.as_ptr().add((sb * 8 + j) * 16).cast());
                for r in 0..R {
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(a16[r], sc));
                }
            }
            finish_super_block(p, &xs, sb, &isum, &mut acc);
        }
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }

    /// A super-block's end: the mins term (one `madd` per pair of
    /// sub-blocks against x's sums) and both terms scaled into the f32 accumulators.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish_super_block<const R: usize>(
        p: &Panel,
        xs: &[&QuantizedRow; 4],
        sb: usize,
        isum: &[__m256i; R],
        acc: &mut [__m256; R],
    ) {
        let mut msum = [_mm256_setzero_si256(); R];
        for t in 0..4 {
            let mn = _mm256_loadu_si256(p.mins.as_ptr().add((sb * 4 + t) * 16).cast());
            for r in 0..R {
                // Sums 2t and 2t + 1 of x's eight in this super-block, as the two i16
                // halves of one i32 (little-endian: 2t in the low half), against mins 2t and
                // 2t + 1 in `madd`'s pairs.
                let pair = xs[r].sums.as_ptr().add(sb * 8 + 2 * t).cast::<i32>();
                let xp = _mm256_set1_epi32(pair.read_unaligned());
                msum[r] = _mm256_add_epi32(msum[r], _mm256_madd_epi16(mn, xp));
            }
        }
        let d = _mm256_loadu_ps(p.d.as_ptr().add(sb * PANEL));
        let dmin = _mm256_loadu_ps(p.dmin.as_ptr().add(sb * PANEL));
        for r in 0..R {
            let dx = _mm256_set1_ps(*xs[r].d.get_unchecked(sb));
            acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(isum[r]), acc[r]);
            acc[r] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(msum[r]), acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{self, reference, x_rows};

    fn weights(seed: u64, n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        test_data::weights(seed, n, k, QFormat::Q4K)
    }

    #[test]
    fn matches_the_scalar_reference_on_odd_shapes() {
        if !super::super::available() {
            return;
        }
        // Partial panels and row tiles, one super-block and several, and sizes for the pool.
        for &(n, sbs, rows) in &[(1, 1, 1), (7, 2, 3), (9, 1, 5), (37, 3, 13), (70, 8, 40)] {
            let k = sbs * QK_K;
            let (w, deq) = weights(n as u64 + 50, n, k);
            let x = x_rows(rows as u64 + 51, rows, k);
            let mut y = vec![f32::NAN; rows * n];
            q4k_gemm(&w, n, k, &x, rows, &mut y).unwrap();
            let want = reference(&deq, n, k, &x, rows, QK_K);
            test_data::assert_close(&y, &want, &format!("n={n} k={k} rows={rows}"));
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_whatever_shares_its_call() {
        if !super::super::available() {
            return;
        }
        let (n, k, rows) = (21, 2 * QK_K, 7);
        let (w, _) = weights(60, n, k);
        let x = x_rows(61, rows, k);
        test_data::assert_rows_alone_match(n, k, &x, |x, rows, y| {
            q4k_gemm(&w, n, k, x, rows, y).unwrap()
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_register_unpacking_packs_like_the_scalar_code() {
        if !super::super::available() {
            return;
        }
        let (n, k) = (19, 2 * QK_K);
        let (w, _) = weights(62, n, k);
        let row_bytes = 2 * Q4_K_BYTES;
        for o0 in [0, 5, 11] {
            let mut a = vec![0u8; 2 * PACKED_SB];
            let mut b = vec![1u8; 2 * PACKED_SB];
            pack_quants(&w, row_bytes, o0, PANEL, &mut a);
            avx2::pack_quants(&w, row_bytes, o0, &mut b);
            assert_eq!(a, b, "panel from row {o0}");
        }
    }

    #[test]
    fn refuses_sizes_that_disagree() {
        let w = vec![0u8; 2 * Q4_K_BYTES];
        let mut y = vec![0f32; 2];
        assert!(q4k_gemm(&w, 2, 255, &[0.0; 255], 1, &mut y).is_err());
        assert!(q4k_gemm(&w, 3, 256, &[0.0; 256], 1, &mut y).is_err());
        assert!(q4k_gemm(&w, 2, 256, &[0.0; 256], 1, &mut y).is_ok());
    }
}
