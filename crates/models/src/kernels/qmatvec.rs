//! Matrix-vector products against GGUF-quantized weights (Q8_0, Q4_K) for a few rows of `x`,
//! as llama.cpp computes them: `x` is quantized to int8 blocks once per call (Q8_0 blocks of
//! 32 for Q8_0 weights, Q8_K blocks of 256 with their 32-value sums for Q4_K), and each weight
//! block meets its `x` block in integer arithmetic, scaled to f32 once per block.
//!
//! The weights are read in their GGUF byte layout, straight from candle's `QTensor` storage:
//! - Q8_0 (34 bytes per 32 weights): `d: f16`, then 32 `i8`; `w = d · q`.
//! - Q4_K (144 bytes per 256 weights): `d: f16`, `dmin: f16`, 12 bytes packing eight 6-bit
//!   scales and mins, then 128 bytes of 4-bit values; sub-block `j` (32 weights) has
//!   `w = d · sc_j · q − dmin · m_j`. The 32-byte chunk `c` holds sub-block `2c` in its low
//!   nibbles and `2c + 1` in its high ones.
//!
//! Like [`super::matvec`], four output rows share each pass over `x`, output rows are shared
//! out over the thread pool, and every output is summed in one fixed order.

use half::f16;

pub const Q8_0_BLOCK: usize = 32;
pub const Q8_0_BYTES: usize = 34;
pub const QK_K: usize = 256;
pub const Q4_K_BYTES: usize = 144;

/// The quantized formats these kernels read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QFormat {
    Q8_0,
    Q4K,
}

impl QFormat {
    pub fn block(self) -> usize {
        match self {
            QFormat::Q8_0 => Q8_0_BLOCK,
            QFormat::Q4K => QK_K,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QFormat::Q8_0 => Q8_0_BYTES,
            QFormat::Q4K => Q4_K_BYTES,
        }
    }
}

/// `x` quantized to int8 in blocks of `block`: `d[b]` the scale of block `b`, `q` the values,
/// `sums[b·(block/32) + i]` the sum of its `i`-th 32 values, the span of one Q4_K sub-block
/// (Q4_K's mins need them; at most 32 · 127 in size, so an i16 holds it).
#[derive(Debug, Clone)]
pub struct QuantizedRow {
    pub d: Vec<f32>,
    pub q: Vec<i8>,
    pub sums: Vec<i16>,
}

/// Symmetric int8 quantization of `x` in blocks of `block` (its length a multiple of it), as
/// GGML's Q8_0 (`block` 32) and Q8_K (`block` 256) do it.
pub fn quantize_row(x: &[f32], block: usize) -> QuantizedRow {
    let nb = x.len() / block;
    let mut d = Vec::with_capacity(nb);
    let mut q = vec![0i8; nb * block];
    let mut sums = Vec::with_capacity(x.len() / 32);
    for (blk, qb) in x.chunks_exact(block).zip(q.chunks_exact_mut(block)) {
        d.push(quantize_block(blk, qb));
        for g in qb.chunks_exact(32) {
            sums.push(g.iter().map(|&v| v as i16).sum());
        }
    }
    QuantizedRow { d, q, sums }
}

