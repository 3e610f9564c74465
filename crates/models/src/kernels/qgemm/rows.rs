//! Q8_0 weights times a few rows of `x` (a decode step of up to [`MAX_ROWS`] sequences): the
//! tile kernel's arithmetic, fed straight from the GGUF blocks.
//!
//! [`super::q8_0_gemm`] packs each panel of eight weight rows into a buffer and then runs its
//! x rows over it four at a time: for many rows the packing is paid once for all of them, but
//! for a few it is not repaid (at eight rows the tile took 1.0-1.2x this kernel's time in
//! `qmm_rows`, BENCHMARKS.md "Q8_0 decode steps of 5 to 8 sequences"). Here each block of the
//! panel's eight rows is loaded and transposed in registers (what `pack_blocks` does before
//! storing) and met at once by every x row of the call, so each weight byte is read from
//! memory once and touched by one pass; the integer products are the AVX2 tile kernel's (the
//! sign trick: a sign, a `maddubs`, a `madd` and an add per x row and 4-byte step).
//!
//! For CPUs without AVX-512 VNNI (Zen 3, the machines this project measures on). Where VNNI is
//! present [`super::q8_0_gemm`] takes these rows with its `vpdpbusd` kernel instead: a VNNI
//! variant of this one could not be tested on those machines, so none is shipped.
//!
//! Every output is summed exactly as the tile kernel sums it: each block's exact integer sum,
//! converted to f32, times (weight scale × x scale), accumulated block after block by one
//! `fma`. So the bits are the tile kernel's, whatever the number of rows and threads: a
//! sequence gets the same answer alone, beside seven others, or in a prompt-sized step.

use super::{quantize_rows, ready, PANEL};
use crate::kernels::matvec::SharedOut;
use crate::kernels::qmatvec::{QFormat, Q8_0_BLOCK};

/// Most rows of `x` one call takes (one accumulator per x row and weight row in registers).
pub const MAX_ROWS: usize = 8;

