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
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        let normed = xf.broadcast_mul(&inv)?.to_dtype(dtype)?;
        Ok(normed.broadcast_mul(&self.weight)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
