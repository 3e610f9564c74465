//! The one linear-layer type models use (y = x W^T), whatever the weight format.

use crate::error::Result;
use crate::weights;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

/// A bias-free linear layer with weight (out, in). Quantized formats join this type as
/// variants, so no model special-cases a format.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
}

impl Linear {
    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, name: &str) -> Result<Self> {
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let weight = weights::get(&vb.pp(name), (out_dim, in_dim), "weight", init)?;
        Ok(Self { weight })
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Self { weight }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// x: (.., in) -> (.., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::Linear::new(self.weight.clone(), None).forward(x)?)
    }
}
