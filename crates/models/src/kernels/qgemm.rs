//! Q8_0 weights times many rows of `x` (prompt prefill, a decode step of many sequences): the
//! int8 tile kernel issue #7 asks for. candle 0.11.1 has Q8_0 tiles only for VNNI CPUs, and
//! keeps a second, repacked copy of every weight for them; elsewhere (AVX2 only, e.g. Zen 3)
//! it has only its generic one-dot-at-a-time path.
//!
//! [`super::qmatvec`] meets each weight row with each x row block by block and sums the 8
//! lanes of every block product in f32 (8 vector operations per 32 multiply-adds, scale
//! handling included). Here eight weight rows are *packed* (interleaved) per call into a small
//! buffer that stays in L1/L2: for each block of 32 and each 4-byte step `s` within it, one
//! 32-byte vector holds bytes `4s..4s+4` of all eight rows. A broadcast of x's matching four
//! bytes then gives the eight rows' partial sums in the eight lanes, so no lane ever needs a
//! horizontal sum: per 32 multiply-adds of one x row it costs, with AVX2, a sign, a `maddubs`,
//! a `madd` and an integer add, and with AVX-512 VNNI one `vpdpbusd`; the block's eight
//! integer sums are scaled to f32 once (`x`'s scale times the eight weight scales, one
//! vector). Four x rows share each loaded weight vector. Both variants compute the same
//! exact integers, so they give the same bits.
//!
//! Packing touches each weight byte once per call, which the rows amortize; for a few rows
//! (decode) [`super::qmatvec`] streams the weights straight from memory and is the faster one.
//! No packed copy outlives the call, so weights stay in memory once. Every output is summed
//! in one fixed order (blocks in turn, each block's exact integer sum scaled and accumulated),
//! whatever the thread count and however many rows share the call.

pub mod q4k;
pub mod rows;

use super::matvec::SharedOut;
use super::qmatvec::{check_sizes, f16_at, quantize_block, QFormat, Q8_0_BLOCK, Q8_0_BYTES};

/// Weight rows interleaved per packed panel (one f32 lane each).
pub const PANEL: usize = 8;
/// Bytes of one packed block: 32 quantized values of each of the eight rows.
const PACKED_BLOCK: usize = PANEL * Q8_0_BLOCK;

/// Whether this CPU runs [`q8_0_gemm`] (x86-64 with AVX2, FMA and F16C).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`q8_0_gemm`] runs its VNNI variant here: AVX-512 VNNI with 256-bit vectors
/// (`avx512vl`), as on Zen 4 and Intel servers since Ice Lake, unless
/// `MISTRALRS_FORCE_AVX2=1`, the switch candle also obeys (to measure what an AVX2-only CPU
/// gets). `vpdpbusd` multiplies four unsigned bytes by four signed ones and adds them into an
/// i32 lane in one instruction, where AVX2 needs a sign, a `maddubs`, a `madd` and an add.
pub fn vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            available()
                && std::env::var("MISTRALRS_FORCE_AVX2").as_deref() != Ok("1")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `x` (`rows × k`) quantized to Q8_0 blocks, all rows in one buffer: `q[r·k + j]`, and the
/// scale of block `b` of row `r` at `d[r·(k/32) + b]`. The same numbers as
/// [`super::qmatvec::quantize_row`] gives each row.
struct QuantizedRows {
    q: Vec<i8>,
    d: Vec<f32>,
}

