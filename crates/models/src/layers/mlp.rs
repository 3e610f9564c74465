//! The gated (SwiGLU) feed-forward: down(silu(gate(x)) * up(x)).

use super::Linear;
use crate::error::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct GatedMlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl GatedMlp {
    pub fn load(vb: &VarBuilder, hidden: usize, intermediate: usize) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(vb, hidden, intermediate, "gate_proj")?,
            up: Linear::load(vb, hidden, intermediate, "up_proj")?,
            down: Linear::load(vb, intermediate, hidden, "down_proj")?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate.forward(x)?.silu()?;
        let u = self.up.forward(x)?;
        self.down.forward(&(g * u)?)
    }
}