/// One block of [`quantize_row`]: its values into `q` (same length), its scale returned.
/// Values are rounded to nearest, ties to even, as llama.cpp's AVX2 quantizer
/// (`_mm256_round_ps`) does, so that a SIMD version computes the same bytes
/// (`qgemm`'s, tested against this one).
pub fn quantize_block(blk: &[f32], q: &mut [i8]) -> f32 {
    let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (o, v) in q.iter_mut().zip(blk) {
        *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    // GGML's Q8_0 block (the type llama.cpp and candle quantize x to for Q8_0 weights) stores
    // its scale as f16, Q8_K as f32: keep the same numbers they do.
    if blk.len() == Q8_0_BLOCK {
        f16::from_f32(scale).to_f32()
    } else {
        scale
    }
}

/// All eight of Q4_K's 6-bit scales and mins at once (the 12 bytes of `s`): scale `j` in byte
/// `j` of the first word, min `j` in byte `j` of the second, unpacked with whole-word masks as
/// llama.cpp does ([`scale_min_k4`] one at a time gives the same values). Always inlined: a
/// call from a SIMD loop makes the compiler spill every vector register around it (the Q4_K
/// row kernel ran at 16-21 GB/s with the call, 23-26 GB/s without, on a 6144 × 2048 weight).
#[inline(always)]
pub(crate) fn scales_mins(s: &[u8]) -> (u64, u64) {
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    const M1: u32 = 0x3f3f_3f3f;
    const M2: u32 = 0x0f0f_0f0f;
    const M3: u32 = 0x0303_0303;
    // Sub-blocks 0-3: the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); 4-7: the nibbles
    // of bytes 8-11 with the top 2 bits of bytes 0-3 / 4-7 above them.
    let sc_hi = (u2 & M2) | (((u0 >> 6) & M3) << 4);
    let mn_hi = ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4);
    let sc = (u0 & M1) as u64 | ((sc_hi as u64) << 32);
    let mn = (u1 & M1) as u64 | ((mn_hi as u64) << 32);
    (sc, mn)
}

/// Q4_K's packed 6-bit scale and min of sub-block `j` (0..8).
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The f16 stored little-endian at `b[at..at + 2]`, widened.
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The dot products of one quantized `x` row with the `m` (1 to 4) weight rows from `o0`.
type QDot4 = fn(QFormat, &[u8], usize, usize, usize, &QuantizedRow) -> [f32; 4];

/// The size checks of [`qmatvec`] and the tile kernels of [`super::qgemm`] (`what` names the
/// caller):
/// `k` a multiple of the block, `w` `n` rows of `k / block` blocks, `x` `rows × k`, `y`
/// `rows × n`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_sizes(
    what: &str,
    fmt: QFormat,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &[f32],
) -> Result<(), String> {
    if !k.is_multiple_of(fmt.block())
        || w.len() != n * (k / fmt.block()) * fmt.block_bytes()
        || x.len() != rows * k
        || y.len() != rows * n
    {
        return Err(format!(
            "{what} sizes: {fmt:?} weight {} bytes for ({n}, {k}), x {} for {rows} rows, y {}",
            w.len(),
            x.len(),
            y.len()
        ));
    }
    Ok(())
}

/// `y[r·n + o] = Σ_j x[r·k + j] · w[o, j]` for quantized `w` (`n` rows of `k / block` blocks,
/// GGUF bytes). `k` must be a multiple of the format's block; sizes that disagree are refused.
pub fn qmatvec(
    fmt: QFormat,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<(), String> {
    let block = fmt.block();
    check_sizes("qmatvec", fmt, w, n, k, x, rows, y)?;
    if n == 0 || rows == 0 {
        return Ok(());
    }
    let xq: Vec<QuantizedRow> = x.chunks_exact(k).map(|r| quantize_row(r, block)).collect();
    let dot = qdot4_kernel();
    let multi = if rows > 1 { rows_kernel(fmt) } else { None };
    let out = super::matvec::SharedOut(y.as_mut_ptr());
    let row_bytes = (k / block) * fmt.block_bytes();
    let body = |range: std::ops::Range<usize>| {
        for g in range {
            let o0 = g * 4;
            let m = (n - o0).min(4);
            if let Some(multi) = multi {
                // Each weight row meets up to four x rows per pass (loaded once for them).
                for i in 0..m {
                    let wr = &w[(o0 + i) * row_bytes..(o0 + i + 1) * row_bytes];
                    for (t, tile) in xq.chunks(4).enumerate() {
                        let d = multi(wr, tile);
                        for (j, v) in d.iter().take(tile.len()).enumerate() {
                            // SAFETY: as below: row 4t + j < rows, output o0 + i < n.
                            unsafe { *out.ptr().add((4 * t + j) * n + o0 + i) = *v };
                        }
                    }
                }
                continue;
            }
            for (r, xr) in xq.iter().enumerate() {
                let d = dot(fmt, w, row_bytes, o0, m, xr);
                for (i, v) in d.iter().take(m).enumerate() {
                    // SAFETY: r < rows and o0 + i < n index inside `y` (length rows·n, checked
                    // above); only group g writes outputs o0..o0+m and each group goes to one
                    // thread, so writes never alias.
                    unsafe { *out.ptr().add(r * n + o0 + i) = *v };
                }
            }
        }
    };
    let groups = n.div_ceil(4);
    if w.len() < 1 << 16 {
        body(0..groups);
    } else {
        super::parallel_for(groups, body);
    }
    Ok(())
}

fn qdot4_kernel() -> QDot4 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return avx2::qdot4;
        }
    }
    scalar::qdot4
}

