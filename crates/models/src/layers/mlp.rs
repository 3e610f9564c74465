//! The gated (SwiGLU) feed-forward: down(silu(gate(x)) * up(x)).

use super::{Linear, LinearGroup};
use crate::error::Result;
use candle_core::{CpuStorage, Storage, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct GatedMlp {
    /// gate and up, one product where their weights stack ([`LinearGroup`]).
    gate_up: LinearGroup,
    down: Linear,
}

impl GatedMlp {
    pub fn load(vb: &VarBuilder, hidden: usize, intermediate: usize) -> Result<Self> {
        let gate = Linear::load(vb, hidden, intermediate, "gate_proj")?;
        let up = Linear::load(vb, hidden, intermediate, "up_proj")?;
        Ok(Self {
            gate_up: LinearGroup::new(vec![gate, up])?,
            down: Linear::load(vb, intermediate, hidden, "down_proj")?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut parts = self.gate_up.forward(x)?.into_iter();
        let (Some(g), Some(u)) = (parts.next(), parts.next()) else {
            return Err(crate::ModelError::Weights(
                "the gate/up group gave fewer than two outputs".into(),
            ));
        };
        let h = match silu_mul_f32(&g, &u)? {
            Some(h) => h,
            None => (g.silu()? * u)?,
        };
        self.down.forward(&h)
    }
}

/// A CPU f32 tensor's rows, where each row is contiguous and the rows are `stride` apart in
/// its storage (a contiguous tensor, or one part of a stacked product's output).
struct Rows<'a> {
    values: &'a [f32],
    start: usize,
    stride: usize,
}

impl Rows<'_> {
    fn row(&self, r: usize, width: usize) -> &[f32] {
        let at = self.start + r * self.stride;
        &self.values[at..at + width]
    }
}

/// `(rows, width, start, row stride)` of a 1-D or 2-D tensor whose last dimension is
/// contiguous, or the rows of a contiguous tensor of any rank; `None` otherwise.
fn row_layout(t: &Tensor) -> Option<(usize, usize, usize, usize)> {
    let layout = t.layout();
    let width = t.dims().last().copied().unwrap_or(1).max(1);
    let rows = t.elem_count() / width;
    if let Some((start, _)) = layout.contiguous_offsets() {
        return Some((rows, width, start, width));
    }
    match (t.dims(), layout.stride()) {
        (&[_, _], &[stride, 1]) if stride >= width => {
            Some((rows, width, layout.start_offset(), stride))
        }
        _ => None,
    }
}

/// `silu(g) · u` in one pass (a vector exp; candle's `silu` runs libm's one value at a time on
/// one thread) for f32 CPU tensors of one shape without gradients whose rows are contiguous
/// (the two halves of a stacked gate/up product are); `None` otherwise.
fn silu_mul_f32(g: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    use crate::kernels::plain_cpu_f32 as plain;
    if !(plain(g) && plain(u)) || g.shape() != u.shape() {
        return Ok(None);
    }
    let (Some((rows, width, g0, gs)), Some((_, _, u0, us))) = (row_layout(g), row_layout(u)) else {
        return Ok(None);
    };
    let out = {
        let (g_storage, _) = g.storage_and_layout();
        let (u_storage, _) = u.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(gv)), Storage::Cpu(CpuStorage::F32(uv))) =
            (&*g_storage, &*u_storage)
        else {
            return Ok(None);
        };
        let fits = |v: &[f32], start: usize, stride: usize| {
            rows == 0 || start + (rows - 1) * stride + width <= v.len()
        };
        if !(fits(gv, g0, gs) && fits(uv, u0, us)) {
            return Ok(None);
        }
        let (gr, ur) = (
            Rows {
                values: gv,
                start: g0,
                stride: gs,
            },
            Rows {
                values: uv,
                start: u0,
                stride: us,
            },
        );
        crate::kernels::par_rows(rows, width, |range, o| {
            for (r, o) in range.zip(o.chunks_exact_mut(width)) {
                crate::kernels::vexp::silu_mul(gr.row(r, width), ur.row(r, width), o);
            }
        })
    };
    Ok(Some(Tensor::from_vec(out, g.shape(), g.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    #[test]
    fn silu_mul_reads_the_halves_of_a_stacked_output() {
        // (3, 2·5): gate in the first five columns of each row, up in the last five.
        let y = crate::seeded_randn(11, 1.0, &[3, 10]);
        let (g, u) = (
            y.narrow(D::Minus1, 0, 5).unwrap(),
            y.narrow(D::Minus1, 5, 5).unwrap(),
        );
        let got = silu_mul_f32(&g, &u)
            .unwrap()
            .expect("strided rows are taken");
        let want = (g.contiguous().unwrap().silu().unwrap() * u.contiguous().unwrap()).unwrap();
        let d: f32 = crate::max_abs_diff(&got, &want).unwrap();
        assert!(d < 1e-6, "{d}");
        // One row (a decode step): both halves are contiguous views.
        let y1 = y.narrow(0, 1, 1).unwrap();
        let (g1, u1) = (
            y1.narrow(D::Minus1, 0, 5).unwrap(),
            y1.narrow(D::Minus1, 5, 5).unwrap(),
        );
        let got1 = silu_mul_f32(&g1, &u1).unwrap().unwrap();
        let d1: f32 = crate::max_abs_diff(&got1, &want.narrow(0, 1, 1).unwrap()).unwrap();
        assert!(d1 < 1e-6, "{d1}");
    }
}
