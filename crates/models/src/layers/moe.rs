//! The sparse mixture-of-experts feed-forward of Qwen3-MoE (`Qwen3MoeSparseMoeBlock`):
//!
//! router linear → softmax in f32 → top-k (ties: lower expert index first, as `torch.topk`)
//! → optional renormalisation of the k weights (`norm_topk_prob`) → weighted sum of the chosen
//! experts' SwiGLU MLPs.
//!
//! Tokens are grouped by expert: each expert gathers the rows routed to it (`index_select`),
//! runs its MLP once on that sub-batch and scatter-adds the weighted result back
//! (`index_add`), so an expert's weights are read once per forward, not once per token.
//! Everything on the value path is a candle op, so the block is differentiable (the routing
//! choice itself, an argmax, is not, exactly as in the reference).
//!
//! Checkpoint names (relative to `model.layers.{i}.mlp`): `gate.weight` (the router,
//! (num_experts, hidden)) and `experts.{e}.{gate,up,down}_proj.weight`.

use super::{GatedMlp, Linear};
use crate::error::{ModelError, Result};
use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

/// The routing decision of one forward: per token, the chosen experts in descending
/// probability and their (renormalised) weights.
#[derive(Clone, Debug)]
pub struct Routing {
    /// (N, k) u32 expert ids, descending probability.
    pub experts: Tensor,
    /// (N, k) f32 weights (renormalised when `norm_topk_prob`).
    pub weights: Tensor,
}

#[derive(Clone, Debug)]
pub struct MoeBlock {
    router: Linear,
    experts: Vec<GatedMlp>,
    top_k: usize,
    norm_topk_prob: bool,
}