/// One weight row (its bytes) against up to four quantized x rows: their dot products, each
/// summed exactly as [`QDot4`] sums it, so a row's result does not depend on which other rows
/// share the call.
type RowsKernel = fn(&[u8], &[QuantizedRow]) -> [f32; 4];

/// The multi-row kernel for `fmt` where the CPU has it (AVX2); `None` sends every row through
/// [`QDot4`] on its own.
fn rows_kernel(fmt: QFormat) -> Option<RowsKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return Some(match fmt {
                QFormat::Q8_0 => avx2::q8_0_rows,
                QFormat::Q4K => avx2::q4k_rows,
            });
        }
    }
    let _ = fmt;
    None
}

/// Byte offsets of weight rows `o0..o0+4`, the last repeated when `m < 4`.
fn row_offsets(o0: usize, m: usize, row_bytes: usize) -> [usize; 4] {
    let last = m.saturating_sub(1);
    [o0, o0 + last.min(1), o0 + last.min(2), o0 + last.min(3)].map(|r| r * row_bytes)
}

pub(crate) mod scalar {
    use super::*;

    /// The portable kernel and the reference for the SIMD one: the same integer sums per
    /// block, scaled in the same order.
    pub fn qdot4(
        fmt: QFormat,
        w: &[u8],
        row_bytes: usize,
        o0: usize,
        m: usize,
        x: &QuantizedRow,
    ) -> [f32; 4] {
        row_offsets(o0, m, row_bytes).map(|off| {
            let row = &w[off..off + row_bytes];
            match fmt {
                QFormat::Q8_0 => dot_q8_0(row, x),
                QFormat::Q4K => dot_q4k(row, x),
            }
        })
    }

