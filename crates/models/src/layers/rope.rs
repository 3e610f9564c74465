//! Rotary position embeddings in the conventions the models use:
//! - rotate-half (NeoX; Qwen3 and NEO's T/H/W axes): element i pairs with i + d/2;
//! - interleaved (GPT-J; NEO's 2-D patch rotation): element 2i pairs with 2i + 1.
//!
//! Tables follow Hugging Face's numerics: `inv_freq[i] = 1 / base^(2i/d)` with an f32 power,
//! angle = f32(position) * inv_freq, cos/sin in f32.

use crate::error::Result;
use candle_core::{DType, Device, Tensor, D};

/// `1 / base^(2i/d)` for i in 0..d/2, in f32 as PyTorch computes it.
pub fn inv_freq(dim: usize, base: f64) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// cos and sin of `pos * inv_freq` for each position: two (n, d/2) f32 tensors.
pub fn tables(positions: &[i64], inv_freq: &[f32], device: &Device) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        let p = p as f32;
        for &f in inv_freq {
            let a = p * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let n = positions.len();
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

/// Rotate-half RoPE. `x`: (n, heads, d); `cos`/`sin`: (n, d/2) f32.
pub fn rotate_half(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some(y) = rotate_half_f32(x, cos, sin)? {
        return Ok(y);
    }
    let d = x.dim(D::Minus1)?;
    let half = d / 2;
    let dtype = x.dtype();
    let cos = cos.to_dtype(dtype)?.unsqueeze(1)?;
    let sin = sin.to_dtype(dtype)?.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Ok(Tensor::cat(&[a, b], D::Minus1)?)
}

/// [`rotate_half`] in one pass for f32 on the CPU without gradients (each decode step ran its
/// ten tensor operations twice per layer); the same products, differences and sums, so the
/// same bits. `None` where it does not apply.
fn rotate_half_f32(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    use crate::kernels::plain_cpu_f32 as plain;
    if !(plain(x) && plain(cos) && plain(sin)) {
        return Ok(None);
    }
    let Ok((n, heads, d)) = x.dims3() else {
        return Ok(None);
    };
    let half = d / 2;
    if d % 2 != 0 || cos.dims() != [n, half] || sin.dims() != [n, half] {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    let out = {
        let (xs, cs, ss) = (
            crate::kernels::cpu_f32(&x),
            crate::kernels::cpu_f32(&cos),
            crate::kernels::cpu_f32(&sin),
        );
        let (Some(xs), Some(cs), Some(ss)) = (xs.get(), cs.get(), ss.get()) else {
            return Ok(None);
        };
        crate::kernels::par_rows(n, heads * d, |tokens, out| {
            for (r, rows) in tokens.zip(out.chunks_exact_mut(heads * d)) {
                let (c, s) = (&cs[r * half..(r + 1) * half], &ss[r * half..(r + 1) * half]);
                for (h, o) in rows.chunks_exact_mut(d).enumerate() {
                    let at = (r * heads + h) * d;
                    let (x1, x2) = xs[at..at + d].split_at(half);
                    let (o1, o2) = o.split_at_mut(half);
                    for i in 0..half {
                        o1[i] = x1[i] * c[i] - x2[i] * s[i];
                        o2[i] = x2[i] * c[i] + x1[i] * s[i];
                    }
                }
            }
        })
    };
    Ok(Some(Tensor::from_vec(out, (n, heads, d), x.device())?))
}

/// Interleaved RoPE. `x`: (n, d); `cos`/`sin`: (n, d/2) — pair (2i, 2i+1) uses column i.
pub fn interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    let x = x.to_dtype(DType::F32)?.reshape((n, d / 2, 2))?;
    let a = x.narrow(2, 0, 1)?.squeeze(2)?;
    let b = x.narrow(2, 1, 1)?.squeeze(2)?;
    let ra = (a.mul(cos)? - b.mul(sin)?)?;
    let rb = (a.mul(sin)? + b.mul(cos)?)?;
    Ok(Tensor::stack(&[ra, rb], 2)?.reshape((n, d))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_half_pairs_i_with_i_plus_half() {
        let dev = Device::Cpu;
        // d = 4: pairs (0,2) and (1,3); angle pi/2 on pair 0, 0 on pair 1.
        let x = Tensor::new(&[[[1f32, 2., 3., 4.]]], &dev).unwrap();
        let cos = Tensor::new(&[[0f32, 1.]], &dev).unwrap();
        let sin = Tensor::new(&[[1f32, 0.]], &dev).unwrap();
        let y: Vec<f32> = rotate_half(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![-3., 2., 1., 4.]);
    }

    #[test]
    fn one_pass_rotate_half_has_the_tensor_ops_bits() {
        let x = crate::seeded_randn(1, 1.0, &[5, 3, 8]);
        let t = tables(&[0, 3, 7, 100, 9000], &inv_freq(8, 1e6), &Device::Cpu).unwrap();
        let fused = rotate_half(&x, &t.0, &t.1).unwrap();
        // The tensor-op path, taken for a tensor that tracks gradients.
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let ops = rotate_half(var.as_tensor(), &t.0, &t.1).unwrap();
        assert_eq!(crate::max_abs_diff(&fused, &ops).unwrap(), 0.0);
    }

    #[test]
    fn interleaved_pairs_neighbours() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2., 3., 4.]], &dev).unwrap();
        let cos = Tensor::new(&[[0f32, 1.]], &dev).unwrap();
        let sin = Tensor::new(&[[1f32, 0.]], &dev).unwrap();
        let y: Vec<f32> = interleaved(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![-2., 1., 3., 4.]);
    }

    #[test]
    fn inv_freq_values() {
        let f = inv_freq(128, 1e6);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 1e6f32.powf(-2.0 / 128.0)).abs() < 1e-6);
        assert_eq!(f.len(), 64);
    }
}
