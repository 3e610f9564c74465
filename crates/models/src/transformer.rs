//! The Qwen3-style decoder backbone shared by Qwen3 and NEO: embeddings, decoder layers
//! (RMSNorm, attention with per-head q/k norms and RoPE, a feed-forward that is a gated MLP
//! or, for Qwen3-MoE's sparse layers, a mixture of experts), final norm, output head.
//! NEO adds the H/W query/key projections (Native-RoPE), switched on by `NativeRope`.
//!
//! Forward takes a packed batch: the new tokens of several sequences in one (N, hidden)
//! tensor. Dense layers run once over all N tokens; attention runs per sequence against its
//! own KV cache.

use crate::config::TextConfig;
use crate::error::{ModelError, Result};
use crate::layers::linear::WeightRole;
use crate::layers::{
    attention, block_mask, rope, Embedding, GatedMlp, Linear, LinearGroup, MoeBlock, RmsNorm,
};
use crate::SeqInput;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

/// Per-token positions of a packed batch. `h`/`w` are used only by Native-RoPE models.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Positions {
    pub t: Vec<i64>,
    pub h: Vec<i64>,
    pub w: Vec<i64>,
}

impl Positions {
    pub fn len(&self) -> usize {
        self.t.len()
    }
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }
    pub fn extend(&mut self, other: &Positions) {
        self.t.extend_from_slice(&other.t);
        self.h.extend_from_slice(&other.h);
        self.w.extend_from_slice(&other.w);
    }
}

/// Which logits a sequence wants back from a forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    None,
    Last,
    All,
}

/// Intermediate tensors of a forward, for parity checks.
#[derive(Default, Debug)]
pub struct Trace {
    pub vision_embeds: Option<Tensor>,
    pub inputs_embeds: Option<Tensor>,
    pub hidden_layer0: Option<Tensor>,
    pub hidden_final_norm: Option<Tensor>,
    /// Per mixture-of-experts layer, in layer order: the experts chosen for every token,
    /// (N, k) u32 in descending probability, and their weights, (N, k) f32.
    pub router: Vec<(Tensor, Tensor)>,
    /// A request for one layer's attention probabilities at chosen queries (training's
    /// attention targets); the answer lands in `attn_probs`.
    pub attn_probe: Option<AttnProbe>,
    /// Per sequence, the probed layer's attention probabilities at the probe's rows:
    /// (rows, heads, keys) f32, `None` for a sequence with no rows. Differentiable.
    pub attn_probs: Vec<Option<Tensor>>,
}

/// Which attention probabilities a [`Trace`] asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttnProbe {
    /// The decoder layer (0-based).
    pub layer: usize,
    /// Query heads `0..heads`.
    pub heads: usize,
    /// Per sequence of the forward, the query rows (indices into that sequence's new tokens).
    pub rows: Vec<Vec<u32>>,
}

/// Native-RoPE's H/W norms (its `q_proj_hw`/`k_proj_hw` products run in the layer's
/// [`LinearGroup`] with the others).
struct NativeRopeProj {
    q_norm_h: RmsNorm,
    q_norm_w: RmsNorm,
    k_norm_h: RmsNorm,
    k_norm_w: RmsNorm,
}

struct SelfAttention {
    /// The projections of the layer's input, in order q, k, v, then (Native-RoPE) q_hw,
    /// k_hw: one product where their weights stack.
    qkv: LinearGroup,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    hw: Option<NativeRopeProj>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

/// Rotary tables for one packed forward, shared by every layer.
pub struct RopeTables {
    t: (Tensor, Tensor),
    hw: Option<((Tensor, Tensor), (Tensor, Tensor))>,
}

/// (tokens, heads, d) → (heads, tokens, d), the KV cache's layout.
fn heads_first(t: &Tensor) -> Result<Tensor> {
    match crate::kernels::swap01_f32(t)? {
        Some(t) => Ok(t),
        None => Ok(t.transpose(0, 1)?.contiguous()?),
    }
}

/// `t` in the KV cache's dtype (`None`, or keys that carry gradients: as they are).
fn cache_dtype(t: Tensor, kv_dtype: Option<DType>) -> Result<Tensor> {
    match kv_dtype {
        Some(d) if d != t.dtype() && !t.track_op() => Ok(t.to_dtype(d)?),
        _ => Ok(t),
    }
}

impl SelfAttention {
    fn load(vb: &VarBuilder, cfg: &TextConfig, native: bool) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps;
        // Loaded in the order the checkpoint's report has always listed them.
        let hw_proj = if native {
            Some((
                Linear::load(vb, d, nh * hd, "q_proj_hw")?,
                Linear::load(vb, d, nkv * hd, "k_proj_hw")?,
            ))
        } else {
            None
        };
        let hw = if native {
            Some(NativeRopeProj {
                q_norm_h: RmsNorm::load(vb, hd / 2, eps, "q_norm_h")?,
                q_norm_w: RmsNorm::load(vb, hd / 2, eps, "q_norm_w")?,
                k_norm_h: RmsNorm::load(vb, hd / 2, eps, "k_norm_h")?,
                k_norm_w: RmsNorm::load(vb, hd / 2, eps, "k_norm_w")?,
            })
        } else {
            None
        };
        let mut parts = vec![
            Linear::load(vb, d, nh * hd, "q_proj")?,
            Linear::load(vb, d, nkv * hd, "k_proj")?,
            Linear::load(vb, d, nkv * hd, "v_proj")?,
        ];
        if let Some((q_hw, k_hw)) = hw_proj {
            parts.extend([q_hw, k_hw]);
        }
        Ok(Self {
            qkv: LinearGroup::new(parts)?,
            o: Linear::load(vb, nh * hd, d, "o_proj")?,
            q_norm: RmsNorm::load(vb, hd, eps, "q_norm")?,
            k_norm: RmsNorm::load(vb, hd, eps, "k_norm")?,
            hw,
            n_heads: nh,
            n_kv: nkv,
            head_dim: hd,
        })
    }

