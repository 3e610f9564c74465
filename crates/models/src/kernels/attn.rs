//! Attention for a few query rows (decode) that reads the KV cache where it lies.
//!
//! candle's batched matmul packs K and V into panels before multiplying, which for one query
//! row is a full copy of the cache per layer and step. Here each (kv head, query row) task
//! streams its head's keys once for the dot products of all the query heads sharing it (GQA),
//! then its values once for the weighted sum: the cache is read once, never written.

use super::matvec::SharedOut;
use crate::error::Result;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use half::{bf16, f16, slice::HalfFloatSliceExt};

/// Query rows up to which this kernel is used (decode, and short chunks); longer prompts go
/// through candle's matmul, which is compute-bound there.
pub const MAX_QUERIES: usize = 8;

/// A (heads, keys, d) view of a cache buffer: element (h, j, i) at `off + h·sh + j·sj + i`.
enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

struct View<'a> {
    data: Rows<'a>,
    off: usize,
    sh: usize,
    sj: usize,
    d: usize,
}

impl View<'_> {
    /// Whether every row (h, j) with h < `heads`, j < `keys` lies inside the data (what the
    /// SIMD row kernels rely on).
    fn covers(&self, heads: usize, keys: usize) -> bool {
        let len = match &self.data {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
            Rows::BF16(v) => v.len(),
        };
        heads == 0
            || keys == 0
            || self.off + (heads - 1) * self.sh + (keys - 1) * self.sj + self.d <= len
    }

    /// Row (h, j) as f32: borrowed for f32, else converted into `scratch`.
    fn row<'s>(&'s self, h: usize, j: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        let at = self.off + h * self.sh + j * self.sj;
        match &self.data {
            Rows::F32(v) => &v[at..at + self.d],
            _ => {
                self.convert(at, scratch);
                scratch
            }
        }
    }

    /// The `d` values from element `at`, as f32, into `out`.
    fn convert(&self, at: usize, out: &mut [f32]) {
        match &self.data {
            Rows::F32(v) => out[..self.d].copy_from_slice(&v[at..at + self.d]),
            // `half`'s slice conversion: F16C eight at a time where the CPU has it.
            Rows::F16(v) => v[at..at + self.d].convert_to_f32_slice(&mut out[..self.d]),
            Rows::BF16(v) => v[at..at + self.d].convert_to_f32_slice(&mut out[..self.d]),
        }
    }
}

/// Rows (h, 0..keys) of blocks of keys (or values) in order, as one (keys, d) f32 matrix in
/// `out`; each block is its view and its number of keys.
fn widen_blocks(blocks: &[(View<'_>, usize)], h: usize, keys: usize, out: &mut Vec<f32>) {
    let Some(d) = blocks.first().map(|b| b.0.d) else {
        return;
    };
    out.resize(keys * d, 0.0);
    let mut rows = out.chunks_exact_mut(d);
    for (b, n) in blocks {
        for (jj, o) in (0..*n).zip(rows.by_ref()) {
            b.convert(b.off + h * b.sh + jj * b.sj, o);
        }
    }
}

/// The view of a CPU float storage under `l`; `None` for other storages.
fn view<'a>(s: &'a Storage, l: &candle_core::Layout, d: usize) -> Option<View<'a>> {
    let data = match s {
        Storage::Cpu(CpuStorage::F32(x)) => Rows::F32(x),
        Storage::Cpu(CpuStorage::F16(x)) => Rows::F16(x),
        Storage::Cpu(CpuStorage::BF16(x)) => Rows::BF16(x),
        _ => return None,
    };
    let st = l.stride();
    Some(View {
        data,
        off: l.start_offset(),
        sh: st[0],
        sj: st[1],
        d,
    })
}

/// What both attention kernels take from their arguments: the sizes, the queries and the
/// mask as f32.
struct Args {
    n: usize,
    n_heads: usize,
    d: usize,
    n_kv: usize,
    n_keys: usize,
    dv: usize,
    group: usize,
    qs: Vec<f32>,
    mask: Option<Vec<f32>>,
}

