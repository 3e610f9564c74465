//! Scaled dot-product attention for one sequence: GQA without copying K/V per head, an
//! explicit additive mask, softmax in f32.

use crate::error::Result;
use crate::kv::KvBlocks;
use candle_core::{DType, Device, Tensor, D};

/// The block mask of NEO (spec §7), which is also plain causal when no two tokens share a T:
/// key m is visible to query j iff `m <= past + j` or `t[m] == t[past + j]`.
///
/// `key_t` holds the T index of every key (cached ones first, then the new ones); the last
/// `n_new` keys are the queries. Returns `None` when the mask would allow everything (one
/// query), else an (n_new, n_keys) f32 tensor of 0 and -inf.
pub fn block_mask(key_t: &[i64], n_new: usize, device: &Device) -> Result<Option<Tensor>> {
    let n_keys = key_t.len();
    let past = n_keys - n_new;
    if n_new <= 1 {
        return Ok(None);
    }
    let mut m = vec![0f32; n_new * n_keys];
    for j in 0..n_new {
        let tj = key_t[past + j];
        for (k, &tk) in key_t.iter().enumerate() {
            if k > past + j && tk != tj {
                m[j * n_keys + k] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Some(Tensor::from_vec(m, (n_new, n_keys), device)?))
}

/// q: (n, n_heads, dq); k: (n_kv, n_keys, dq); v: (n_kv, n_keys, dv) → (n, n_heads * dv),
/// with K and V given as a KV cache's blocks ([`KvBlocks`], keys in order over the blocks).
///
/// Query head g reads kv head g / (n_heads / n_kv): the query heads of a group are stacked
/// into one matmul against their shared K, so K and V are never repeated. On the CPU the
/// blocks are read where they lie (a prompt over several blocks gathers each head's keys and
/// values into one scratch matrix per task); elsewhere they are joined into one tensor.
pub fn attention(q: &Tensor, kv: &KvBlocks, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    if let Some(out) = crate::kernels::attn::decode_attention(q, &kv.k, &kv.v, mask, scale)? {
        return Ok(out);
    }
    if let Some(out) = crate::kernels::attn::prefill_attention(q, &kv.k, &kv.v, mask, scale)? {
        return Ok(out);
    }
    let (k, v) = kv.joined()?;
    // A cache stored in another dtype than the queries' (f16 keys for f32 compute) is widened.
    let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
    attention_reference(q, &k, &v, mask, scale)
}

/// [`attention_reference`], for the `attn_prefill` benchmark.
#[doc(hidden)]
pub fn attention_reference_for_bench(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    attention_reference(q, k, v, mask, scale)
}

/// [`attention`] through candle's matmuls (prompts, gradients, other devices; and the
/// reference the decode kernel is tested against).
pub(crate) fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (n, n_heads, dq) = q.dims3()?;
    let (n_kv, n_keys, _) = k.dims3()?;
    let dv = v.dim(D::Minus1)?;
    let group = n_heads / n_kv;
    // (n, n_kv, group, dq) -> (n_kv, group, n, dq) -> (n_kv, group*n, dq)
    let qg = q
        .reshape((n, n_kv, group, dq))?
        .permute((1, 2, 0, 3))?
        .contiguous()?
        .reshape((n_kv, group * n, dq))?;
    // candle's CPU matmul takes any row and column strides; other devices get contiguous K, V.
    let cpu = k.device().is_cpu();
    let kt = if cpu { k.t()? } else { k.t()?.contiguous()? };
    let v = if cpu { v.clone() } else { v.contiguous()? };
    let scores = (qg.matmul(&kt)? * scale)?; // (n_kv, group*n, n_keys)
    let mut scores = scores.to_dtype(DType::F32)?;
    if let Some(mask) = mask {
        scores = scores
            .reshape((n_kv, group, n, n_keys))?
            .broadcast_add(mask)?
            .reshape((n_kv, group * n, n_keys))?;
    }
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
    let out = probs.matmul(&v)?; // (n_kv, group*n, dv)
    Ok(out
        .reshape((n_kv, group, n, dv))?
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((n, n_heads * dv))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_plus_same_t() {
        // <img> C C </img> x : T = 0 1 1 2 3
        let t = [0, 1, 1, 2, 3];
        let m: Vec<Vec<f32>> = block_mask(&t, 5, &Device::Cpu)
            .unwrap()
            .unwrap()
            .to_vec2()
            .unwrap();
        let allowed: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|x| *x == 0.0).collect())
            .collect();
        assert_eq!(allowed[0], vec![true, false, false, false, false]);
        assert_eq!(allowed[1], vec![true, true, true, false, false]);
        assert_eq!(allowed[2], vec![true, true, true, false, false]);
        assert_eq!(allowed[3], vec![true, true, true, true, false]);
        assert_eq!(allowed[4], vec![true; 5]);
    }

    #[test]
    fn mask_with_past_keys() {
        // two cached keys, then a chunk of two new image tokens sharing T=5.
        let t = [3, 4, 5, 5];
        let m: Vec<Vec<f32>> = block_mask(&t, 2, &Device::Cpu)
            .unwrap()
            .unwrap()
            .to_vec2()
            .unwrap();
        assert!(m.iter().all(|r| r.iter().all(|x| *x == 0.0)));
        assert!(block_mask(&[0, 1, 2], 1, &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn gqa_matches_repeated_heads() {
        let dev = Device::Cpu;
        let q = crate::seeded_randn(1, 1.0, &[3, 4, 8]);
        let k = crate::seeded_randn(2, 1.0, &[2, 3, 8]);
        let v = crate::seeded_randn(3, 1.0, &[2, 3, 5]);
        let mask = block_mask(&[0, 1, 2], 3, &dev).unwrap();
        let kv = KvBlocks::single(k.clone(), v.clone());
        let out = attention(&q, &kv, mask.as_ref(), 0.5).unwrap();
        // naive: per head
        for h in 0..4 {
            let kv = h / 2;
            let qh = q.narrow(1, h, 1).unwrap().squeeze(1).unwrap();
            let kh = k.get(kv).unwrap();
            let vh = v.get(kv).unwrap();
            let s = (qh.matmul(&kh.t().unwrap()).unwrap() * 0.5).unwrap();
            let s = s.broadcast_add(mask.as_ref().unwrap()).unwrap();
            let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
            let o = p.matmul(&vh).unwrap();
            let got = out.narrow(1, h * 5, 5).unwrap();
            let d: f32 = crate::max_abs_diff(&o, &got).unwrap();
            assert!(d < 1e-5, "head {h}: {d}");
        }
    }
}