    /// Queries or keys from their projection `t` (and `hw`, Native-RoPE's H/W projection):
    /// [T (hd) | H (hd/2) | W (hd/2)] per head for Native-RoPE, else T only.
    fn project(
        &self,
        t: &Tensor,
        hw_proj: Option<&Tensor>,
        heads: usize,
        which_q: bool,
        tables: &RopeTables,
    ) -> Result<Tensor> {
        let n = t.dim(0)?;
        let hd = self.head_dim;
        let norm = if which_q { &self.q_norm } else { &self.k_norm };
        let t = norm.forward(&t.reshape((n, heads, hd))?)?;
        let t = rope::rotate_half(&t, &tables.t.0, &tables.t.1)?;
        let Some(hw) = &self.hw else { return Ok(t) };
        let ((ch, sh), (cw, sw)) = tables
            .hw
            .as_ref()
            .ok_or_else(|| ModelError::Input("Native-RoPE layer without H/W positions".into()))?;
        let p = hw_proj.ok_or_else(|| {
            ModelError::Weights("Native-RoPE layer without its H/W projection".into())
        })?;
        let (nh_, nw_) = if which_q {
            (&hw.q_norm_h, &hw.q_norm_w)
        } else {
            (&hw.k_norm_h, &hw.k_norm_w)
        };
        let p = p.reshape((n, heads, hd))?;
        let h = nh_.forward(&p.narrow(D::Minus1, 0, hd / 2)?)?;
        let w = nw_.forward(&p.narrow(D::Minus1, hd / 2, hd / 2)?)?;
        let h = rope::rotate_half(&h, ch, sh)?;
        let w = rope::rotate_half(&w, cw, sw)?;
        Ok(Tensor::cat(&[t, h, w], D::Minus1)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        seqs: &mut [SeqInput],
        seq_t: &[Vec<i64>],
        tables: &RopeTables,
        probe: Option<&AttnProbe>,
        kv_dtype: Option<DType>,
    ) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let n = x.dim(0)?;
        let parts = self.qkv.forward(x)?;
        let part = |i: usize| {
            parts.get(i).ok_or_else(|| {
                ModelError::Weights(format!(
                    "the attention projections gave {} outputs",
                    parts.len()
                ))
            })
        };
        let (q_hw, k_hw) = if self.hw.is_some() {
            (Some(part(3)?), Some(part(4)?))
        } else {
            (None, None)
        };
        let q = self.project(part(0)?, q_hw, self.n_heads, true, tables)?;
        let k = self.project(part(1)?, k_hw, self.n_kv, false, tables)?;
        let v = part(2)?.reshape((n, self.n_kv, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut outs = Vec::with_capacity(seqs.len());
        let mut probs = Vec::new();
        let mut off = 0;
        for (i, (s, new_t)) in seqs.iter_mut().zip(seq_t).enumerate() {
            let len = s.ids.len();
            let qs = q.narrow(0, off, len)?;
            let ks = cache_dtype(heads_first(&k.narrow(0, off, len)?)?, kv_dtype)?;
            let vs = cache_dtype(heads_first(&v.narrow(0, off, len)?)?, kv_dtype)?;
            let kv = s.cache.append(layer, ks, vs)?;
            let mut key_t = Vec::with_capacity(s.cache.len() + len);
            key_t.extend_from_slice(s.cache.key_t());
            key_t.extend_from_slice(new_t);
            let mask = block_mask(&key_t, len, x.device())?;
            if let Some(p) = probe {
                let rows = p.rows.get(i).map(Vec::as_slice).unwrap_or_default();
                let k_all = kv.joined()?.0.to_dtype(qs.dtype())?;
                probs.push(self.probe_probs(&qs, &k_all, mask.as_ref(), rows, p.heads, scale)?);
            }
            outs.push(attention(&qs, &kv, mask.as_ref(), scale)?);
            off += len;
        }
        let o = if outs.len() == 1 {
            outs.pop().unwrap_or_else(|| unreachable!())
        } else {
            Tensor::cat(&outs, 0)?
        };
        Ok((self.o.forward(&o)?, probs))
    }

    /// The attention probabilities of query heads `0..heads` at query `rows` of one sequence,
    /// (rows, heads, keys) f32, computed apart from the attention itself (which may run a
    /// fused kernel) with the same scores, mask and softmax.
    fn probe_probs(
        &self,
        q: &Tensor,
        k_all: &Tensor,
        mask: Option<&Tensor>,
        rows: &[u32],
        heads: usize,
        scale: f64,
    ) -> Result<Option<Tensor>> {
        if rows.is_empty() || heads == 0 {
            return Ok(None);
        }
        let idx = Tensor::from_slice(rows, rows.len(), q.device())?;
        let qsel = q.index_select(&idx, 0)?; // (r, n_heads, dq)
        let mask = mask.map(|m| m.index_select(&idx, 0)).transpose()?;
        let group = self.n_heads / self.n_kv;
        let mut per_head = Vec::with_capacity(heads);
        for h in 0..heads.min(self.n_heads) {
            let qh = qsel.narrow(1, h, 1)?.squeeze(1)?.contiguous()?;
            let kh = k_all.narrow(0, h / group, 1)?.squeeze(0)?;
            let mut s = (qh.matmul(&kh.t()?)? * scale)?.to_dtype(DType::F32)?;
            if let Some(m) = &mask {
                s = (s + m)?;
            }
            per_head.push(candle_nn::ops::softmax(&s, D::Minus1)?);
        }
        Ok(Some(Tensor::stack(&per_head, 1)?))
    }
}

/// A decoder layer's feed-forward, chosen per layer (`TextConfig::is_moe_layer`).
enum FeedForward {
    Dense(GatedMlp),
    Moe(MoeBlock),
}

impl FeedForward {
    fn load(vb: &VarBuilder, cfg: &TextConfig, layer: usize) -> Result<Self> {
        Ok(if cfg.is_moe_layer(layer) {
            FeedForward::Moe(MoeBlock::load(
                vb,
                cfg.hidden_size,
                cfg.moe_intermediate_size,
                cfg.num_experts,
                cfg.num_experts_per_tok,
                cfg.norm_topk_prob,
            )?)
        } else {
            FeedForward::Dense(GatedMlp::load(vb, cfg.hidden_size, cfg.intermediate_size)?)
        })
    }

    /// The routing decision is recorded in `trace` when one is given.
    fn forward(&self, x: &Tensor, trace: Option<&mut Trace>) -> Result<Tensor> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Moe(m) => {
                let (y, r) = m.forward_with_routing(x)?;
                if let Some(t) = trace {
                    t.router.push((r.experts, r.weights.to_dtype(DType::F32)?));
                }
                Ok(y)
            }
        }
    }
}

