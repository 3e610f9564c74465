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
        let (g, u) = (self.gate.forward(x)?, self.up.forward(x)?);
        let h = match silu_mul_f32(&g, &u)? {
            Some(h) => h,
            None => (g.silu()? * u)?,
        };
        self.down.forward(&h)
    }
}

/// `silu(g) · u` in one pass (a vector exp; candle's `silu` runs libm's one value at a time on
/// one thread) for contiguous f32 CPU tensors of one shape without gradients; `None` otherwise.
fn silu_mul_f32(g: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    use crate::kernels::plain_cpu_f32 as plain;
    if !(plain(g) && plain(u)) || g.shape() != u.shape() {
        return Ok(None);
    }
    let out = {
        let (gv, uv) = (crate::kernels::cpu_f32(g), crate::kernels::cpu_f32(u));
        let (Some(gs), Some(us)) = (gv.get(), uv.get()) else {
            return Ok(None);
        };
        let width = g.dims().last().copied().unwrap_or(1).max(1);
        crate::kernels::par_rows(gs.len() / width, width, |rows, o| {
            let r = rows.start * width..rows.end * width;
            crate::kernels::vexp::silu_mul(&gs[r.clone()], &us[r], o);
        })
    };
    Ok(Some(Tensor::from_vec(out, g.shape(), g.device())?))
}