impl Args {
    /// `None` unless the kernels apply: on the CPU, no gradients, 1 to `max_queries` query
    /// rows, at least one key, query heads a multiple of the kv heads, K and V of one dtype
    /// with their last dimension contiguous, and a mask (if any) of (n, n_keys).
    /// K and V come as blocks of keys in order (one block for a plain (n_kv, n_keys, d)
    /// tensor); every block must agree in heads, widths and dtype.
    fn take(
        q: &Tensor,
        k: &[Tensor],
        v: &[Tensor],
        mask: Option<&Tensor>,
        max_queries: usize,
    ) -> Result<Option<Args>> {
        let (Some(k0), Some(v0)) = (k.first(), v.first()) else {
            return Ok(None);
        };
        if !matches!(k0.device(), Device::Cpu) || q.track_op() || k.len() != v.len() {
            return Ok(None);
        }
        let (n, n_heads, d) = q.dims3()?;
        let (n_kv, _, dk) = k0.dims3()?;
        let (_, _, dv) = v0.dims3()?;
        let mut n_keys = 0;
        for (kb, vb) in k.iter().zip(v) {
            let (kh, kn, kd) = kb.dims3()?;
            let (vh, vn, vd) = vb.dims3()?;
            if kb.track_op()
                || vb.track_op()
                || !matches!(kb.device(), Device::Cpu)
                || (kh, kd, vh, vd, vn) != (n_kv, dk, n_kv, dv, kn)
                || kb.dtype() != k0.dtype()
                || vb.dtype() != k0.dtype()
                || kb.stride()[2] != 1
                || vb.stride()[2] != 1
            {
                return Ok(None);
            }
            n_keys += kn;
        }
        if n == 0
            || n > max_queries
            || n_keys == 0
            || d == 0
            || dv == 0
            || dk != d
            || n_kv == 0
            || !n_heads.is_multiple_of(n_kv)
        {
            return Ok(None);
        }
        let mask = match mask {
            Some(m) if m.dims() == [n, n_keys] => {
                Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
            }
            Some(_) => return Ok(None),
            None => None,
        };
        Ok(Some(Args {
            n,
            n_heads,
            d,
            n_kv,
            n_keys,
            dv,
            group: n_heads / n_kv,
            qs: q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            mask,
        }))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums, so the compiler keeps them in one vector register.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `attention` (layers::attention) for q: (n, n_heads, d) against keys and values given as
/// blocks in order (a KV cache's, [`crate::KvBlocks`]): block b is `k[b]`: (n_kv, keys_b, d) and
/// `v[b]`: (n_kv, keys_b, dv), any strides with the last dimension contiguous, read where they
/// lie. On the CPU without gradients and with n ≤ [`MAX_QUERIES`]; `None` when it does not
/// apply. The result is (n, n_heads·dv) in q's dtype, identical for any thread count and for
/// any cut of the same keys into blocks (keys are visited in order).
pub fn decode_attention(
    q: &Tensor,
    k: &[Tensor],
    v: &[Tensor],
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    let Some(Args {
        n,
        n_heads,
        d,
        n_kv,
        n_keys,
        dv,
        group,
        qs,
        mask,
    }) = Args::take(q, k, v, mask, MAX_QUERIES)?
    else {
        return Ok(None);
    };
    let ks: Vec<_> = k.iter().map(|t| t.storage_and_layout()).collect();
    let vs: Vec<_> = v.iter().map(|t| t.storage_and_layout()).collect();
    // (key view, value view, keys) per block.
    let mut blocks = Vec::with_capacity(ks.len());
    for ((kst, kl), (vst, vl)) in ks.iter().zip(&vs) {
        let (Some(bk), Some(bv)) = (view(kst, kl, d), view(vst, vl, dv)) else {
            return Ok(None);
        };
        let keys = kl.dims()[1];
        if !bk.covers(n_kv, keys) || !bv.covers(n_kv, keys) {
            return Ok(None);
        }
        blocks.push((bk, bv, keys));
    }
    let scale = scale as f32;
    let simd = super::gemm::available() && (1..=avx2::MAX_GROUP).contains(&group);
    let mut out = vec![0f32; n * n_heads * dv];
    let shared = SharedOut(out.as_mut_ptr());
    // One task per (kv head, query row): its `group` query heads share the head's K and V.
    let body = |tasks: std::ops::Range<usize>| {
        let mut scores = vec![0f32; group * n_keys];
        let mut acc = vec![0f32; group * dv];
        let mut scratch = vec![0f32; d.max(dv)];
        for t in tasks {
            let (h, r) = (t / n, t % n);
            let qrow = |g: usize| {
                let head = h * group + g;
                &qs[(r * n_heads + head) * d..(r * n_heads + head + 1) * d]
            };
            let mut j = 0;
            for (bk, _, keys) in &blocks {
                if simd {
                    let q0 =
                        &qs[(r * n_heads + h * group) * d..(r * n_heads + (h + 1) * group) * d];
                    // SAFETY: `simd` means AVX2, FMA and F16C were detected and 1 <= group <=
                    // MAX_GROUP; `covers` held for this block, so rows (h, 0..keys) lie inside
                    // its data; `q0` holds the group's query rows (group·d values); the
                    // outputs g·n_keys + j + jj < group·n_keys = scores.len().
                    unsafe {
                        avx2::key_dots(bk, h, *keys, q0, group, scale, &mut scores, j, n_keys)
                    };
                    j += keys;
                    continue;
                }
                for jj in 0..*keys {
                    let key = bk.row(h, jj, &mut scratch);
                    for g in 0..group {
                        scores[g * n_keys + j] = dot(qrow(g), key) * scale;
                    }
                    j += 1;
                }
            }
            for g in 0..group {
                let s = &mut scores[g * n_keys..(g + 1) * n_keys];
                if let Some(m) = &mask {
                    for (x, b) in s.iter_mut().zip(&m[r * n_keys..(r + 1) * n_keys]) {
                        *x += b;
                    }
                }
                super::vexp::softmax_in_place(s);
            }
            acc.fill(0.0);
            let mut j = 0;
            for (_, bv, keys) in &blocks {
                if simd {
                    // SAFETY: as for the keys: `covers` held for this block's values, `acc`
                    // holds group·dv values, the probabilities g·n_keys + j + jj lie inside
                    // `scores`.
                    unsafe { avx2::add_values(bv, h, *keys, &scores, j, n_keys, group, &mut acc) };
                    j += keys;
                    continue;
                }
                for jj in 0..*keys {
                    let val = bv.row(h, jj, &mut scratch);
                    for g in 0..group {
                        let p = scores[g * n_keys + j];
                        for (a, x) in acc[g * dv..(g + 1) * dv].iter_mut().zip(val) {
                            *a += p * x;
                        }
                    }
                    j += 1;
                }
            }
            for g in 0..group {
                let at = (r * n_heads + h * group + g) * dv;
                for (i, a) in acc[g * dv..(g + 1) * dv].iter().enumerate() {
                    // SAFETY: task (h, r) alone writes the `group` heads h·group.. of row r,
                    // i.e. `out[(r·n_heads + h·group + g)·dv + i]` for g < group, i < dv, all
                    // inside `out` (length n·n_heads·dv); each task runs on one thread, and
                    // `out` outlives the loop.
                    unsafe { *shared.ptr().add(at + i) = *a };
                }
            }
        }
    };
    let tasks = n_kv * n;
    if n_keys * (d + dv) * tasks < 1 << 14 {
        body(0..tasks);
    } else {
        super::parallel_for(tasks, body);
    }
    drop(blocks);
    drop((ks, vs));
    Ok(Some(
        Tensor::from_vec(out, (n, n_heads * dv), q.device())?.to_dtype(q.dtype())?,
    ))
}

/// `s (rows × lim) = scale · q (rows × d) · kᵀ`, key j of `k` at j·ld: [`super::gemm`]'s
/// kernel where the CPU has it, else the `gemm` crate on this thread.
#[allow(clippy::too_many_arguments)]
fn scores_product(
    q: &[f32],
    rows: usize,
    d: usize,
    k: &[f32],
    ld: usize,
    lim: usize,
    s: &mut [f32],
    scale: f32,
) {
    if super::gemm::available() && super::gemm::gemm_t_strided(k, ld, lim, d, q, rows, s).is_ok() {
        for x in s.iter_mut() {
            *x *= scale;
        }
        return;
    }
    assert!(
        q.len() >= rows * d && s.len() >= rows * lim && (lim == 0 || (lim - 1) * ld + d <= k.len()),
        "attention scores: sizes do not fit"
    );
    // SAFETY: the destination is `s` (rows·lim values, row stride lim); the left side `q`
    // (rows·d values, row stride d); the right side reads (i, j) for i < d, j < lim at
    // j·ld + i, inside `k` (all three checked just above).
    unsafe {
        gemm::gemm(
            rows,
            lim,
            d,
            s.as_mut_ptr(),
            1,
            lim as isize,
            false,
            q.as_ptr(),
            1,
            d as isize,
            k.as_ptr(),
            ld as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `o (rows × dv) = p (rows × lim) · v`, value row j of `v` at j·ld: as [`scores_product`].
fn values_product(
    p: &[f32],
    rows: usize,
    lim: usize,
    v: &[f32],
    ld: usize,
    dv: usize,
    o: &mut [f32],
) {
    if super::gemm::available() && super::gemm::gemm_nn(v, ld, dv, lim, p, rows, o).is_ok() {
        return;
    }
    assert!(
        p.len() >= rows * lim
            && o.len() >= rows * dv
            && (lim == 0 || (lim - 1) * ld + dv <= v.len()),
        "attention values: sizes do not fit"
    );
    // SAFETY: the destination is `o` (rows·dv values, row stride dv); the left side `p`
    // (rows·lim values, row stride lim); the right side reads (j, i) for j < lim, i < dv at
    // j·ld + i, inside `v` (all three checked just above).
    unsafe {
        gemm::gemm(
            rows,
            dv,
            lim,
            o.as_mut_ptr(),
            1,
            dv as isize,
            false,
            p.as_ptr(),
            1,
            lim as isize,
            v.as_ptr(),
            1,
            ld as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Query rows per task of [`prefill_attention`] (with their `group` query heads, the rows of
/// one score matrix).
const QUERY_BLOCK: usize = 32;

/// `attention` (layers::attention) for prompts: q (n, n_heads, d), k (n_kv, n_keys, d), v
/// (n_kv, n_keys, dv) as for [`decode_attention`], any number of query rows. Each task takes
/// one kv head and `QUERY_BLOCK` (32) query rows: it multiplies their query heads by the keys up
/// to the last one the mask lets any of those rows see (so a causal prompt does half the work
/// of the full product), takes the softmax of each score row in place, and multiplies by the
/// values, both products by [`super::gemm`]'s kernel on one thread. candle's path (the reference)
/// permutes and copies Q, K and the output, and makes five passes over the full score tensor.
/// `None` when it does not apply; the result is (n, n_heads·dv) in q's dtype, identical for any
/// thread count.
pub fn prefill_attention(
    q: &Tensor,
    k: &[Tensor],
    v: &[Tensor],
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    let Some(Args {
        n,
        n_heads,
        d,
        n_kv,
        n_keys,
        dv,
        group,
        qs,
        mask,
    }) = Args::take(q, k, v, mask, usize::MAX)?
    else {
        return Ok(None);
    };
    // Keys past the last one a row's mask lets through are never computed.
    let limit: Vec<usize> = (0..n)
        .map(|r| match &mask {
            Some(m) => m[r * n_keys..(r + 1) * n_keys]
                .iter()
                .rposition(|x| *x != f32::NEG_INFINITY)
                .map_or(1, |j| j + 1),
            None => n_keys,
        })
        .collect();
    let ks: Vec<_> = k.iter().map(|t| t.storage_and_layout()).collect();
    let vs: Vec<_> = v.iter().map(|t| t.storage_and_layout()).collect();
    // (view, keys) per block of keys and of values.
    let (mut kb, mut vb) = (Vec::with_capacity(ks.len()), Vec::with_capacity(vs.len()));
    for ((kst, kl), (vst, vl)) in ks.iter().zip(&vs) {
        let (Some(bk), Some(bv)) = (view(kst, kl, d), view(vst, vl, dv)) else {
            return Ok(None);
        };
        kb.push((bk, kl.dims()[1]));
        vb.push((bv, kl.dims()[1]));
    }
    // An f32 cache is multiplied where it lies: one block (a prompt's own cache) as it is,
    // several (a chunked prompt, or a new chat turn after a shared prefix) gathered once into
    // one (n_kv, n_keys, d) buffer, the same values. f16 and bf16 caches are widened once
    // into such a buffer too (not once per task: each head has a task per query block).
    // Each is (data, offset, head stride, key stride); every element the products read,
    // (h, j, i) with h < n_kv, j < n_keys, i < d (dv), must be inside the data.
    type Flat<'a> = Option<(&'a [f32], usize, usize, usize)>;
    fn in_place<'a>(view: &View<'a>, n_kv: usize, n_keys: usize, width: usize) -> Flat<'a> {
        match view.data {
            Rows::F32(x) => {
                let last = view.off + (n_kv - 1) * view.sh + (n_keys - 1) * view.sj + width - 1;
                (last < x.len()).then_some((x, view.off, view.sh, view.sj))
            }
            _ => None,
        }
    }
    // Every block has one dtype (`Args::take`), so the first says whether all are f32.
    let in_cache = kb.len() == 1 && matches!(kb[0].0.data, Rows::F32(_));
    let gather = |blocks: &[(View<'_>, usize)], width: usize| {
        let mut all = Vec::with_capacity(n_kv * n_keys * width);
        let mut head = Vec::new();
        for h in 0..n_kv {
            widen_blocks(blocks, h, n_keys, &mut head);
            all.extend_from_slice(&head);
        }
        all
    };
    let (kcat, vcat) = if in_cache {
        (Vec::new(), Vec::new())
    } else {
        (gather(&kb, d), gather(&vb, dv))
    };
    let (k32, v32) = if in_cache {
        // A view past its data (never made by the cache) goes to the reference path.
        let (Some(k), Some(v)) = (
            in_place(&kb[0].0, n_kv, n_keys, d),
            in_place(&vb[0].0, n_kv, n_keys, dv),
        ) else {
            return Ok(None);
        };
        (k, v)
    } else {
        (
            (&kcat[..], 0, n_keys * d, d),
            (&vcat[..], 0, n_keys * dv, dv),
        )
    };
    let scale = scale as f32;
    let mut out = vec![0f32; n * n_heads * dv];
    let shared = SharedOut(out.as_mut_ptr());
    let qblocks = n.div_ceil(QUERY_BLOCK);
    let body = |tasks: std::ops::Range<usize>| {
        let rows_max = QUERY_BLOCK * group;
        let mut qbuf = vec![0f32; rows_max * d];
        let mut scores = vec![0f32; rows_max * n_keys];
        let mut obuf = vec![0f32; rows_max * dv];
        for t in tasks {
            let (h, b) = (t / qblocks, t % qblocks);
            let r0 = b * QUERY_BLOCK;
            let nr = QUERY_BLOCK.min(n - r0);
            let rows = nr * group;
            let lim = limit[r0..r0 + nr].iter().copied().max().unwrap_or(1);
            // Row i = r·group + g: query row r0 + r, query head h·group + g.
            for r in 0..nr {
                let at = ((r0 + r) * n_heads + h * group) * d;
                qbuf[r * group * d..(r + 1) * group * d].copy_from_slice(&qs[at..at + group * d]);
            }
            // Head h's keys, key j at j·k_cs.
            let (x, off, sh, k_cs) = k32;
            let kh = &x[off + h * sh..];
            let s_all = &mut scores[..rows * lim];
            scores_product(&qbuf[..rows * d], rows, d, kh, k_cs, lim, s_all, scale);
            for (i, s) in s_all.chunks_exact_mut(lim).enumerate() {
                if let Some(m) = &mask {
                    let r = r0 + i / group;
                    for (x, b) in s.iter_mut().zip(&m[r * n_keys..r * n_keys + lim]) {
                        *x += b;
                    }
                }
                super::vexp::softmax_in_place(s);
            }
            let (x, off, sh, v_rs) = v32;
            let vh = &x[off + h * sh..];
            values_product(s_all, rows, lim, vh, v_rs, dv, &mut obuf[..rows * dv]);
            for r in 0..nr {
                let at = ((r0 + r) * n_heads + h * group) * dv;
                let src = &obuf[r * group * dv..(r + 1) * group * dv];
                for (i, x) in src.iter().enumerate() {
                    // SAFETY: task (h, b) alone writes heads h·group..(h+1)·group of query
                    // rows r0..r0+nr, i.e. `out[at + i]` for i < group·dv, inside `out`
                    // (length n·n_heads·dv); each task runs on one thread, and `out`
                    // outlives the loop.
                    unsafe { *shared.ptr().add(at + i) = *x };
                }
            }
        }
    };
    super::parallel_for(n_kv * qblocks, body);
    drop((kb, vb));
    drop((ks, vs));
    Ok(Some(
        Tensor::from_vec(out, (n, n_heads * dv), q.device())?.to_dtype(q.dtype())?,
    ))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Decode attention's two row loops with the cache's f16/bf16 widened in registers: each
    //! key row meets the `group` query heads that share it (one 8-lane chain per head, in key
    //! element order), each value row is added into the group's outputs.
    use super::super::simd::{hsum, load8};
    use super::{Rows, View};
    use std::arch::x86_64::*;

    /// Most query heads per kv head these kernels take (more go through the plain loops).
    pub(super) const MAX_GROUP: usize = 8;

    /// Element `i` of `p` (stored as DT), widened.
    #[inline]
    unsafe fn load1<const DT: u8>(p: *const u8, i: usize) -> f32 {
        match DT {
            0 => *p.cast::<f32>().add(i),
            1 => half::f16::from_bits(*p.cast::<u16>().add(i)).to_f32(),
            _ => half::bf16::from_bits(*p.cast::<u16>().add(i)).to_f32(),
        }
    }

    /// How far ahead of the rows being read (in bytes) the loops ask for the cache's lines:
    /// one thread's sequential read leaves the hardware prefetcher behind (as in the
    /// quantized row kernels, `qmatvec`).
    const PREFETCH: usize = 4096;

    /// Asks for the lines of row `j + ahead` (`row_bytes` long at `row(j + ahead)` from `p`),
    /// where `ahead` rows are [`PREFETCH`] bytes.
    #[inline(always)]
    fn prefetch_row(p: *const u8, at: usize, row_bytes: usize) {
        let mut line = 0;
        while line < row_bytes {
            // SAFETY: `prefetch` is a hint that reads nothing architecturally and never
            // faults, whatever the address (SSE, part of x86_64's baseline); the address is
            // made with `wrapping_add`, as it may lie past the cache's data.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at + line).cast()) };
            line += 64;
        }
    }

    /// The base pointer of a view's data as bytes, and its element type as DT.
    fn base(v: &View<'_>) -> (*const u8, u8) {
        match &v.data {
            Rows::F32(x) => (x.as_ptr().cast(), 0),
            Rows::F16(x) => (x.as_ptr().cast(), 1),
            Rows::BF16(x) => (x.as_ptr().cast(), 2),
        }
    }

    /// `scores[g·stride + j0 + j] = scale · q_g · key (h, j)` for the block's `keys` rows and
    /// the `group` query rows `q[g·d..(g+1)·d]`. Each product is one 8-lane FMA chain over the
    /// row in order, then summed across lanes and the tail added: the same bits whichever rows
    /// share a pass (several rows go together so that enough chains are in flight).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; 1 <= group <= [`MAX_GROUP`]; `k.covers(h + 1, keys)`;
    /// `q.len() >= group·d`; `(group - 1)·stride + j0 + keys <= scores.len()`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn key_dots(
        k: &View<'_>,
        h: usize,
        keys: usize,
        q: &[f32],
        group: usize,
        scale: f32,
        scores: &mut [f32],
        j0: usize,
        stride: usize,
    ) {
        let (p, dt) = base(k);
        let size = if dt == 0 { 4 } else { 2 };
        let rows = |j: usize| (k.off + h * k.sh + j * k.sj) * size;
        let (d, qp, out) = (k.d, q.as_ptr(), scores.as_mut_ptr().add(j0));
        let ahead = (PREFETCH / (d * size)).max(1);
        // Rows per pass: eight chains in flight where the group is small.
        macro_rules! go {
            ($g:literal, $r:literal) => {{
                let mut j = 0;
                while keys - j >= $r {
                    for i in 0..$r {
                        prefetch_row(p, rows(j + i + ahead), d * size);
                    }
                    let at = std::array::from_fn(|i| p.add(rows(j + i)));
                    match dt {
                        0 => dots::<0, $g, $r>(at, d, qp, scale, out.add(j), stride),
                        1 => dots::<1, $g, $r>(at, d, qp, scale, out.add(j), stride),
                        _ => dots::<2, $g, $r>(at, d, qp, scale, out.add(j), stride),
                    }
                    j += $r;
                }
                while j < keys {
                    let at = [p.add(rows(j))];
                    match dt {
                        0 => dots::<0, $g, 1>(at, d, qp, scale, out.add(j), stride),
                        1 => dots::<1, $g, 1>(at, d, qp, scale, out.add(j), stride),
                        _ => dots::<2, $g, 1>(at, d, qp, scale, out.add(j), stride),
                    }
                    j += 1;
                }
            }};
        }
        match group {
            1 => go!(1, 8),
            2 => go!(2, 4),
            3 => go!(3, 2),
            4 => go!(4, 2),
            5 => go!(5, 1),
            6 => go!(6, 1),
            7 => go!(7, 1),
            _ => go!(8, 1),
        }
    }

    /// `R` key rows (`row[r]`, `d` values of type DT) against `G` query rows (`q`, d apart):
    /// `out[g·stride + r] = scale · q_g · row_r`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots<const DT: u8, const G: usize, const R: usize>(
        row: [*const u8; R],
        d: usize,
        q: *const f32,
        scale: f32,
        out: *mut f32,
        stride: usize,
    ) {
        let full = d / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); G]; R];
        let mut i = 0;
        while i < full {
            let qs: [__m256; G] = std::array::from_fn(|g| _mm256_loadu_ps(q.add(g * d + i)));
            for r in 0..R {
                let kv = load8::<DT>(row[r], i);
                for g in 0..G {
                    acc[r][g] = _mm256_fmadd_ps(qs[g], kv, acc[r][g]);
                }
            }
            i += 8;
        }
        for (r, (acc, &row)) in acc.iter().zip(&row).enumerate() {
            for (g, a) in acc.iter().enumerate() {
                let mut s = hsum(*a);
                for t in full..d {
                    s += *q.add(g * d + t) * load1::<DT>(row, t);
                }
                *out.add(g * stride + r) = s * scale;
            }
        }
    }

    /// `acc[g·dv + i] += scores[g·stride + j0 + j] · value (h, j)[i]` for the block's `keys`
    /// rows, in key order, for each of the `group` heads: per output one FMA after another in
    /// key order, so the same bits whichever rows share a pass (four go together, to load
    /// and store each output once per four rows).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; 1 <= group <= [`MAX_GROUP`]; `v.covers(h + 1, keys)`;
    /// `acc.len() >= group·dv`; `(group - 1)·stride + j0 + keys <= scores.len()`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn add_values(
        v: &View<'_>,
        h: usize,
        keys: usize,
        scores: &[f32],
        j0: usize,
        stride: usize,
        group: usize,
        acc: &mut [f32],
    ) {
        let (p, dt) = base(v);
        let size = if dt == 0 { 4 } else { 2 };
        let rows = |j: usize| (v.off + h * v.sh + j * v.sj) * size;
        let (dv, sp, ap) = (v.d, scores.as_ptr().add(j0), acc.as_mut_ptr());
        let ahead = (PREFETCH / (dv * size)).max(1);
        const R: usize = 4;
        let mut j = 0;
        while j < keys {
            for i in 0..R {
                prefetch_row(p, rows(j + i + ahead), dv * size);
            }
            let at: [*const u8; R] = std::array::from_fn(|i| p.add(rows((j + i).min(keys - 1))));
            let n = R.min(keys - j);
            macro_rules! go {
                ($dt:literal) => {
                    if n == R {
                        axpy::<$dt, R>(at, dv, sp.add(j), stride, group, ap)
                    } else {
                        for (r, &row) in at.iter().enumerate().take(n) {
                            axpy::<$dt, 1>([row], dv, sp.add(j + r), stride, group, ap)
                        }
                    }
                };
            }
            match dt {
                0 => go!(0),
                1 => go!(1),
                _ => go!(2),
            }
            j += n;
        }
    }

    /// `acc[g·dv + i] += Σ_r p[g·stride + r] · row_r[i]`, the rows one after another.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy<const DT: u8, const R: usize>(
        row: [*const u8; R],
        dv: usize,
        p: *const f32,
        stride: usize,
        group: usize,
        acc: *mut f32,
    ) {
        let full = dv / 8 * 8;
        let mut i = 0;
        while i < full {
            let xs: [__m256; R] = std::array::from_fn(|r| load8::<DT>(row[r], i));
            for g in 0..group {
                let a = acc.add(g * dv + i);
                let mut s = _mm256_loadu_ps(a);
                for (r, x) in xs.iter().enumerate() {
                    s = _mm256_fmadd_ps(_mm256_set1_ps(*p.add(g * stride + r)), *x, s);
                }
                _mm256_storeu_ps(a, s);
            }
            i += 8;
        }
        for t in full..dv {
            for g in 0..group {
                let a = acc.add(g * dv + t);
                for (r, &rw) in row.iter().enumerate() {
                    *a = (*p.add(g * stride + r)).mul_add(load1::<DT>(rw, t), *a);
                }
            }
        }
    }
}