/// With `offset`, each value is stored as the unsigned byte `q + 128` (its bits: `q ^ 0x80`),
/// what the VNNI kernel's unsigned operand wants.
fn quantize_rows(x: &[f32], offset: bool) -> QuantizedRows {
    let blocks = x.len() / Q8_0_BLOCK;
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0f32; blocks];
    let (qp, dp) = (SharedOut(q.as_mut_ptr()), SharedOut(d.as_mut_ptr()));
    let body = |range: std::ops::Range<usize>| {
        let xs = &x[range.start * Q8_0_BLOCK..range.end * Q8_0_BLOCK];
        // SAFETY: the blocks of `range` (< blocks) index inside `q` (blocks·32 values) and
        // `d` (blocks scales); each block is in one range and each range goes to one thread,
        // so no two threads touch the same elements, and both buffers outlive the loop.
        let (qs, ds) = unsafe {
            (
                std::slice::from_raw_parts_mut(qp.ptr().add(range.start * Q8_0_BLOCK), xs.len()),
                std::slice::from_raw_parts_mut(dp.ptr().add(range.start), range.len()),
            )
        };
        #[cfg(target_arch = "x86_64")]
        if available() {
            avx2::quantize_blocks(xs, qs, ds, offset);
            return;
        }
        for ((xb, qb), db) in xs
            .chunks_exact(Q8_0_BLOCK)
            .zip(qs.chunks_exact_mut(Q8_0_BLOCK))
            .zip(ds.iter_mut())
        {
            *db = quantize_block(xb, qb);
            if offset {
                for v in qb.iter_mut() {
                    *v = (*v as u8 ^ 0x80) as i8;
                }
            }
        }
    };
    // A prompt's rows are quantized by all threads (one thread would leave the others idle).
    if x.len() < 1 << 15 {
        body(0..blocks);
    } else {
        super::parallel_for(blocks, body);
    }
    QuantizedRows { q, d }
}

/// One packed panel of eight weight rows, interleaved as the module comment describes:
/// `scales[b·8 + i]` the scale of row `i`'s block `b`, `quants[b·256 + s·32 + i·4 + t]` its
/// value `4s + t`, and for the VNNI kernel `wsums[b·8 + i]` the sum of its 32 values (empty
/// otherwise).
struct Panel {
    scales: Vec<f32>,
    quants: Vec<u8>,
    wsums: Vec<i32>,
}

/// The scales of rows `o0..o0+m` of `w` (the rest zero).
fn pack_scales(w: &[u8], row_bytes: usize, o0: usize, m: usize, scales: &mut [f32]) {
    let nb = row_bytes / Q8_0_BYTES;
    for i in 0..PANEL {
        for b in 0..nb {
            scales[b * PANEL + i] = if i < m {
                f16_at(w, (o0 + i) * row_bytes + b * Q8_0_BYTES)
            } else {
                0.0
            };
        }
    }
}

/// The values of rows `o0..o0+m` of `w` (the rest zero), four bytes at a time: the reference
/// the SIMD packing is tested against, and the packing of a last, partial panel.
fn pack_quants(w: &[u8], row_bytes: usize, o0: usize, m: usize, quants: &mut [u8]) {
    let nb = row_bytes / Q8_0_BYTES;
    for i in 0..PANEL {
        for b in 0..nb {
            for s in 0..PANEL {
                let to = b * PACKED_BLOCK + s * 32 + i * 4;
                if i < m {
                    let from = (o0 + i) * row_bytes + b * Q8_0_BYTES + 2 + 4 * s;
                    quants[to..to + 4].copy_from_slice(&w[from..from + 4]);
                } else {
                    quants[to..to + 4].fill(0);
                }
            }
        }
    }
}

