//! Attention for a few query rows (decode) that reads the KV cache where it lies.
//!
//! candle's batched matmul packs K and V into panels before multiplying, which for one query
//! row is a full copy of the cache per layer and step. Here each (kv head, query row) task
//! streams its head's keys once for the dot products of all the query heads sharing it (GQA),
//! then its values once for the weighted sum: the cache is read once, never written.

use super::matvec::SharedOut;
use crate::error::Result;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use half::{bf16, f16};

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
    /// Row (h, j) as f32: borrowed for f32, else converted into `scratch`.
    fn row<'s>(&'s self, h: usize, j: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        let at = self.off + h * self.sh + j * self.sj;
        match &self.data {
            Rows::F32(v) => &v[at..at + self.d],
            Rows::F16(v) => {
                for (o, x) in scratch.iter_mut().zip(&v[at..at + self.d]) {
                    *o = x.to_f32();
                }
                scratch
            }
            Rows::BF16(v) => {
                for (o, x) in scratch.iter_mut().zip(&v[at..at + self.d]) {
                    *o = x.to_f32();
                }
                scratch
            }
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

/// `attention` (layers::attention) for q: (n, n_heads, d), k: (n_kv, n_keys, d),
/// v: (n_kv, n_keys, dv), any strides with the last dimension contiguous, on the CPU without
/// gradients and with n ≤ [`MAX_QUERIES`]; `None` when it does not apply. The result is
/// (n, n_heads·dv) in v's dtype, identical for any thread count.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !matches!(k.device(), Device::Cpu) || q.track_op() || k.track_op() || v.track_op() {
        return Ok(None);
    }
    let (n, n_heads, d) = q.dims3()?;
    let (n_kv, n_keys, dk) = k.dims3()?;
    let (n_kv_v, n_keys_v, dv) = v.dims3()?;
    if n == 0
        || n > MAX_QUERIES
        || dk != d
        || n_kv_v != n_kv
        || n_keys_v != n_keys
        || n_kv == 0
        || !n_heads.is_multiple_of(n_kv)
        || k.dtype() != v.dtype()
        || k.stride()[2] != 1
        || v.stride()[2] != 1
    {
        return Ok(None);
    }
    let group = n_heads / n_kv;
    let qs: Vec<f32> = q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mask: Option<Vec<f32>> = match mask {
        Some(m) if m.dims() == [n, n_keys] => {
            Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        }
        Some(_) => return Ok(None),
        None => None,
    };
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Some(kv_k), Some(kv_v)) = (view(&ks, kl, d), view(&vs, vl, dv)) else {
        return Ok(None);
    };
    let scale = scale as f32;
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
            for j in 0..n_keys {
                let key = kv_k.row(h, j, &mut scratch);
                for g in 0..group {
                    scores[g * n_keys + j] = dot(qrow(g), key) * scale;
                }
            }
            for g in 0..group {
                let s = &mut scores[g * n_keys..(g + 1) * n_keys];
                if let Some(m) = &mask {
                    for (x, b) in s.iter_mut().zip(&m[r * n_keys..(r + 1) * n_keys]) {
                        *x += b;
                    }
                }
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for x in s.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for x in s.iter_mut() {
                    *x /= sum;
                }
            }
            acc.fill(0.0);
            for j in 0..n_keys {
                let val = kv_v.row(h, j, &mut scratch);
                for g in 0..group {
                    let p = scores[g * n_keys + j];
                    for (a, x) in acc[g * dv..(g + 1) * dv].iter_mut().zip(val) {
                        *a += p * x;
                    }
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
    drop((ks, vs));
    Ok(Some(
        Tensor::from_vec(out, (n, n_heads * dv), q.device())?.to_dtype(v.dtype())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::attention::{attention_reference, block_mask};

    #[test]
    fn matches_the_matmul_path_on_strided_caches() {
        // Odd sizes, GQA, a cache buffer with room past the filled keys, and a mask.
        for (n, heads, kv, d, keys, cap) in [
            (1, 4, 2, 24, 37, 50),
            (3, 6, 3, 20, 9, 9),
            (1, 2, 2, 8, 1, 4),
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
                let got = decode_attention(&q, &k, &v, mask.as_ref(), 0.3)
                    .unwrap()
                    .unwrap();
                assert_eq!(got.dtype(), dtype);
                let tol = if dtype == DType::F32 { 1e-5 } else { 3e-2 };
                let want = attention_reference(
                    &q,
                    &k.to_dtype(DType::F32).unwrap(),
                    &v.to_dtype(DType::F32).unwrap(),
                    mask.as_ref(),
                    0.3,
                )
                .unwrap();
                let diff = crate::max_abs_diff(&got.to_dtype(DType::F32).unwrap(), &want).unwrap();
                assert!(diff < tol, "{n} {heads} {kv} {d} {keys} {dtype:?}: {diff}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_do() {
        let q = crate::seeded_randn(1, 1.0, &[MAX_QUERIES + 1, 2, 8]);
        let k = crate::seeded_randn(2, 1.0, &[2, 12, 8]);
        assert!(decode_attention(&q, &k, &k, None, 1.0).unwrap().is_none());
        // Heads that do not divide into the kv heads.
        let q = crate::seeded_randn(1, 1.0, &[1, 3, 8]);
        assert!(decode_attention(&q, &k, &k, None, 1.0).unwrap().is_none());
        // A key dim that differs from the query's.
        let q = crate::seeded_randn(1, 1.0, &[1, 2, 4]);
        assert!(decode_attention(&q, &k, &k, None, 1.0).unwrap().is_none());
    }
}