struct DecoderLayer {
    input_ln: RmsNorm,
    post_ln: RmsNorm,
    attn: SelfAttention,
    mlp: FeedForward,
}

/// The decoder stack with its embeddings and output head.
pub struct Backbone {
    pub cfg: TextConfig,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_t: Vec<f32>,
    inv_hw: Vec<f32>,
    native_rope: bool,
    device: Device,
    dtype: DType,
    /// What the KV cache stores (`Model::set_kv_dtype`); `None`: the compute dtype.
    pub(crate) kv_dtype: Option<DType>,
}

impl Backbone {
    /// Loads from `vb` rooted where `model.` and `lm_head` live (`language_model` for NEO,
    /// the checkpoint root for Qwen3).
    pub fn load(vb: &VarBuilder, cfg: &TextConfig, tied: bool, native_rope: bool) -> Result<Self> {
        let m = vb.pp("model");
        let embed = Embedding::load(&m, cfg.vocab_size, cfg.hidden_size, "embed_tokens")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp("layers").pp(i.to_string());
            layers.push(DecoderLayer {
                input_ln: RmsNorm::load(&l, cfg.hidden_size, cfg.rms_norm_eps, "input_layernorm")?,
                post_ln: RmsNorm::load(
                    &l,
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                    "post_attention_layernorm",
                )?,
                attn: SelfAttention::load(&l.pp("self_attn"), cfg, native_rope)?,
                mlp: FeedForward::load(&l.pp("mlp"), cfg, i)?,
            });
        }
        let norm = RmsNorm::load(&m, cfg.hidden_size, cfg.rms_norm_eps, "norm")?;
        let lm_head = if tied {
            embed.as_linear()
        } else {
            let (v, d) = (cfg.vocab_size, cfg.hidden_size);
            Linear::load_as(vb, (v, d).into(), d, v, "lm_head", WeightRole::Embedding)?
        };
        let hd = cfg.head_dim();
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_t: rope::inv_freq(hd, cfg.rope_theta),
            inv_hw: rope::inv_freq(hd / 2, cfg.rope_theta_hw),
            native_rope,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            kv_dtype: None,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    /// The output head (the token embedding when tied).
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// Token embeddings (N, hidden) for ids; an id past the embedding table is an error.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        self.embed.lookup(ids, self.dtype, &self.device)
    }

    fn tables(&self, pos: &Positions) -> Result<RopeTables> {
        let t = rope::tables(&pos.t, &self.inv_t, &self.device)?;
        let hw = if self.native_rope {
            if pos.h.len() != pos.t.len() || pos.w.len() != pos.t.len() {
                return Err(ModelError::Input(
                    "H/W positions missing for Native-RoPE".into(),
                ));
            }
            Some((
                rope::tables(&pos.h, &self.inv_hw, &self.device)?,
                rope::tables(&pos.w, &self.inv_hw, &self.device)?,
            ))
        } else {
            None
        };
        Ok(RopeTables { t, hw })
    }

    /// Runs the decoder over packed embeddings `x` (N, hidden). `pos` holds every token's
    /// positions in packing order; `seqs` says how N splits into sequences. Returns the logits
    /// each sequence asked for (`None` for those that asked for none).
    pub fn forward(
        &self,
        x: Tensor,
        pos: &Positions,
        seqs: &mut [SeqInput],
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<Option<Tensor>>> {
        let n = x.dim(0)?;
        let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
        if total != n || pos.len() != n {
            return Err(ModelError::Input(format!(
                "packed batch of {n} tokens, but sequences cover {total} and positions {}",
                pos.len()
            )));
        }
        let tables = self.tables(pos)?;
        let mut seq_t = Vec::with_capacity(seqs.len());
        let mut off = 0;
        for s in seqs.iter() {
            seq_t.push(pos.t[off..off + s.ids.len()].to_vec());
            off += s.ids.len();
        }
        if let Some(t) = trace.as_deref_mut() {
            t.router.clear();
        }
        let mut h = x.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let a = layer.input_ln.forward(&h)?;
            let probe = trace
                .as_deref()
                .and_then(|t| t.attn_probe.as_ref())
                .filter(|p| p.layer == i)
                .cloned();
            let (o, probs) =
                layer
                    .attn
                    .forward(i, &a, seqs, &seq_t, &tables, probe.as_ref(), self.kv_dtype)?;
            if let (Some(t), true) = (trace.as_deref_mut(), probe.is_some()) {
                t.attn_probs = probs;
            }
            h = (h + o)?;
            let m = layer.post_ln.forward(&h)?;
            h = (h + layer.mlp.forward(&m, trace.as_deref_mut())?)?;
            if i == 0 {
                if let Some(t) = trace.as_deref_mut() {
                    t.hidden_layer0 = Some(h.clone());
                }
            }
        }
        for (s, t) in seqs.iter_mut().zip(&seq_t) {
            s.cache.commit(t, s.ids.last().copied());
        }
        let hn = self.norm.forward(&h)?;
        if let Some(t) = trace {
            t.hidden_final_norm = Some(hn.clone());
        }
        // Gather the rows whose logits are wanted and run the head once for all of them.
        let mut rows: Vec<u32> = Vec::new();
        let mut spans = Vec::with_capacity(seqs.len());
        let mut off = 0;
        for s in seqs.iter() {
            let start = rows.len();
            match s.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last if !s.ids.is_empty() => {
                    rows.push((off + s.ids.len() - 1) as u32)
                }
                LogitsWanted::Last => {}
                LogitsWanted::All => rows.extend((off..off + s.ids.len()).map(|r| r as u32)),
            }
            spans.push((start, rows.len() - start, s.logits));
            off += s.ids.len();
        }
        if rows.is_empty() {
            return Ok(vec![None; seqs.len()]);
        }
        let sel = if rows.len() == n {
            hn
        } else {
            hn.index_select(&Tensor::from_slice(&rows, rows.len(), &self.device)?, 0)?
        };
        let logits = self.lm_head.forward(&sel)?.to_dtype(DType::F32)?;
        spans
            .into_iter()
            .map(|(start, len, want)| {
                Ok(match want {
                    LogitsWanted::None => None,
                    _ if len == 0 => None,
                    _ => Some(logits.narrow(0, start, len)?),
                })
            })
            .collect()
    }
}