/// What both tile kernels check before any work: the sizes, the CPU, and whether there is
/// anything to compute (an empty product leaves `y`, if any, zero). `Ok(true)`: go on.
#[allow(clippy::too_many_arguments)]
fn ready(
    what: &str,
    fmt: QFormat,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<bool, String> {
    check_sizes(what, fmt, w, n, k, x, rows, y)?;
    if !available() {
        return Err(format!("{what} needs AVX2, FMA and F16C"));
    }
    if n == 0 || rows == 0 || k == 0 {
        y.fill(0.0);
        return Ok(false);
    }
    Ok(true)
}

/// `y[r·n + o] = Σ_j x[r·k + j] · w[o, j]` for Q8_0 weights `w` (`n` rows of `k / 32` GGUF
/// blocks). `k` must be a multiple of 32; sizes that disagree, or a CPU without AVX2 (see
/// [`available`]), are refused.
pub fn q8_0_gemm(
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<(), String> {
    if ready("q8_0_gemm", QFormat::Q8_0, w, n, k, x, rows, y)? {
        gemm(w, n, k, x, rows, y, vnni());
    }
    Ok(())
}

/// [`q8_0_gemm`] past its checks, by the VNNI kernel or the AVX2 one (tests run both).
fn gemm(w: &[u8], n: usize, k: usize, x: &[f32], rows: usize, y: &mut [f32], vnni: bool) {
    let nb = k / Q8_0_BLOCK;
    let row_bytes = nb * Q8_0_BYTES;
    let xq = quantize_rows(x, vnni);
    for_each_tile(
        n,
        rows,
        (n * k).saturating_mul(rows),
        y,
        || Panel {
            scales: vec![0f32; nb * PANEL],
            quants: vec![0u8; nb * PACKED_BLOCK],
            // The VNNI kernel multiplies `q + 128` by w and takes 128 · Σw back off.
            wsums: vec![0i32; if vnni { nb * PANEL } else { 0 }],
        },
        |o0, m, p| {
            #[cfg(target_arch = "x86_64")]
            if m == PANEL {
                avx2::pack_panel(w, row_bytes, o0, &mut p.quants, &mut p.scales);
            } else {
                pack_scales(w, row_bytes, o0, m, &mut p.scales);
                pack_quants(w, row_bytes, o0, m, &mut p.quants);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                pack_scales(w, row_bytes, o0, m, &mut p.scales);
                pack_quants(w, row_bytes, o0, m, &mut p.quants);
            }
            #[cfg(target_arch = "x86_64")]
            if vnni {
                avx2::panel_sums(&p.quants, &mut p.wsums);
            }
        },
        |p, r0, t, out| {
            #[cfg(target_arch = "x86_64")]
            avx2::tile(p, vnni, &xq, k, r0, t, out);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (p, r0, t, out);
        },
    );
}

/// The loop every tile kernel here shares: `pack(o0, m, buffers)` fills a thread's
/// `buffers` (made once per thread by `buffers`) with the panel of weight rows
/// `o0..o0+m` (`m` ≤ 8), and `tile(buffers, r0, t, out)` multiplies x rows `r0..r0+t`
/// (`t` ≤ 4) by it into `out[j][i]`, which lands in `y[(r0+j)·n + o0+i]`. Panels are shared
/// out over the thread pool when `work` (multiply-adds) is worth it; each panel is one
/// thread's, so every output is written once, by one thread.
pub(crate) fn for_each_tile<B>(
    n: usize,
    rows: usize,
    work: usize,
    y: &mut [f32],
    buffers: impl Fn() -> B + Sync,
    pack: impl Fn(usize, usize, &mut B) + Sync,
    tile: impl Fn(&B, usize, usize, &mut [[f32; PANEL]; 4]) + Sync,
) {
    assert_eq!(y.len(), rows * n, "tile output size");
    let out = SharedOut(y.as_mut_ptr());
    let body = |range: std::ops::Range<usize>| {
        let mut b = buffers();
        for p in range {
            let o0 = p * PANEL;
            let m = (n - o0).min(PANEL);
            pack(o0, m, &mut b);
            let mut r0 = 0;
            while r0 < rows {
                let t = (rows - r0).min(4);
                let mut vals = [[0f32; PANEL]; 4];
                tile(&b, r0, t, &mut vals);
                for (j, v) in vals.iter().take(t).enumerate() {
                    // SAFETY: row r0 + j < rows and outputs o0..o0+m (m ≤ 8, o0 + m ≤ n) index
                    // inside `y` (length rows·n, asserted above); panel p alone writes outputs
                    // o0..o0+m and each panel goes to one thread, so writes never alias.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            v.as_ptr(),
                            out.ptr().add((r0 + j) * n + o0),
                            m,
                        )
                    };
                }
                r0 += t;
            }
        }
    };
    let panels = n.div_ceil(PANEL);
    if work < 1 << 18 {
        body(0..panels);
    } else {
        super::parallel_for(panels, body);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// [`quantize_block`] over consecutive Q8_0 blocks (`x`: blocks·32 values), the same
    /// bytes and scales, eight lanes at a time; with `offset` the bytes are stored as
    /// `q + 128` (see [`quantize_rows`]).
    pub(super) fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], offset: bool) {
        let nb = d.len();
        assert!(
            x.len() == nb * Q8_0_BLOCK && q.len() == x.len() && available(),
            "q8_0 quantize sizes"
        );
        // SAFETY: `available()` found avx2, fma and f16c; the assert keeps the `nb` blocks
        // of `x` read and of `q` and `d` written in bounds.
        unsafe { quantize_blocks_avx2(x.as_ptr(), q.as_mut_ptr(), d.as_mut_ptr(), nb, offset) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quantize_blocks_avx2(
        x: *const f32,
        q: *mut i8,
        d: *mut f32,
        nb: usize,
        offset: bool,
    ) {
        let sign = _mm256_set1_ps(-0.0);
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let flip = _mm256_set1_epi8(if offset { 0x80u8 as i8 } else { 0 });
        // packs_epi32 then packs_epi16 leave the 4-value groups in the order 0 2 4 6 1 3 5 7.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..nb {
            let p = x.add(b * Q8_0_BLOCK);
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
            let a = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            // The scalar code's operations exactly: amax is exact, then the same divisions.
            let amax = _mm_cvtss_f32(m);
            let scale = amax / 127.0;
            let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let r: [__m256i; 4] = std::array::from_fn(|i| {
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(v[i], inv),
                );
                _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(t), lo), hi)
            });
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(r[0], r[1]),
                _mm256_packs_epi32(r[2], r[3]),
            );
            let bytes = _mm256_xor_si256(_mm256_permutevar8x32_epi32(packed, order), flip);
            _mm256_storeu_si256(q.add(b * Q8_0_BLOCK).cast(), bytes);
            *d.add(b) = half::f16::from_f32(scale).to_f32();
        }
    }

    /// [`super::pack_scales`] and [`super::pack_quants`] of a full panel (rows `o0..o0+8`)
    /// in one pass: per block the eight rows' values transposed in registers and their eight
    /// f16 scales widened by one `vcvtph2ps`. (Widening the scales one at a time, apart,
    /// took more time than the tile arithmetic at 8 rows of x: `perf` on a product that
    /// stays in cache.)
    pub(super) fn pack_panel(
        w: &[u8],
        row_bytes: usize,
        o0: usize,
        quants: &mut [u8],
        scales: &mut [f32],
    ) {
        let nb = row_bytes / Q8_0_BYTES;
        assert!(
            w.len() >= (o0 + PANEL) * row_bytes
                && quants.len() >= nb * PACKED_BLOCK
                && scales.len() >= nb * PANEL
                && available(),
            "q8_0 panel out of bounds"
        );
        // SAFETY: `available()` found avx2 and f16c; the assert keeps the eight rows' `nb`
        // blocks (read at `+0 .. +34` of each), the `nb` packed blocks and the `nb · 8`
        // scales written in bounds.
        unsafe {
            pack_blocks(
                w.as_ptr().add(o0 * row_bytes),
                row_bytes,
                nb,
                quants.as_mut_ptr(),
                scales.as_mut_ptr(),
            )
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn pack_blocks(
        w: *const u8,
        row_bytes: usize,
        nb: usize,
        out: *mut u8,
        scales: *mut f32,
    ) {
        for b in 0..nb {
            let blk = |i: usize| w.add(i * row_bytes + b * Q8_0_BYTES);
            let d = |i: usize| blk(i).cast::<i16>().read_unaligned();
            let bits = _mm_set_epi16(d(7), d(6), d(5), d(4), d(3), d(2), d(1), d(0));
            _mm256_storeu_ps(scales.add(b * PANEL), _mm256_cvtph_ps(bits));
            let r: [__m256i; 8] = std::array::from_fn(|i| _mm256_loadu_si256(blk(i).add(2).cast()));
            store_transposed(r, out.add(b * PACKED_BLOCK));
        }
    }

    /// Eight rows of eight 4-byte groups, stored as eight vectors of one group from each row
    /// (`out + 32·s` holds group `s` of rows 0 to 7).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn store_transposed(r: [__m256i; 8], out: *mut u8) {
        for (s, v) in transpose(r).iter().enumerate() {
            _mm256_storeu_si256(out.add(s * 32).cast(), *v);
        }
    }

    /// Eight rows of eight 4-byte groups as eight vectors of one group from each row
    /// (vector `s` holds group `s` of rows 0 to 7, row `i` in lane `i`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        // u[s] holds group s (low lane) and s + 4 (high lane) of rows 0-3, v[s] of rows 4-7.
        let u = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
        let v = [
            _mm256_unpacklo_epi64(t4, t6),
            _mm256_unpackhi_epi64(t4, t6),
            _mm256_unpacklo_epi64(t5, t7),
            _mm256_unpackhi_epi64(t5, t7),
        ];
        [
            _mm256_permute2x128_si256::<0x20>(u[0], v[0]),
            _mm256_permute2x128_si256::<0x20>(u[1], v[1]),
            _mm256_permute2x128_si256::<0x20>(u[2], v[2]),
            _mm256_permute2x128_si256::<0x20>(u[3], v[3]),
            _mm256_permute2x128_si256::<0x31>(u[0], v[0]),
            _mm256_permute2x128_si256::<0x31>(u[1], v[1]),
            _mm256_permute2x128_si256::<0x31>(u[2], v[2]),
            _mm256_permute2x128_si256::<0x31>(u[3], v[3]),
        ]
    }

    /// x rows `r0..r0+t` (`t` 1 to 4) against one packed panel, by the VNNI kernel if
    /// `vnni`: `out[j][i]` is row `r0 + j` times panel row `i`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tile(
        panel: &Panel,
        vnni: bool,
        xq: &QuantizedRows,
        k: usize,
        r0: usize,
        t: usize,
        out: &mut [[f32; PANEL]; 4],
    ) {
        let Panel {
            scales,
            quants,
            wsums,
        } = panel;
        let nb = k / Q8_0_BLOCK;
        assert!(
            (1..=4).contains(&t)
                && scales.len() >= nb * PANEL
                && quants.len() >= nb * PACKED_BLOCK
                && xq.q.len() >= (r0 + t) * k
                && xq.d.len() >= (r0 + t) * nb,
            "q8_0 tile out of bounds"
        );
        let xs: [*const i8; 4] = std::array::from_fn(|j| xq.q[(r0 + j.min(t - 1)) * k..].as_ptr());
        let xd: [*const f32; 4] =
            std::array::from_fn(|j| xq.d[(r0 + j.min(t - 1)) * nb..].as_ptr());
        if vnni {
            assert!(wsums.len() >= nb * PANEL && super::vnni(), "q8_0 VNNI tile");
            let ws = wsums.as_ptr();
            // SAFETY: as below, and `vnni()` found avx512f, avx512vl and avx512vnni; `ws`
            // holds the `nb` blocks' eight sums (asserted).
            unsafe {
                match t {
                    1 => vnni_tile_n::<1>(scales.as_ptr(), quants.as_ptr(), ws, nb, xs, xd, out),
                    2 => vnni_tile_n::<2>(scales.as_ptr(), quants.as_ptr(), ws, nb, xs, xd, out),
                    3 => vnni_tile_n::<3>(scales.as_ptr(), quants.as_ptr(), ws, nb, xs, xd, out),
                    _ => vnni_tile_n::<4>(scales.as_ptr(), quants.as_ptr(), ws, nb, xs, xd, out),
                }
            }
            return;
        }
        // SAFETY: `q8_0_gemm` calls this only after `available()` found avx2, fma and f16c;
        // the assert keeps the `nb` packed blocks and the `nb` blocks of each of the `t` x
        // rows read in bounds (rows past `t` repeat the last one and are not stored).
        unsafe {
            match t {
                1 => tile_n::<1>(scales.as_ptr(), quants.as_ptr(), nb, xs, xd, out),
                2 => tile_n::<2>(scales.as_ptr(), quants.as_ptr(), nb, xs, xd, out),
                3 => tile_n::<3>(scales.as_ptr(), quants.as_ptr(), nb, xs, xd, out),
                _ => tile_n::<4>(scales.as_ptr(), quants.as_ptr(), nb, xs, xd, out),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_n<const R: usize>(
        scales: *const f32,
        quants: *const u8,
        nb: usize,
        xs: [*const i8; 4],
        xd: [*const f32; 4],
        out: &mut [[f32; PANEL]; 4],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            // Two integer sums per row (even and odd steps), added at the block's end: where
            // the compiler fuses `madd` and the add into one `vpdpwssd` (AVX-512 VNNI CPUs),
            // a single chain of eight would wait on that instruction's latency.
            let mut isum = [[_mm256_setzero_si256(); 2]; R];
            let qb = quants.add(b * PACKED_BLOCK);
            for s in 0..PANEL {
                let wv = _mm256_loadu_si256(qb.add(s * 32).cast());
                // |w| as unsigned bytes (-128 becomes 128, still right), w's sign moved onto
                // x, whose Q8_0 values are within ±127: each pair sum fits an i16.
                let aw = _mm256_sign_epi8(wv, wv);
                for r in 0..R {
                    let x4 = xs[r]
                        .add(b * Q8_0_BLOCK + s * 4)
                        .cast::<i32>()
                        .read_unaligned();
                    let xv = _mm256_set1_epi32(x4);
                    let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv));
                    isum[r][s % 2] = _mm256_add_epi32(isum[r][s % 2], _mm256_madd_epi16(p16, ones));
                }
            }
            let dw = _mm256_loadu_ps(scales.add(b * PANEL));
            for r in 0..R {
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(*xd[r].add(b)));
                let i = _mm256_add_epi32(isum[r][0], isum[r][1]);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), d, acc[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }

    /// Each panel row's sum of its 32 values per block: `ws[b·8 + i]` for row `i` (one
    /// `vpdpbusd` of ones against each 4-byte step).
    pub(super) fn panel_sums(quants: &[u8], ws: &mut [i32]) {
        let nb = ws.len() / PANEL;
        assert!(
            quants.len() >= nb * PACKED_BLOCK && vnni(),
            "q8_0 panel sums"
        );
        // SAFETY: `vnni()` found avx512f, avx512vl and avx512vnni; the assert keeps the `nb`
        // packed blocks read and the `nb · 8` sums written in bounds.
        unsafe { panel_sums_vnni(quants.as_ptr(), nb, ws.as_mut_ptr()) }
    }

    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    unsafe fn panel_sums_vnni(quants: *const u8, nb: usize, ws: *mut i32) {
        let ones = _mm256_set1_epi8(1);
        for b in 0..nb {
            let mut sum = _mm256_setzero_si256();
            for s in 0..PANEL {
                let wv = _mm256_loadu_si256(quants.add(b * PACKED_BLOCK + s * 32).cast());
                sum = _mm256_dpbusd_epi32(sum, ones, wv);
            }
            _mm256_storeu_si256(ws.add(b * PANEL).cast(), sum);
        }
    }

    /// [`tile_n`] with `vpdpbusd`: x's bytes come offset to `q + 128` (unsigned), so each
    /// step is one instruction per x row, and the block's `128 · Σw` is taken off the exact
    /// integer sum before scaling: the same integers, hence the same f32 results, as the
    /// AVX2 kernel's.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn vnni_tile_n<const R: usize>(
        scales: *const f32,
        quants: *const u8,
        wsums: *const i32,
        nb: usize,
        xs: [*const i8; 4],
        xd: [*const f32; 4],
        out: &mut [[f32; PANEL]; 4],
    ) {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            // Two chains per row (even and odd steps) so that `vpdpbusd`'s latency overlaps.
            let mut isum = [[_mm256_setzero_si256(); 2]; R];
            let qb = quants.add(b * PACKED_BLOCK);
            for s in 0..PANEL {
                let wv = _mm256_loadu_si256(qb.add(s * 32).cast());
                for r in 0..R {
                    let x4 = xs[r]
                        .add(b * Q8_0_BLOCK + s * 4)
                        .cast::<i32>()
                        .read_unaligned();
                    isum[r][s % 2] = _mm256_dpbusd_epi32(isum[r][s % 2], _mm256_set1_epi32(x4), wv);
                }
            }
            let w128 = _mm256_slli_epi32::<7>(_mm256_loadu_si256(wsums.add(b * PANEL).cast()));
            let dw = _mm256_loadu_ps(scales.add(b * PANEL));
            for r in 0..R {
                let i = _mm256_sub_epi32(_mm256_add_epi32(isum[r][0], isum[r][1]), w128);
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(*xd[r].add(b)));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), d, acc[r]);
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
    use crate::kernels::qmatvec::quantize_row;
    use crate::kernels::test_data::{self, reference, x_rows};

    /// Q8_0 bytes of a random (n, k) matrix and its dequantized values.
    fn weights(seed: u64, n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        test_data::weights(seed, n, k, QFormat::Q8_0)
    }

    #[test]
    fn matches_the_scalar_reference_on_odd_shapes() {
        if !available() {
            return;
        }
        // Panels cut short (n not a multiple of 8), row tiles cut short (rows not a multiple
        // of 4), one block and many, and sizes large enough to go to the thread pool.
        for &(n, blocks, rows) in &[
            (1, 1, 1),
            (7, 2, 3),
            (8, 1, 4),
            (9, 3, 5),
            (37, 5, 13),
            (130, 4, 9),
            (300, 24, 33),
            (70, 32, 40), // x large enough to be quantized by the thread pool
        ] {
            let k = blocks * Q8_0_BLOCK;
            let (w, deq) = weights(n as u64 * 7 + 1, n, k);
            let x = x_rows(rows as u64 + 11, rows, k);
            let want = reference(&deq, n, k, &x, rows, Q8_0_BLOCK);
            let mut y = vec![f32::NAN; rows * n];
            q8_0_gemm(&w, n, k, &x, rows, &mut y).unwrap();
            test_data::assert_close(&y, &want, &format!("n={n} k={k} rows={rows}"));
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
            // The row kernel of qmatvec computes the same products (in another f32 order).
            let mut y2 = vec![f32::NAN; rows * n];
            crate::kernels::qmatvec::qmatvec(
                crate::kernels::qmatvec::QFormat::Q8_0,
                &w,
                n,
                k,
                &x,
                rows,
                &mut y2,
            )
            .unwrap();
            for (a, b) in y.iter().zip(&y2) {
                assert!(((a - b) as f64).abs() < 1e-5 * scale, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_whatever_shares_its_call() {
        if !available() {
            return;
        }
        // Each output is summed in one order, so neither the other rows of the call nor the
        // thread count changes it.
        let (n, k, rows) = (70, 256, 11);
        let (w, _) = weights(3, n, k);
        let x = x_rows(4, rows, k);
        test_data::assert_rows_alone_match(n, k, &x, |x, rows, y| {
            q8_0_gemm(&w, n, k, x, rows, y).unwrap()
        });
    }

    #[test]
    fn the_vnni_and_avx2_kernels_give_the_same_bits() {
        if !vnni() {
            return; // nothing to compare on a CPU without AVX-512 VNNI
        }
        for &(n, blocks, rows) in &[(9, 3, 5), (130, 4, 9), (70, 32, 40)] {
            let k = blocks * Q8_0_BLOCK;
            let (w, _) = weights(n as u64 + 40, n, k);
            let x = x_rows(rows as u64 + 41, rows, k);
            let (mut a, mut b) = (vec![0f32; rows * n], vec![1f32; rows * n]);
            gemm(&w, n, k, &x, rows, &mut a, false);
            gemm(&w, n, k, &x, rows, &mut b, true);
            assert_eq!(a, b, "n={n} k={k} rows={rows}");
        }
    }

    #[test]
    fn weights_of_minus_128_are_multiplied_right() {
        if !available() {
            return;
        }
        // Q8_0 files from other tools may hold -128, which the sign trick must not flip.
        let k = 32;
        let mut w = Vec::new();
        for o in 0..3 {
            w.extend_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
            w.extend((0..k).map(|j| if (j + o) % 2 == 0 { 0x80u8 } else { 127u8 }));
        }
        let x: Vec<f32> = (0..k)
            .map(|j| if j % 3 == 0 { -1.0 } else { 0.5 })
            .collect();
        let mut y = vec![0f32; 3];
        q8_0_gemm(&w, 3, k, &x, 1, &mut y).unwrap();
        let xq = quantize_row(&x, Q8_0_BLOCK);
        for (o, got) in y.iter().enumerate() {
            let want: f64 = (0..k)
                .map(|j| {
                    let q = if (j + o) % 2 == 0 { -128.0 } else { 127.0 };
                    0.5 * q * xq.q[j] as f64 * xq.d[0] as f64
                })
                .sum();
            assert!((*got as f64 - want).abs() < 1e-3, "{o}: {got} vs {want}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_register_transpose_packs_like_the_scalar_code() {
        if !available() {
            return;
        }
        let (n, k) = (19, 96);
        let (w, _) = weights(8, n, k);
        let nb = k / Q8_0_BLOCK;
        let row_bytes = nb * Q8_0_BYTES;
        for o0 in [0, 3, 11] {
            let mut a = vec![0u8; nb * PACKED_BLOCK];
            let mut b = vec![1u8; nb * PACKED_BLOCK];
            let mut sa = vec![0f32; nb * PANEL];
            let mut sb = vec![f32::NAN; nb * PANEL];
            pack_quants(&w, row_bytes, o0, PANEL, &mut a);
            pack_scales(&w, row_bytes, o0, PANEL, &mut sa);
            avx2::pack_panel(&w, row_bytes, o0, &mut b, &mut sb);
            assert_eq!(a, b, "panel from row {o0}");
            assert_eq!(sa, sb, "scales of the panel from row {o0}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_simd_quantizer_gives_the_scalar_bytes() {
        if !available() {
            return;
        }
        // Random rows, plus values that land exactly on .5 after scaling (ties), zeros, and
        // an all-zero block.
        let mut x = crate::seeded_randn(12, 3.0, &[7 * Q8_0_BLOCK])
            .to_vec1::<f32>()
            .unwrap();
        // amax 127: scale 1, so j - 16 + 0.5 scales to itself, a tie for every value.
        for (j, v) in x[..Q8_0_BLOCK].iter_mut().enumerate() {
            *v = if j == 0 { 127.0 } else { j as f32 - 16.0 + 0.5 };
        }
        x[Q8_0_BLOCK..2 * Q8_0_BLOCK].fill(0.0);
        x[2 * Q8_0_BLOCK + 3] = -0.0;
        for offset in [false, true] {
            let nb = x.len() / Q8_0_BLOCK;
            let (mut q, mut d) = (vec![0i8; x.len()], vec![0f32; nb]);
            avx2::quantize_blocks(&x, &mut q, &mut d, offset);
            for b in 0..nb {
                let mut want = [0i8; Q8_0_BLOCK];
                let dw = quantize_block(&x[b * 32..(b + 1) * 32], &mut want);
                if offset {
                    want = want.map(|v| (v as u8 ^ 0x80) as i8);
                }
                assert_eq!(
                    &q[b * 32..(b + 1) * 32],
                    &want[..],
                    "block {b}, offset {offset}"
                );
                assert_eq!(d[b].to_bits(), dw.to_bits(), "block {b}");
            }
        }
    }

    #[test]
    fn refuses_sizes_that_disagree() {
        let w = vec![0u8; 2 * Q8_0_BYTES];
        let mut y = vec![0f32; 2];
        assert!(q8_0_gemm(&w, 2, 33, &[0.0; 33], 1, &mut y).is_err());
        assert!(q8_0_gemm(&w, 3, 32, &[0.0; 32], 1, &mut y).is_err());
        assert!(q8_0_gemm(&w, 2, 32, &[0.0; 64], 1, &mut y).is_err());
    }
}
