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
    let mut out = vec![0f32; g.elem_count()];
    {
        let (gv, uv) = (crate::kernels::cpu_f32(g), crate::kernels::cpu_f32(u));
        let (Some(gs), Some(us)) = (gv.get(), uv.get()) else {
            return Ok(None);
        };
        const CHUNK: usize = 1 << 14;
        let shared = crate::kernels::matvec::SharedOut(out.as_mut_ptr());
        let len = gs.len();
        let body = |chunks: std::ops::Range<usize>| {
            for c in chunks {
                let r = c * CHUNK..((c + 1) * CHUNK).min(len);
                // SAFETY: chunk c alone writes out[r] (inside `out`, of length len), and each
                // chunk goes to one thread.
                let o =
                    unsafe { std::slice::from_raw_parts_mut(shared.ptr().add(r.start), r.len()) };
                crate::kernels::vexp::silu_mul(&gs[r.clone()], &us[r], o);
            }
        };
        let chunks = len.div_ceil(CHUNK);
        if chunks > 1 {
            crate::kernels::parallel_for(chunks, body);
        } else {
            body(0..chunks);
        }
    }
    Ok(Some(Tensor::from_vec(out, g.shape(), g.device())?))
}
