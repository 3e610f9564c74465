//! RMSNorm as Hugging Face computes it: in f32, `x * rsqrt(mean(x^2) + eps)`, cast back to the
//! input dtype, then multiplied by the weight.

use crate::error::Result;
use crate::weights;
use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64, name: &str) -> Result<Self> {
        let weight = weights::get(&vb.pp(name), dim, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    /// Normalises over the last dimension. Built from differentiable tensor ops so the same
    /// code trains.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.forward_f32(x)? {
            return Ok(y);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        let normed = xf.broadcast_mul(&inv)?.to_dtype(dtype)?;
        Ok(normed.broadcast_mul(&self.weight)?)
    }
}

impl RmsNorm {
    /// [`RmsNorm::forward`] in one pass per row for f32 on the CPU without gradients (a
    /// decode step ran its nine tensor operations four times per layer): the same formula in
    /// f32, the sum of squares taken in order. `None` where it does not apply.
    fn forward_f32(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let w = &self.weight;
        let d = x.dim(D::Minus1)?;
        use crate::kernels::plain_cpu_f32 as plain;
        if !(plain(x) && plain(w)) || w.dims() != [d] || d == 0 {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let out = {
            let (xs, ws) = (crate::kernels::cpu_f32(&x), crate::kernels::cpu_f32(w));
            let (Some(xs), Some(ws)) = (xs.get(), ws.get()) else {
                return Ok(None);
            };
            let eps = self.eps as f32;
            crate::kernels::par_rows(xs.len() / d, d, |rows, out| {
                let xs = &xs[rows.start * d..rows.end * d];
                for (o, row) in out.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                    let var = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
                    let inv = 1.0 / (var + eps).sqrt();
                    for ((o, v), g) in o.iter_mut().zip(row).zip(ws) {
                        *o = (v * inv) * g;
                    }
                }
            })
        };
        Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_pass_path_agrees_with_the_tensor_ops() {
        let x = crate::seeded_randn(1, 3.0, &[7, 2, 96]);
        let n = RmsNorm {
            weight: crate::seeded_randn(2, 1.0, &[96]),
            eps: 1e-6,
        };
        let fused = n.forward(&x).unwrap();
        // The tensor-op path, taken for a tensor that tracks gradients.
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let ops = n.forward(var.as_tensor()).unwrap();
        let scale: f32 = ops.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        let d = crate::max_abs_diff(&fused, &ops).unwrap();
        assert!(d <= 1e-6 * scale, "{d} of {scale}");
    }

    #[test]
    fn matches_formula() {
        let x = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu).unwrap();
        let n = RmsNorm {
            weight: Tensor::new(&[1f32, 1., 2., 0.5], &Device::Cpu).unwrap(),
            eps: 1e-6,
        };
        let y: Vec<f32> = n
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let r = 1.0 / ((1. + 4. + 9. + 16.) / 4.0f32 + 1e-6).sqrt();
        let want = [r, 2. * r, 6. * r, 2. * r];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