    fn dot_q8_0(row: &[u8], x: &QuantizedRow) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in row.chunks_exact(Q8_0_BYTES).enumerate() {
            let isum: i32 = blk[2..]
                .iter()
                .zip(&x.q[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK])
                .map(|(&wq, &xq)| (wq as i8 as i32) * xq as i32)
                .sum();
            acc += f16_at(blk, 0) * x.d[b] * isum as f32;
        }
        acc
    }

    fn dot_q4k(row: &[u8], x: &QuantizedRow) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in row.chunks_exact(Q4_K_BYTES).enumerate() {
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let scales = &blk[4..16];
            let qs = &blk[16..];
            let xq = &x.q[b * QK_K..(b + 1) * QK_K];
            let (mut isum, mut msum) = (0i32, 0i32);
            for j in 0..8 {
                let (sc, mn) = scale_min_k4(j, scales);
                let chunk = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                let shift = if j % 2 == 0 { 0 } else { 4 };
                let s: i32 = chunk
                    .iter()
                    .zip(&xq[j * 32..j * 32 + 32])
                    .map(|(&v, &xv)| ((v >> shift) & 0x0F) as i32 * xv as i32)
                    .sum();
                isum += sc as i32 * s;
                msum += mn as i32 * x.sums[b * 8 + j] as i32;
            }
            acc += x.d[b] * (d * isum as f32 - dmin * msum as f32);
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::simd::hsum;
    use super::*;
    use std::arch::x86_64::*;

    pub fn qdot4(
        fmt: QFormat,
        w: &[u8],
        row_bytes: usize,
        o0: usize,
        m: usize,
        x: &QuantizedRow,
    ) -> [f32; 4] {
        let offs = row_offsets(o0, m, row_bytes);
        let nb = row_bytes / fmt.block_bytes();
        assert!(
            offs[3] + row_bytes <= w.len()
                && x.q.len() >= nb * fmt.block()
                && x.d.len() >= nb
                && x.sums.len() >= nb * fmt.block() / 32,
            "qdot4 out of bounds"
        );
        // SAFETY: `qdot4_kernel` returns this function only after detecting avx2, fma and
        // f16c; the assert keeps the four rows (`offs[i]..offs[i]+row_bytes`) and the `nb`
        // blocks of `x` the kernels read in bounds.
        unsafe {
            match fmt {
                QFormat::Q8_0 => q8_0(w.as_ptr(), offs, nb, x),
                QFormat::Q4K => q4k(w.as_ptr(), offs, nb, x),
            }
        }
    }

    /// How far ahead of the block being read (in bytes) the row kernels ask for the weights.
    /// One thread's sequential read leaves the hardware prefetcher behind: on Zen 3 a Q4_K row
    /// read 13.4 GB/s without this and 17.7 with it (6144 × 2048, one thread), 24.6 against
    /// 32.3 GB/s on two threads; Q8_0 14.6 against 18.0 and 25.8 against 31.0 (BENCHMARKS.md,
    /// "Software prefetch in the quantized row kernels"). The distances were the best of
    /// those tried (Q4_K 1728-4608 bytes, Q8_0 1024-4096).
    const Q4_K_PREFETCH: usize = 24 * Q4_K_BYTES;
    const Q8_0_PREFETCH: usize = 2048;

    /// Asks for the cache line holding `p` into L1. Callers compute `p` with `wrapping_add`,
    /// as it may lie past the end of the weights.
    #[inline(always)]
    fn prefetch(p: *const u8) {
        // SAFETY: `prefetch` is a hint that reads nothing architecturally and never faults,
        // whatever the address (SSE, part of x86_64's baseline).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_to_f32(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            p.cast::<u16>().read_unaligned() as i32,
        )))
    }

    /// 32 signed bytes times 32 signed bytes, summed in pairs to 8 i32 lanes: `maddubs` wants
    /// one unsigned side, so take |w| and move w's sign onto x.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_i8(w: __m256i, x: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    // Both kernels read their four rows one after the other: adjacent rows make the matrix one
    // sequential stream for the hardware prefetcher (interleaving rows measured much slower).

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0(w: *const u8, offs: [usize; 4], nb: usize, x: &QuantizedRow) -> [f32; 4] {
        let mut out = [0f32; 4];
        for i in 0..4 {
            let mut acc = [_mm256_setzero_ps(); 2];
            for b in 0..nb {
                let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * Q8_0_BLOCK).cast());
                let blk = w.add(offs[i] + b * Q8_0_BYTES);
                prefetch(blk.wrapping_add(Q8_0_PREFETCH));
                let wv = _mm256_loadu_si256(blk.add(2).cast());
                let s = _mm256_cvtepi32_ps(dot_i8(wv, xv));
                let scale = _mm256_set1_ps(f16_to_f32(blk) * *x.d.get_unchecked(b));
                acc[b % 2] = _mm256_fmadd_ps(scale, s, acc[b % 2]);
            }
            out[i] = hsum(_mm256_add_ps(acc[0], acc[1]));
        }
        out
    }

    pub fn q8_0_rows(w: &[u8], xs: &[QuantizedRow]) -> [f32; 4] {
        let nb = w.len() / Q8_0_BYTES;
        assert!(
            w.len() == nb * Q8_0_BYTES
                && (1..=4).contains(&xs.len())
                && xs
                    .iter()
                    .all(|x| x.q.len() >= nb * Q8_0_BLOCK && x.d.len() >= nb),
            "q8_0_rows out of bounds"
        );
        // SAFETY: `rows_kernel` returns this function only after detecting avx2, fma and
        // f16c; the assert keeps the `nb` blocks of `w` and of every x row in bounds.
        unsafe {
            match xs.len() {
                1 => q8_0_rows_n::<1>(w.as_ptr(), nb, xs),
                2 => q8_0_rows_n::<2>(w.as_ptr(), nb, xs),
                3 => q8_0_rows_n::<3>(w.as_ptr(), nb, xs),
                _ => q8_0_rows_n::<4>(w.as_ptr(), nb, xs),
            }
        }
    }

    /// [`q8_0`] for one weight row and `N` x rows: per block the weights are loaded, their
    /// magnitudes taken and their scale widened once, then met by each x row, accumulated
    /// in [`q8_0`]'s order (two accumulators alternating by block, added at the end).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_rows_n<const N: usize>(
        w: *const u8,
        nb: usize,
        xs: &[QuantizedRow],
    ) -> [f32; 4] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let xq: [*const i8; N] = std::array::from_fn(|r| xs[r].q.as_ptr());
        let xd: [*const f32; N] = std::array::from_fn(|r| xs[r].d.as_ptr());
        for b in 0..nb {
            let blk = w.add(b * Q8_0_BYTES);
            prefetch(blk.wrapping_add(Q8_0_PREFETCH));
            let wv = _mm256_loadu_si256(blk.add(2).cast());
            let aw = _mm256_sign_epi8(wv, wv);
            let dw = f16_to_f32(blk);
            for r in 0..N {
                let xv = _mm256_loadu_si256(xq[r].add(b * Q8_0_BLOCK).cast());
                let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv));
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                let scale = _mm256_set1_ps(dw * *xd[r].add(b));
                acc[r][b % 2] = _mm256_fmadd_ps(scale, s, acc[r][b % 2]);
            }
        }
        let mut out = [0f32; 4];
        for r in 0..N {
            out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
        }
        out
    }

    /// `_mm256_shuffle_epi8` masks that copy 16-bit lane `j` (0..8) of each 128-bit half to
    /// the whole half.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn lane_broadcasts() -> [__m256i; 8] {
        std::array::from_fn(|j| _mm256_set1_epi16((((2 * j + 1) << 8) | (2 * j)) as i16))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4k(w: *const u8, offs: [usize; 4], nb: usize, x: &QuantizedRow) -> [f32; 4] {
        offs.map(|off| q4k_rows_n::<1>(w.add(off), nb, std::slice::from_ref(x))[0])
    }

    pub fn q4k_rows(w: &[u8], xs: &[QuantizedRow]) -> [f32; 4] {
        let nb = w.len() / Q4_K_BYTES;
        assert!(
            w.len() == nb * Q4_K_BYTES
                && (1..=4).contains(&xs.len())
                && xs
                    .iter()
                    .all(|x| x.q.len() >= nb * QK_K && x.d.len() >= nb && x.sums.len() >= nb * 8),
            "q4k_rows out of bounds"
        );
        // SAFETY: `rows_kernel` returns this function only after detecting avx2, fma and
        // f16c; the assert keeps the `nb` blocks of `w` and of every x row in bounds.
        unsafe {
            match xs.len() {
                1 => q4k_rows_n::<1>(w.as_ptr(), nb, xs),
                2 => q4k_rows_n::<2>(w.as_ptr(), nb, xs),
                3 => q4k_rows_n::<3>(w.as_ptr(), nb, xs),
                _ => q4k_rows_n::<4>(w.as_ptr(), nb, xs),
            }
        }
    }

    /// One Q4_K weight row (`nb` blocks from `w`) against `N` quantized x rows. Per block the
    /// weights are unpacked once (nibbles, and the eight 6-bit scales widened to i16 once and
    /// shuffled out per sub-block) and met by each x row; the mins term is one 8-lane i16
    /// product with x's 32-value sums. The float work per x row is the same operations in the
    /// same order whatever `N` is, so a row's result does not depend on the rows sharing the
    /// call (the integer sums are exact). The integer work per block is what bounds this
    /// kernel (it streams 144 bytes per 256 multiply-adds), so each instruction taken out of
    /// the loop is speed.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4k_rows_n<const N: usize>(w: *const u8, nb: usize, xs: &[QuantizedRow]) -> [f32; 4] {
        let low = _mm256_set1_epi8(0x0F);
        let lanes = lane_broadcasts();
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm_setzero_ps(); N];
        for b in 0..nb {
            let blk = w.add(b * Q4_K_BYTES);
            // A block spans up to three cache lines.
            for line in 0..3 {
                prefetch(blk.wrapping_add(Q4_K_PREFETCH + 64 * line));
            }
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned()));
            let (sc, mn) = scales_mins(std::slice::from_raw_parts(blk.add(4), 12));
            let scales =
                _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let qs = blk.add(16);
            let mut isum = [_mm256_setzero_si256(); N];
            for c in 0..4 {
                let q4 = _mm256_loadu_si256(qs.add(c * 32).cast());
                let lo = _mm256_and_si256(q4, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), low);
                let (s0, s1) = (
                    _mm256_shuffle_epi8(scales, lanes[2 * c]),
                    _mm256_shuffle_epi8(scales, lanes[2 * c + 1]),
                );
                for (r, isum) in isum.iter_mut().enumerate() {
                    let xq = xs.get_unchecked(r).q.as_ptr().add(b * QK_K + 64 * c);
                    // 0..15 times -127..127 summed in pairs fits i16; then times the scale.
                    let x0 = _mm256_loadu_si256(xq.cast());
                    let x1 = _mm256_loadu_si256(xq.add(32).cast());
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s0);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s1);
                    *isum = _mm256_add_epi32(*isum, _mm256_add_epi32(p0, p1));
                }
            }
            for r in 0..N {
                let x = xs.get_unchecked(r);
                // [d·dx, dmin·dx, ..]
                let dd = _mm_mul_ps(dm, _mm_set1_ps(*x.d.get_unchecked(b)));
                acc[r] = _mm256_fmadd_ps(
                    _mm256_broadcastss_ps(dd),
                    _mm256_cvtepi32_ps(isum[r]),
                    acc[r],
                );
                // The mins term: eight mins (0..63) times x's eight 32-value sums, in pairs.
                let sums = _mm_loadu_si128(x.sums.as_ptr().add(b * 8).cast());
                let msum = _mm_cvtepi32_ps(_mm_madd_epi16(mins, sums));
                accm[r] = _mm_fmadd_ps(_mm_broadcastss_ps(_mm_movehdup_ps(dd)), msum, accm[r]);
            }
        }
        let mut out = [0f32; 4];
        for r in 0..N {
            let m = _mm_add_ps(accm[r], _mm_movehl_ps(accm[r], accm[r]));
            let m = _mm_add_ss(m, _mm_shuffle_ps::<1>(m, m));
            out[r] = hsum(acc[r]) - _mm_cvtss_f32(m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{assert_rows_alone_match, reference, weights, x_rows};
    use candle_core::{Device, Tensor};

    #[test]
    fn kernels_match_the_dequantized_product() {
        for fmt in [QFormat::Q8_0, QFormat::Q4K] {
            for &(n, blocks, rows) in &[(1, 1, 1), (3, 2, 2), (5, 3, 1), (130, 4, 3), (600, 2, 8)] {
                let k = blocks * fmt.block();
                let (w, deq) = weights(n as u64 + 17, n, k, fmt);
                let x = x_rows(n as u64 + 3, rows, k);
                let want = reference(&deq, n, k, &x, rows, fmt.block());
                let mut y = vec![f32::NAN; rows * n];
                qmatvec(fmt, &w, n, k, &x, rows, &mut y).unwrap();
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
                for (i, (got, want)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (*got as f64 - want).abs() < 1e-4 * scale,
                        "{fmt:?} n={n} k={k} rows={rows} [{i}]: {got} vs {want}"
                    );
                }
                // The SIMD kernel and the scalar one agree to f32 rounding.
                let row_bytes = k / fmt.block() * fmt.block_bytes();
                let xq = quantize_row(&x[..k], fmt.block());
                for g in 0..n.div_ceil(4) {
                    let m = (n - 4 * g).min(4);
                    let a = scalar::qdot4(fmt, &w, row_bytes, 4 * g, m, &xq);
                    let b = qdot4_kernel()(fmt, &w, row_bytes, 4 * g, m, &xq);
                    for i in 0..m {
                        assert!((a[i] - b[i]).abs() <= 1e-4 * scale as f32, "{a:?} {b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn rows_kernels_match_one_row_at_a_time_exactly() {
        // Batched decode must give each sequence what it would get alone (the multi-row
        // kernels against the one-row kernel, on partial passes of 1-3 rows too).
        for fmt in [QFormat::Q8_0, QFormat::Q4K] {
            for &(n, blocks, rows) in &[(5, 3, 2), (9, 1, 3), (130, 4, 5), (37, 7, 8)] {
                let k = blocks * fmt.block();
                let (w, _) = weights(n as u64 + 5, n, k, fmt);
                let x = x_rows(n as u64 + 6, rows, k);
                assert_rows_alone_match(n, k, &x, |x, rows, y| {
                    qmatvec(fmt, &w, n, k, x, rows, y).unwrap()
                });
            }
        }
    }

    #[test]
    fn close_to_the_f32_product() {
        // int8 activations cost a little accuracy against f32 x: bounded here.
        let (n, k) = (64, 512);
        for fmt in [QFormat::Q8_0, QFormat::Q4K] {
            let (w, deq) = weights(9, n, k, fmt);
            let x = x_rows(10, 1, k);
            let mut y = vec![0f32; n];
            qmatvec(fmt, &w, n, k, &x, 1, &mut y).unwrap();
            let wt = Tensor::from_vec(deq, (n, k), &Device::Cpu).unwrap();
            let xt = Tensor::from_vec(x, (1, k), &Device::Cpu).unwrap();
            let want: Vec<f32> = xt
                .matmul(&wt.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 0.02 * scale, "{fmt:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn word_unpacking_of_q4k_scales_matches_scale_min_k4() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..200 {
            let bytes: [u8; 12] = std::array::from_fn(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            });
            let (sc, mn) = scales_mins(&bytes);
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, &bytes);
                assert_eq!(
                    ((sc >> (8 * j)) as u8, (mn >> (8 * j)) as u8),
                    (s, m),
                    "{j}"
                );
            }
        }
    }

    #[test]
    fn refuses_sizes_that_disagree() {
        let mut y = vec![0f32; 2];
        let w = vec![0u8; 2 * Q8_0_BYTES];
        assert!(qmatvec(QFormat::Q8_0, &w, 2, 32, &[0.0; 32], 1, &mut y).is_ok());
        assert!(qmatvec(QFormat::Q8_0, &w, 2, 33, &[0.0; 33], 1, &mut y).is_err());
        assert!(qmatvec(QFormat::Q4K, &w, 2, 32, &[0.0; 32], 1, &mut y).is_err());
    }
}