/// Indices of the `k` largest values of `row`, largest first; equal values keep the lower
/// index first (as `torch.topk`). NaN sorts last.
pub fn top_k_indices(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let key = |i: u32| {
        let v = row[i as usize];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    // A stable sort by descending value keeps ascending index order among equal values.
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    idx.truncate(k);
    idx
}

impl MoeBlock {
    /// Loads the router and `num_experts` experts from `vb` (the layer's `mlp` prefix).
    pub fn load(
        vb: &VarBuilder,
        hidden: usize,
        intermediate: usize,
        num_experts: usize,
        top_k: usize,
        norm_topk_prob: bool,
    ) -> Result<Self> {
        if num_experts == 0 || top_k == 0 || top_k > num_experts {
            return Err(ModelError::Input(format!(
                "mixture of experts: top-k {top_k} must be in 1..={num_experts}"
            )));
        }
        let router = Linear::load(vb, hidden, num_experts, "gate")?;
        let ev = vb.pp("experts");
        let experts = (0..num_experts)
            .map(|e| GatedMlp::load(&ev.pp(e.to_string()), hidden, intermediate))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            router,
            experts,
            top_k,
            norm_topk_prob,
        })
    }

    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Router probabilities (N, num_experts), softmax in f32.
    pub fn router_probs(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.router.forward(x)?.to_dtype(DType::F32)?;
        Ok(candle_nn::ops::softmax(&logits, D::Minus1)?)
    }

    /// Routes every token: the top-k experts and their weights.
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let probs = self.router_probs(x)?;
        let (n, e) = probs.dims2()?;
        let host: Vec<f32> = probs.flatten_all()?.to_vec1()?;
        let mut ids = Vec::with_capacity(n * self.top_k);
        for row in host.chunks(e.max(1)).take(n) {
            ids.extend(top_k_indices(row, self.top_k));
        }
        let experts = Tensor::from_vec(ids, (n, self.top_k), probs.device())?;
        let mut weights = probs.gather(&experts, 1)?;
        if self.norm_topk_prob {
            weights = weights.broadcast_div(&weights.sum_keepdim(1)?)?;
        }
        Ok(Routing { experts, weights })
    }

    /// x: (N, hidden) → (N, hidden), with the routing decision.
    pub fn forward_with_routing(&self, x: &Tensor) -> Result<(Tensor, Routing)> {
        let routing = self.route(x)?;
        let (n, k) = routing.experts.dims2()?;
        let ids: Vec<u32> = routing.experts.flatten_all()?.to_vec1()?;
        // Per expert: the token rows routed to it and the flat (row·k + slot) weight index.
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        for (flat, &e) in ids.iter().enumerate() {
            let e = e as usize;
            rows[e].push((flat / k) as u32);
            slots[e].push(flat as u32);
        }
        let w_flat = routing.weights.to_dtype(x.dtype())?.reshape(n * k)?;
        let mut out = x.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let dev = x.device();
            let r = Tensor::from_slice(&rows[e], rows[e].len(), dev)?;
            let s = Tensor::from_slice(&slots[e], slots[e].len(), dev)?;
            let xe = x.index_select(&r, 0)?;
            let we = w_flat.index_select(&s, 0)?.unsqueeze(1)?;
            let ye = expert.forward(&xe)?.broadcast_mul(&we)?;
            out = out.index_add(&r, &ye, 0)?;
        }
        Ok((out, routing))
    }

    /// x: (N, hidden) → (N, hidden).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_routing(x)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// A random block whose parameters live in a `VarMap` (so gradients can be asked for).
    fn block(e: usize, k: usize, norm: bool) -> (VarMap, MoeBlock) {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let b = MoeBlock::load(&vb.pp("mlp"), 8, 12, e, k, norm).unwrap();
        // The default init is small; scale the router so the routing is decisive.
        for (name, var) in vm.data().lock().unwrap().iter() {
            let scale = if name.ends_with("gate.weight") && !name.contains("experts") {
                50.0
            } else {
                10.0
            };
            var.set(&(var.as_tensor() * scale).unwrap()).unwrap();
        }
        (vm, b)
    }

    /// The reference formulation: every token on its own, every chosen expert on its own.
    fn naive(b: &MoeBlock, x: &Tensor) -> Tensor {
        let n = x.dim(0).unwrap();
        let mut rows = Vec::new();
        for t in 0..n {
            let xt = x.narrow(0, t, 1).unwrap();
            let logits: Vec<f32> = b
                .router
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let ex: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
            let z: f32 = ex.iter().sum();
            let p: Vec<f32> = ex.iter().map(|v| v / z).collect();
            let top = top_k_indices(&p, b.top_k);
            let mut w: Vec<f32> = top.iter().map(|&i| p[i as usize]).collect();
            if b.norm_topk_prob {
                let s: f32 = w.iter().sum();
                w.iter_mut().for_each(|v| *v /= s);
            }
            let mut acc = xt.zeros_like().unwrap();
            for (&e, &we) in top.iter().zip(&w) {
                let y = b.experts[e as usize].forward(&xt).unwrap();
                acc = (acc + (y * we as f64).unwrap()).unwrap();
            }
            rows.push(acc);
        }
        Tensor::cat(&rows, 0).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::max_abs_diff(a, b).unwrap()
    }

    #[test]
    fn grouped_matches_per_token_loop() {
        for (norm, k) in [(true, 2), (false, 2), (true, 3), (false, 1)] {
            let (_vm, b) = block(6, k, norm);
            let x = crate::seeded_randn(k as u64, 1.0, &[17, 8]);
            let (y, r) = b.forward_with_routing(&x).unwrap();
            let want = naive(&b, &x);
            let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(scale > 1e-3, "degenerate test output {scale}");
            let d = max_diff(&y, &want);
            assert!(d < 1e-5, "norm={norm} k={k}: {d}");
            assert_eq!(r.experts.dims(), &[17, k]);
            if norm {
                let s: Vec<f32> = r.weights.sum(1).unwrap().to_vec1().unwrap();
                assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6));
            }
            let w: Vec<Vec<f32>> = r.weights.to_vec2().unwrap();
            assert!(w.iter().all(|row| row.windows(2).all(|p| p[0] >= p[1])));
            // More than one expert is used, so the grouping is really exercised.
            let mut used: Vec<u32> = r.experts.flatten_all().unwrap().to_vec1().unwrap();
            used.sort();
            used.dedup();
            assert!(used.len() > 1);
        }
    }

    #[test]
    fn ties_take_lower_index_first() {
        assert_eq!(top_k_indices(&[0.1, 0.3, 0.3, 0.3], 2), vec![1, 2]);
        assert_eq!(top_k_indices(&[0.5, f32::NAN, 0.2], 2), vec![0, 2]);
        assert_eq!(top_k_indices(&[0.25; 4], 3), vec![0, 1, 2]);
    }

    #[test]
    fn gradients_reach_router_and_used_experts() {
        let (vm, b) = block(4, 2, true);
        let x = crate::seeded_randn(7, 1.0, &[32, 8]);
        let (y, r) = b.forward_with_routing(&x).unwrap();
        let used: Vec<u32> = r.experts.flatten_all().unwrap().to_vec1().unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let data = vm.data().lock().unwrap();
        let norm = |name: &str| -> f32 {
            let v = &data[name];
            grads
                .get(v.as_tensor())
                .map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap())
                .unwrap_or(0.0)
        };
        assert!(norm("mlp.gate.weight") > 0.0);
        for e in 0..4u32 {
            let g = norm(&format!("mlp.experts.{e}.down_proj.weight"));
            assert_eq!(g > 0.0, used.contains(&e), "expert {e}");
        }
    }
}