/// `y[r·n + o] = Σ_j x[r·k + j] · w[o, j]` for Q8_0 weights `w` (`n` rows of `k / 32` GGUF
/// blocks) and at most [`MAX_ROWS`] rows of `x`; the same bits as [`super::q8_0_gemm`]. Sizes
/// that disagree, more rows, or a CPU without AVX2 (see [`super::available`]) are refused. On
/// a CPU with AVX-512 VNNI it runs the AVX2 arithmetic all the same.
pub fn q8_0_rows(
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<(), String> {
    if rows > MAX_ROWS {
        return Err(format!(
            "q8_0_rows takes at most {MAX_ROWS} rows, not {rows}"
        ));
    }
    if ready("q8_0_rows", QFormat::Q8_0, w, n, k, x, rows, y)? {
        run(w, n, k, x, rows, y);
    }
    Ok(())
}

/// [`q8_0_rows`] past its checks.
fn run(w: &[u8], n: usize, k: usize, x: &[f32], rows: usize, y: &mut [f32]) {
    let nb = k / Q8_0_BLOCK;
    let xq = quantize_rows(x, false);
    let out = SharedOut(y.as_mut_ptr());
    let body = |range: std::ops::Range<usize>| {
        for p in range {
            let o0 = p * PANEL;
            let m = (n - o0).min(PANEL);
            let mut vals = [[0f32; PANEL]; MAX_ROWS];
            #[cfg(target_arch = "x86_64")]
            avx2::panel(w, nb, o0, m, &xq.q, &xq.d, rows, &mut vals);
            for (r, v) in vals.iter().take(rows).enumerate() {
                // SAFETY: row r < rows and outputs o0..o0+m (o0 + m ≤ n) index inside `y`
                // (length rows·n, checked by `ready`); panel p alone writes outputs o0..o0+m
                // and each panel goes to one thread, so writes never alias.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out.ptr().add(r * n + o0), m) };
            }
        }
    };
    let panels = n.div_ceil(PANEL);
    if (n * k).saturating_mul(rows) < 1 << 18 {
        body(0..panels);
    } else {
        crate::kernels::parallel_for(panels, body);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::avx2::transpose;
    use super::*;
    use crate::kernels::qmatvec::Q8_0_BYTES;
    use std::arch::x86_64::*;

    /// x rows `0..rows` (quantized: values `xq`, scales `xd`) against weight rows `o0..o0+m`
    /// of `w` (`nb` blocks each): `out[r][i]` is x row `r` times weight row `o0 + i`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn panel(
        w: &[u8],
        nb: usize,
        o0: usize,
        m: usize,
        xq: &[i8],
        xd: &[f32],
        rows: usize,
        out: &mut [[f32; PANEL]; MAX_ROWS],
    ) {
        let (k, row_bytes) = (nb * Q8_0_BLOCK, nb * Q8_0_BYTES);
        assert!(
            (1..=PANEL).contains(&m)
                && (1..=MAX_ROWS).contains(&rows)
                && w.len() >= (o0 + m) * row_bytes
                && xq.len() >= rows * k
                && xd.len() >= rows * nb
                && super::super::available(),
            "q8_0 rows out of bounds"
        );
        // Weight rows past `m` repeat the last one (their lanes are not stored), x rows past
        // `rows` are not computed.
        let wr: [*const u8; PANEL] =
            std::array::from_fn(|i| w[(o0 + i.min(m - 1)) * row_bytes..].as_ptr());
        let xs: [*const i8; MAX_ROWS] = std::array::from_fn(|r| xq[r.min(rows - 1) * k..].as_ptr());
        let ds: [*const f32; MAX_ROWS] =
            std::array::from_fn(|r| xd[r.min(rows - 1) * nb..].as_ptr());
        // SAFETY: `available()` found avx2, fma and f16c; the assert keeps the `nb` blocks of
        // the eight weight rows and of the `rows` x rows, and their scales, in bounds.
        unsafe {
            match rows {
                1 => rows_avx2::<1>(wr, nb, xs, ds, out),
                2 => rows_avx2::<2>(wr, nb, xs, ds, out),
                3 => rows_avx2::<3>(wr, nb, xs, ds, out),
                4 => rows_avx2::<4>(wr, nb, xs, ds, out),
                5 => rows_avx2::<5>(wr, nb, xs, ds, out),
                6 => rows_avx2::<6>(wr, nb, xs, ds, out),
                7 => rows_avx2::<7>(wr, nb, xs, ds, out),
                _ => rows_avx2::<8>(wr, nb, xs, ds, out),
            }
        }
    }

    /// The eight weight rows' block `b`: its values transposed (vector `s` holds bytes
    /// `4s..4s+4` of each row, row `i` in lane `i`) and its eight scales widened to f32.
    /// `pack_blocks` does the same and stores it; written there as a call to this, the tile
    /// kernel ran 1.2-1.6x slower in `qmm_rows` (the compiler kept the call, returning the
    /// eight vectors through memory), so the loads stay written out in both.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn block(wr: &[*const u8; PANEL], b: usize) -> ([__m256i; 8], __m256) {
        let at = b * Q8_0_BYTES;
        let d = |i: usize| wr[i].add(at).cast::<i16>().read_unaligned();
        let bits = _mm_set_epi16(d(7), d(6), d(5), d(4), d(3), d(2), d(1), d(0));
        let r: [__m256i; 8] = std::array::from_fn(|i| _mm256_loadu_si256(wr[i].add(at + 2).cast()));
        (transpose(r), _mm256_cvtph_ps(bits))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_avx2<const R: usize>(
        wr: [*const u8; PANEL],
        nb: usize,
        xs: [*const i8; MAX_ROWS],
        ds: [*const f32; MAX_ROWS],
        out: &mut [[f32; PANEL]; MAX_ROWS],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let (t, dw) = block(&wr, b);
            let mut isum = [_mm256_setzero_si256(); R];
            for (s, &wv) in t.iter().enumerate() {
                // |w| as unsigned bytes, w's sign moved onto x (as the tile kernel does).
                let aw = _mm256_sign_epi8(wv, wv);
                for r in 0..R {
                    let x4 = xs[r]
                        .add(b * Q8_0_BLOCK + 4 * s)
                        .cast::<i32>()
                        .read_unaligned();
                    let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_set1_epi32(x4), wv));
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(p16, ones));
                }
            }
            // Block b's scaled sums, added as the tile kernels add them.
            for r in 0..R {
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(*ds[r].add(b)));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), d, acc[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{self, x_rows};

    #[test]
    fn gives_the_tile_kernels_bits_on_odd_shapes() {
        if !super::super::available() {
            return;
        }
        // With `minus_128`, values of -128 (GGUF allows them; llama.cpp never writes them):
        // the sign trick takes them as |w| = 128, as the tile kernel does (whose own test
        // checks that against the exact sums).
        for &(n, blocks, rows, minus_128) in &[
            (1, 1, 1, false),
            (7, 2, 3, false),
            (8, 1, 8, false),
            (9, 3, 5, false),
            (9, 2, 3, true),
            (37, 5, 2, false),
            (130, 4, 7, true),
            (300, 24, 8, false),
            (1030, 64, 6, false), // large enough for the thread pool
        ] {
            let k = blocks * Q8_0_BLOCK;
            let (mut w, _) = test_data::weights(n as u64 * 5 + 2, n, k, QFormat::Q8_0);
            if minus_128 {
                for blk in w.chunks_exact_mut(34) {
                    blk[2] = 0x80;
                    blk[33] = 0x80;
                }
            }
            let x = x_rows(rows as u64 + 21, rows, k);
            let mut want = vec![f32::NAN; rows * n];
            super::super::gemm(&w, n, k, &x, rows, &mut want, false);
            let mut y = vec![f32::NAN; rows * n];
            run(&w, n, k, &x, rows, &mut y);
            let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "n={n} k={k} rows={rows}: not the tile kernel's bits");
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_whatever_shares_its_call() {
        if !super::super::available() {
            return;
        }
        let (n, k, rows) = (70, 256, 8);
        let (w, _) = test_data::weights(3, n, k, QFormat::Q8_0);
        let x = x_rows(4, rows, k);
        test_data::assert_rows_alone_match(n, k, &x, |x, rows, y| {
            q8_0_rows(&w, n, k, x, rows, y).unwrap()
        });
    }

    #[test]
    fn refuses_more_rows_and_sizes_that_disagree() {
        let (w, _) = test_data::weights(1, 8, 32, QFormat::Q8_0);
        let x = vec![0.5f32; 9 * 32];
        let mut y = vec![0f32; 9 * 8];
        assert!(q8_0_rows(&w, 8, 32, &x, 9, &mut y).is_err());
        assert!(q8_0_rows(&w, 8, 64, &x[..64], 1, &mut y[..8]).is_err());
    }
}