/// Elsewhere `simd` is never true (no AVX2), so these are never called.
#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    use super::View;
    pub(super) const MAX_GROUP: usize = 0;
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn key_dots(
        _: &View<'_>,
        _: usize,
        _: usize,
        _: &[f32],
        _: usize,
        _: f32,
        _: &mut [f32],
        _: usize,
        _: usize,
    ) {
        unreachable!("decode attention's row kernels need AVX2")
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn add_values(
        _: &View<'_>,
        _: usize,
        _: usize,
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
        _: &mut [f32],
    ) {
        unreachable!("decode attention's row kernels need AVX2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::attention::{attention_reference, block_mask};

    type Kernel = fn(&Tensor, &[Tensor], &[Tensor], Option<&Tensor>, f64) -> Result<Option<Tensor>>;

    /// `kernel` on k, v in one block, in `q`'s dtype (f32: an f16 or bf16 cache is widened,
    /// the output not rounded to the cache's type) and within 1e-5 of the matmul path on the
    /// same widened keys and values, and bit-identical on the same keys cut into blocks at
    /// `cuts` (a paged cache).
    fn check(
        kernel: Kernel,
        q: &Tensor,
        (k, v): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        cuts: &[usize],
        what: &str,
    ) {
        let got = kernel(
            q,
            std::slice::from_ref(k),
            std::slice::from_ref(v),
            mask,
            0.3,
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.dtype(), q.dtype());
        let (mut kb, mut vb) = (Vec::new(), Vec::new());
        for w in cuts.windows(2).filter(|w| w[1] > w[0]) {
            kb.push(k.narrow(1, w[0], w[1] - w[0]).unwrap());
            vb.push(v.narrow(1, w[0], w[1] - w[0]).unwrap());
        }
        let paged = kernel(q, &kb, &vb, mask, 0.3).unwrap().unwrap();
        let diff = crate::max_abs_diff(&paged, &got).unwrap();
        assert_eq!(diff, 0.0, "{what}: {} blocks", kb.len());
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want = attention_reference(q, &f32(k), &f32(v), mask, 0.3).unwrap();
        let diff = crate::max_abs_diff(&got, &want).unwrap();
        assert!(diff < 1e-5, "{what}: {diff}");
    }

    #[test]
    fn matches_the_matmul_path_on_strided_caches() {
        // Odd sizes, GQA, a cache buffer with room past the filled keys, and a mask. Groups
        // of 1 to 9 query heads per kv head (the row kernels take up to 8) and widths with a
        // tail past the last 8 values.
        for (n, heads, kv, d, keys, cap) in [
            (1, 4, 2, 24, 37, 50),
            (3, 6, 3, 20, 9, 9),
            (1, 2, 2, 8, 1, 4),
            (2, 12, 3, 13, 70, 80),
            (1, 8, 1, 16, 30, 40),
            (1, 9, 1, 8, 5, 5),
        ] {
            let q = crate::seeded_randn(1, 1.0, &[n, heads, d]);
            let kb = crate::seeded_randn(2, 1.0, &[kv, cap, d]);
            let vb = crate::seeded_randn(3, 1.0, &[kv, cap, d + 3]);
            let k = kb.narrow(1, 0, keys).unwrap();
            let v = vb.narrow(1, 0, keys).unwrap();
            let t: Vec<i64> = (0..keys as i64).collect();
            let mask = if n <= keys {
                block_mask(&t, n, &Device::Cpu).unwrap()
            } else {
                None
            };
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let (k, v) = (k.to_dtype(dtype).unwrap(), v.to_dtype(dtype).unwrap());
                let cuts = [0, keys / 3, keys / 3 + 1, keys];
                let what = format!("{n} {heads} {kv} {d} {keys} {dtype:?}");
                check(decode_attention, &q, (&k, &v), mask.as_ref(), &cuts, &what);
            }
        }
    }

    #[test]
    fn prefill_matches_the_matmul_path() {
        // Query blocks cut mid-image and at odd sizes, GQA, a strided cache with cached keys
        // before the new ones, image blocks (shared T) whose keys lie past some queries.
        for (n, past, heads, kv, d, dv, cap) in [
            (9, 0, 2, 1, 16, 16, 9),
            (45, 7, 6, 3, 20, 23, 70),
            (70, 0, 4, 4, 8, 8, 70),
        ] {
            let keys = past + n;
            let q = crate::seeded_randn(1, 1.0, &[n, heads, d]);
            let kb = crate::seeded_randn(2, 1.0, &[kv, cap, d]);
            let vb = crate::seeded_randn(3, 1.0, &[kv, cap, dv]);
            let k = kb.narrow(1, 0, keys).unwrap();
            let v = vb.narrow(1, 0, keys).unwrap();
            // Text, then an image of 30 tokens sharing one T (spanning a query block edge at
            // 32 new tokens), then text.
            let mut t = Vec::new();
            for i in 0..keys {
                let img = (past + 3..past + 33).contains(&i);
                t.push(if img { past as i64 + 3 } else { i as i64 });
            }
            let mask = block_mask(&t, n, &Device::Cpu).unwrap();
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let (k, v) = (k.to_dtype(dtype).unwrap(), v.to_dtype(dtype).unwrap());
                let cuts = [0, keys / 2, keys / 2 + 1, keys];
                let what = format!("{n} {past} {heads} {kv} {dtype:?}");
                check(prefill_attention, &q, (&k, &v), mask.as_ref(), &cuts, &what);
            }
        }
        // Without a mask every key is seen.
        let q = crate::seeded_randn(4, 1.0, &[12, 2, 8]);
        let k = crate::seeded_randn(5, 1.0, &[1, 12, 8]);
        let got = prefill_attention(
            &q,
            std::slice::from_ref(&k),
            std::slice::from_ref(&k),
            None,
            0.5,
        )
        .unwrap()
        .unwrap();
        let want = attention_reference(&q, &k, &k, None, 0.5).unwrap();
        assert!(crate::max_abs_diff(&got, &want).unwrap() < 1e-5);
    }

    #[test]
    fn declines_what_it_does_not_do() {
        let declines = |q: &Tensor, k: &[Tensor], v: &[Tensor]| {
            decode_attention(q, k, v, None, 1.0).unwrap().is_none()
        };
        let k = [crate::seeded_randn(2, 1.0, &[2, 12, 8])];
        // Too many query rows.
        assert!(declines(
            &crate::seeded_randn(1, 1.0, &[MAX_QUERIES + 1, 2, 8]),
            &k,
            &k
        ));
        // Heads that do not divide into the kv heads.
        assert!(declines(&crate::seeded_randn(1, 1.0, &[1, 3, 8]), &k, &k));
        // Blocks that disagree in width, or keys without values.
        let q = crate::seeded_randn(1, 1.0, &[1, 2, 8]);
        let mixed = [k[0].clone(), crate::seeded_randn(2, 1.0, &[2, 5, 4])];
        assert!(declines(&q, &mixed, &mixed));
        assert!(declines(&q, &k, &[]));
        assert!(!declines(&q, &k, &k));
        // A key dim that differs from the query's.
        assert!(declines(&crate::seeded_randn(1, 1.0, &[1, 2, 4]), &k, &k));
    }
}
