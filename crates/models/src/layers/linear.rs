//! The one linear-layer type models use (y = x W^T), whatever the weight format.
//!
//! A [`Linear`] is dense (a candle tensor, differentiable: training builds models from a
//! `VarMap` and gets this variant), packed (a dense weight that an inference load packed for
//! pixlm's CPU kernels, `kernels::packed`: the same values, summed in one order whatever the
//! number of rows) or quantized (a GGML block format, Q8_0 or Q4_K; inference only). Model
//! files call [`Linear::load`] with the checkpoint name and never see the format.
//!
//! Which variant `load` builds is decided in one place, the [`LinearLoader`] that
//! [`crate::Model::load`] installs for the duration of a load (from `LoadOptions::quant`, or the
//! tensors a GGUF file stores quantized). Without a loader (training, `from_var_builder`), every
//! layer is dense, exactly as before. A dense layer's weight is in the compute dtype, except
//! that under f32 on the CPU the loader keeps bf16/f16 checkpoint weights in their stored type
//! ([`HalfWeights`]); pixlm's kernels widen them in registers. The loader travels beside the
//! `VarBuilder` in a scoped thread-local rather than through every model constructor, so the
//! architecture files keep their `(vb, in, out, name)` calls and no model special-cases a
//! format.
//!
//! A layer whose input dimension is not a multiple of the format's block stays dense; the
//! loader records it with the reason. Q4_K (blocks of 256) falls back to Q4_0 (blocks of 32,
//! the same 4.5 bits per weight) for narrower layers: llama.cpp's quantizer picks Q5_0 there,
//! but on the shapes model, whose widths (160, 448) are all narrow, Q4_0 kept the accuracy
//! (the previous shipped model: 94.0% / 95.2% against f32's 93.9% / 95.3%; the current one:
//! 97.1% / 97.5%, as f32) at 0.144x the f32 size, where Q5_0 reached 0.177x (issue #6's
//! target is 0.16x; BENCHMARKS.md).
//!
//! Layers that project one input several ways (attention's q, k, v; the feed-forward's gate
//! and up) hold their parts in a [`LinearGroup`], which stacks parts of one inference format
//! into one product after they are loaded.
//!
//! The embedding-like weights (token embeddings, the output head, the patch embedding's two
//! convolutions) load through the same decision with [`WeightRole::Embedding`], so they are
//! quantized too unless the loader keeps them dense (`dense_embeddings`); BENCHMARKS.md
//! records the measurement behind that default.

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::kernels::packed::PackedDense;
use crate::weights;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// A quantized weight format for linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 8-bit, blocks of 32 weights with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quant, super-blocks of 256 weights (4.5 bits per weight).
    Q4K,
}

impl QuantFormat {
    pub fn ggml(self) -> GgmlDType {
        match self {
            QuantFormat::Q8_0 => GgmlDType::Q8_0,
            QuantFormat::Q4K => GgmlDType::Q4K,
        }
    }

    /// The input dimension must be a multiple of this.
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    /// The name used on the command line and in GGUF metadata: `q8_0` or `q4_k`.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4K => "q4_k",
        }
    }

    /// The GGML type a weight with this input dimension gets: the format's own where its block
    /// fits, else Q4_K's fallback [`Q4K_FALLBACK`] (blocks of 32); `Err` says why the
    /// weight stays dense.
    pub fn ggml_for(self, in_dim: usize) -> std::result::Result<GgmlDType, String> {
        let own = self.ggml();
        if in_dim.is_multiple_of(own.block_size()) {
            return Ok(own);
        }
        let fallback = match self {
            QuantFormat::Q8_0 => None,
            QuantFormat::Q4K => Some(Q4K_FALLBACK),
        };
        match fallback {
            Some(f) if in_dim.is_multiple_of(f.block_size()) => Ok(f),
            _ => Err(format!(
                "input dim {in_dim} is not a multiple of {} ({self})",
                fallback.unwrap_or(own).block_size()
            )),
        }
    }

    /// The GGML type of a stored tensor, if it is one of ours.
    pub fn from_ggml(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q8_0 => Some(QuantFormat::Q8_0),
            GgmlDType::Q4K => Some(QuantFormat::Q4K),
            _ => None,
        }
    }
}

impl std::str::FromStr for QuantFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(QuantFormat::Q8_0),
            "q4_k" | "q4k" => Ok(QuantFormat::Q4K),
            _ => Err(format!(
                "unknown quantization {s:?} (expected q8_0 or q4_k)"
            )),
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The type Q4_K uses for weights whose input dimension is not a multiple of 256.
pub const Q4K_FALLBACK: GgmlDType = GgmlDType::Q4_0;

/// What a weight matrix is for, which decides whether `dense_embeddings` applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightRole {
    /// A projection inside a block (attention, MLP, experts).
    Linear,
    /// Token embeddings, the output head, the patch embedding's convolutions.
    Embedding,
}

/// A bias-free linear layer with weight (out, in).
#[derive(Clone, Debug)]
pub enum Linear {
    /// A dense weight in the compute dtype; differentiable.
    Dense(Tensor),
    /// A GGML block-quantized weight (out, in); forward only.
    Quantized(Arc<QTensor>),
    /// A dense weight packed at load for pixlm's CPU kernels (`kernels::packed`): the same
    /// values in the stored type, summed in one order whatever the number of rows; forward
    /// only.
    Packed(Arc<PackedDense>),
}

/// What the loader did with one linear weight.
#[derive(Clone, Debug)]
pub enum LinearChoice {
    /// Quantized to (or stored in) this GGML type.
    Quantized(GgmlDType),
    /// Kept dense, with the reason (e.g. the input dimension does not fit the block size).
    Dense(String),
}

/// Every linear weight a load saw, by checkpoint name, in load order.
#[derive(Clone, Debug, Default)]
pub struct LinearReport {
    pub layers: Vec<(String, LinearChoice)>,
    /// The quantized weights by name, kept only when the loader was asked to (GGUF export).
    pub quantized: Vec<(String, Arc<QTensor>)>,
}

impl LinearReport {
    pub fn num_quantized(&self) -> usize {
        self.layers
            .iter()
            .filter(|(_, c)| matches!(c, LinearChoice::Quantized(_)))
            .count()
    }
    pub fn num_dense(&self) -> usize {
        self.layers.len() - self.num_quantized()
    }
    /// Each quantized weight's name and stored type, in load order.
    pub fn quantized_types(&self) -> impl Iterator<Item = (&str, GgmlDType)> {
        self.layers.iter().filter_map(|(n, c)| match c {
            LinearChoice::Quantized(t) => Some((n.as_str(), *t)),
            LinearChoice::Dense(_) => None,
        })
    }
}

/// Which dense weights [`LinearLoader`] keeps in f16/bf16 under an f32 `VarBuilder`.
#[derive(Clone, Debug, Default)]
pub enum HalfWeights {
    /// None: every weight in the compute dtype.
    #[default]
    None,
    /// Every dense weight matrix in this type (benchmarks of a format).
    All(DType),
    /// Those the checkpoint stores in f16 or bf16, by full name (`weights::half_tensors`):
    /// widening them to f32 is exact, so narrowing back loses nothing.
    Stored(std::collections::HashMap<String, DType>),
}

/// Decides how [`Linear::load`] builds each layer during one model load.
#[derive(Default)]
pub struct LinearLoader {
    /// Quantize dense checkpoint weights to this format when their shape allows.
    pub quant: Option<QuantFormat>,
    /// Keep [`WeightRole::Embedding`] weights dense even when `quant` is set.
    pub dense_embeddings: bool,
    /// Dense weights that stay in a half-precision type while the model computes in f32
    /// (pixlm's CPU kernels widen them in registers: the same values in half the bytes).
    pub half: HalfWeights,
    /// A GGUF file whose quantized tensors are taken as they are stored.
    pub gguf: Option<Arc<GgufFile>>,
    /// Keep the quantized weights in the report (for writing them out).
    pub keep_quantized: bool,
    /// Pack the dense weights (CPU, where [`PackedDense::available`]) for the CPU kernels:
    /// inference loads set it; training builds from a `VarMap` without a loader.
    pub pack_dense: bool,
    /// Only record the decision for each layer (the `VarBuilder` may hand out placeholder
    /// weights); every layer is built dense. Used to plan a GGUF export without loading.
    pub plan_only: bool,
    report: RefCell<LinearReport>,
}

impl LinearLoader {
    pub fn new(quant: Option<QuantFormat>, gguf: Option<Arc<GgufFile>>) -> Self {
        Self {
            quant,
            gguf,
            ..Self::default()
        }
    }

    pub fn take_report(&self) -> LinearReport {
        std::mem::take(&mut self.report.borrow_mut())
    }

    /// Runs `f` (a model constructor) with this loader deciding every `Linear::load` on this
    /// thread; the previous loader (normally none) is restored afterwards, even on panic.
    pub fn scope<R>(self: &Rc<Self>, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Rc<LinearLoader>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let prev = self.0.take();
                LOADER.with(|l| *l.borrow_mut() = prev);
            }
        }
        let prev = LOADER.with(|l| l.borrow_mut().replace(self.clone()));
        let _restore = Restore(prev);
        f()
    }

    fn record(&self, name: String, choice: LinearChoice, q: Option<&Arc<QTensor>>) {
        let mut r = self.report.borrow_mut();
        if let (true, Some(q)) = (self.keep_quantized, q) {
            r.quantized.push((name.clone(), q.clone()));
        }
        r.layers.push((name, choice));
    }
}

thread_local! {
    static LOADER: RefCell<Option<Rc<LinearLoader>>> = const { RefCell::new(None) };
}

fn full_name(vb: &VarBuilder, name: &str) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        format!("{name}.weight")
    } else {
        format!("{p}.{name}.weight")
    }
}

/// Whether a linear layer with this input dimension is quantized: the GGML type, or why not.
pub fn decide(quant: Option<QuantFormat>, in_dim: usize) -> std::result::Result<GgmlDType, String> {
    let Some(fmt) = quant else {
        return Err("no quantization asked".into());
    };
    fmt.ggml_for(in_dim)
}

impl Linear {
    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, name: &str) -> Result<Self> {
        Self::load_as(
            vb,
            (out_dim, in_dim).into(),
            in_dim,
            out_dim,
            name,
            WeightRole::Linear,
        )
    }

    /// As [`Linear::load`] for a weight the checkpoint stores as `stored` (e.g. a convolution's
    /// (out, c, kh, kw)), used as the (out, in) matrix of its rows; `role` says whether
    /// `dense_embeddings` applies. A GGUF file stores a quantized one as (out, in).
    pub fn load_as(
        vb: &VarBuilder,
        stored: candle_core::Shape,
        in_dim: usize,
        out_dim: usize,
        name: &str,
        role: WeightRole,
    ) -> Result<Self> {
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        if stored.elem_count() != in_dim * out_dim {
            return Err(ModelError::Weights(format!(
                "{name}: stored shape {stored:?} is not a ({out_dim}, {in_dim}) matrix"
            )));
        }
        let dense_as = |vb: &VarBuilder| -> Result<Tensor> {
            let w = weights::get(&vb.pp(name), stored.clone(), "weight", init)?;
            Ok(if w.rank() == 2 {
                w
            } else {
                w.reshape((out_dim, in_dim))?
            })
        };
        let loader = LOADER.with(|l| l.borrow().clone());
        let dense = || dense_as(vb);
        let Some(loader) = loader else {
            return Ok(Linear::Dense(dense()?));
        };
        let full = full_name(vb, name);
        if let Some(g) = &loader.gguf {
            if let Some(q) = g.quantized_tensor(&full, (out_dim, in_dim), vb.device())? {
                let q = Arc::new(q);
                loader.record(full, LinearChoice::Quantized(q.dtype()), Some(&q));
                return Ok(Linear::Quantized(q));
            }
        }
        let decided = if role == WeightRole::Embedding && loader.dense_embeddings {
            Err("embeddings kept dense (--dense-embeddings)".to_string())
        } else {
            decide(loader.quant, in_dim)
        };
        let ty = match decided {
            Ok(ty) => ty,
            Err(why) => {
                let half = match &loader.half {
                    HalfWeights::None => None,
                    HalfWeights::All(t) => Some(*t),
                    HalfWeights::Stored(names) => names.get(&full).copied(),
                };
                // Read in the stored type itself (no round trip through f32).
                let weight = match half {
                    Some(t) if vb.dtype() == DType::F32 && vb.device().is_cpu() => {
                        dense_as(&vb.to_dtype(t))?
                    }
                    _ => dense()?,
                };
                loader.record(full, LinearChoice::Dense(why), None);
                if loader.pack_dense && !loader.plan_only {
                    return Linear::packed(weight);
                }
                return Ok(Linear::Dense(weight));
            }
        };
        let weight = dense()?;
        if loader.plan_only {
            loader.record(full, LinearChoice::Quantized(ty), None);
            return Ok(Linear::Dense(weight));
        }
        let q = Arc::new(
            QTensor::quantize(&weight, ty)
                .map_err(|e| ModelError::Weights(format!("quantizing {full} to {ty:?}: {e}")))?,
        );
        loader.record(full, LinearChoice::Quantized(ty), Some(&q));
        Ok(Linear::Quantized(q))
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Linear::Dense(weight)
    }

    /// A dense (out, in) weight packed for the CPU kernels where they apply (a contiguous
    /// f32/f16/bf16 matrix on the CPU, a CPU with [`PackedDense::available`]); else kept as it
    /// is.
    pub fn packed(weight: Tensor) -> Result<Self> {
        if !weight.device().is_cpu() || !PackedDense::available() {
            return Ok(Linear::Dense(weight));
        }
        let &[n, k] = weight.dims() else {
            return Ok(Linear::Dense(weight));
        };
        let packed = crate::kernels::with_cpu_weights(&weight, |w| PackedDense::pack(w, n, k));
        let Some(packed) = packed else {
            return Ok(Linear::Dense(weight));
        };
        let packed = packed.map_err(ModelError::Weights)?;
        Ok(Linear::Packed(Arc::new(packed)))
    }

    /// Output features (rows of the (out, in) weight).
    pub fn out_dim(&self) -> Result<usize> {
        Ok(match self {
            Linear::Dense(w) => w.dim(0)?,
            Linear::Packed(p) => p.n(),
            Linear::Quantized(q) => q.shape().dims2()?.0,
        })
    }

    /// The stored dtype of a dense or packed weight; `None` for a quantized one.
    pub fn dense_dtype(&self) -> Option<DType> {
        match self {
            Linear::Dense(w) => Some(w.dtype()),
            Linear::Packed(p) => Some(p.dtype()),
            Linear::Quantized(_) => None,
        }
    }

    /// Quantizes a dense (out, in) weight to `fmt` (Q4_K's fallback where the input dimension
    /// needs it); fails when no block of the format fits the input dimension.
    pub fn quantized(weight: &Tensor, fmt: QuantFormat) -> Result<Self> {
        let ty = fmt
            .ggml_for(weight.dim(candle_core::D::Minus1)?)
            .map_err(ModelError::Input)?;
        Ok(Linear::Quantized(Arc::new(QTensor::quantize(weight, ty)?)))
    }

    /// The dense weight as a tensor, or `None` for a quantized or packed layer.
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense(w) => Some(w),
            Linear::Quantized(_) | Linear::Packed(_) => None,
        }
    }

    /// The quantized format, or `None` for a dense layer (or a Q4_K fallback type).
    pub fn format(&self) -> Option<QuantFormat> {
        self.ggml_type().and_then(QuantFormat::from_ggml)
    }

    /// The stored GGML type, or `None` for a dense layer.
    pub fn ggml_type(&self) -> Option<GgmlDType> {
        match self {
            Linear::Dense(_) | Linear::Packed(_) => None,
            Linear::Quantized(q) => Some(q.dtype()),
        }
    }

    /// The weight as an f32 tensor (dequantized for a quantized layer).
    pub fn weight_f32(&self) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(w) => w.to_dtype(candle_core::DType::F32)?,
            Linear::Quantized(q) => q.dequantize(&q.device())?,
            Linear::Packed(p) => {
                Tensor::from_vec(p.to_f32_rows(), (p.n(), p.k()), &candle_core::Device::Cpu)?
            }
        })
    }

    /// x: (.., in) -> (.., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(w) => match crate::kernels::dense_matmul_t(x, w)? {
                Some(y) => Ok(y),
                // A weight kept in half precision under f32 compute, where pixlm's kernels
                // do not apply (a CPU without AVX2, many rows): widened for this product.
                None if w.dtype() != x.dtype() => {
                    Ok(candle_nn::Linear::new(w.to_dtype(x.dtype())?, None).forward(x)?)
                }
                None => Ok(candle_nn::Linear::new(w.clone(), None).forward(x)?),
            },
            Linear::Packed(p) => crate::kernels::packed_matmul_t(x, p),
            Linear::Quantized(q) => {
                if let Some(y) = crate::kernels::quantized_matmul_t(x, q)? {
                    return Ok(y);
                }
                // candle's quantized kernel reads its input as one contiguous block.
                let x = x.contiguous()?;
                Ok(QMatMul::QTensor(q.clone()).forward(&x)?)
            }
        }
    }
}

/// Linear layers that read the same input (a layer's query, key and value projections; the
/// feed-forward's gate and up projections), run as few products as their weights allow:
/// consecutive parts of one format are stacked into one weight at load, as vLLM's merged
/// QKV and gate/up layers are, so a decode step reads them in one pass (one hand-off to the
/// thread pool, one quantization of `x`) instead of one per part. Each output feature keeps
/// its own sums, so the outputs are the separate products' bit for bit.
///
/// Only inference weights on the CPU are stacked: packed ones of one stored type whose parts
/// fill whole strips, quantized ones of one GGML type. Dense (differentiable) parts, and
/// parts of different formats (a GGUF file's Q6_K value projection beside Q4_K queries),
/// stay products of their own.
#[derive(Clone, Debug)]
pub struct LinearGroup {
    /// Each product and the widths of the parts its output holds, in order.
    units: Vec<(Linear, Vec<usize>)>,
}

impl LinearGroup {
    /// Groups `parts` (all with the same input width), stacking consecutive ones that can be.
    pub fn new(parts: Vec<Linear>) -> Result<Self> {
        let mut units: Vec<(Linear, Vec<usize>)> = Vec::new();
        let mut run: Vec<Linear> = Vec::new();
        for part in parts {
            if let Some(prev) = run.last() {
                if !Self::stackable(prev, &part) {
                    units.extend(Self::join(std::mem::take(&mut run))?);
                }
            }
            run.push(part);
        }
        if !run.is_empty() {
            units.extend(Self::join(run)?);
        }
        Ok(Self { units })
    }

    /// Whether `b` can be stacked under `a` (`join` may still keep a packed run apart, when
    /// a part leaves a strip partial).
    fn stackable(a: &Linear, b: &Linear) -> bool {
        match (a, b) {
            (Linear::Packed(a), Linear::Packed(b)) => a.k() == b.k() && a.dtype() == b.dtype(),
            (Linear::Quantized(a), Linear::Quantized(b)) => {
                a.dtype() == b.dtype()
                    && a.device().is_cpu()
                    && b.device().is_cpu()
                    && a.shape().dims().get(1) == b.shape().dims().get(1)
            }
            _ => false,
        }
    }

    /// One product for a run of stackable parts, or one per part where they cannot be
    /// joined (a single part; a packed part that leaves a strip partial before another).
    fn join(run: Vec<Linear>) -> Result<Vec<(Linear, Vec<usize>)>> {
        let widths = run
            .iter()
            .map(Linear::out_dim)
            .collect::<Result<Vec<_>>>()?;
        let joined = match run.first() {
            _ if run.len() < 2 => None,
            Some(Linear::Packed(_)) => {
                let packed: Vec<&PackedDense> = run
                    .iter()
                    .filter_map(|l| match l {
                        Linear::Packed(p) => Some(p.as_ref()),
                        _ => None,
                    })
                    .collect();
                PackedDense::concat(&packed).map(|p| Linear::Packed(Arc::new(p)))
            }
            Some(Linear::Quantized(first)) => {
                let mut bytes = Vec::new();
                for l in &run {
                    if let Linear::Quantized(q) = l {
                        bytes.extend_from_slice(&q.data()?);
                    }
                }
                let k = first.shape().dims().get(1).copied().unwrap_or(0);
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    first.dtype(),
                    &bytes,
                    vec![widths.iter().sum(), k],
                    &first.device(),
                )?;
                Some(Linear::Quantized(Arc::new(q)))
            }
            _ => None,
        };
        Ok(match joined {
            Some(l) => vec![(l, widths)],
            None => run
                .into_iter()
                .zip(widths)
                .map(|(l, w)| (l, vec![w]))
                .collect(),
        })
    }

    /// The parts' outputs, in order: `x` (.., in) gives (.., width) for each part.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for (w, widths) in &self.units {
            let y = w.forward(x)?;
            if widths.len() == 1 {
                out.push(y);
                continue;
            }
            let mut off = 0;
            for &width in widths {
                out.push(y.narrow(candle_core::D::Minus1, off, width)?);
                off += width;
            }
        }
        Ok(out)
    }

    /// How many products a forward runs.
    pub fn products(&self) -> usize {
        self.units.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The group's outputs against each part's own product, bit for bit, at 1, 3, 12 and 40
    /// rows (the row kernels, the few-rows kernels and the tiles).
    fn assert_group_matches(parts: &[Linear], group: &LinearGroup, k: usize) {
        for m in [1usize, 3, 12, 40] {
            let x = crate::seeded_randn(m as u64, 1.0, &[m, k]);
            let got = group.forward(&x).unwrap();
            assert_eq!(got.len(), parts.len());
            for (i, (p, g)) in parts.iter().zip(&got).enumerate() {
                let want: Vec<f32> = p
                    .forward(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                let same = g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same && g.len() == want.len(), "part {i}, {m} rows");
            }
        }
    }

    #[test]
    fn a_group_stacks_what_it_can_and_keeps_every_output() {
        let k = 256;
        let w = |seed: u64, n: usize| crate::seeded_randn(seed, 0.05, &[n, k]);
        // Three Q4_K parts stack into one product; a Q8_0 part after them starts another.
        let parts = vec![
            Linear::quantized(&w(1, 64), QuantFormat::Q4K).unwrap(),
            Linear::quantized(&w(2, 32), QuantFormat::Q4K).unwrap(),
            Linear::quantized(&w(3, 32), QuantFormat::Q4K).unwrap(),
            Linear::quantized(&w(4, 16), QuantFormat::Q8_0).unwrap(),
        ];
        let group = LinearGroup::new(parts.clone()).unwrap();
        assert_eq!(group.products(), 2);
        assert_group_matches(&parts, &group, k);
        // Dense (differentiable) parts are never stacked.
        let dense = vec![Linear::from_weight(w(5, 8)), Linear::from_weight(w(6, 8))];
        let group = LinearGroup::new(dense.clone()).unwrap();
        assert_eq!(group.products(), 2);
        assert_group_matches(&dense, &group, k);
        if PackedDense::available() {
            // Packed parts of whole strips stack; one that leaves a strip partial before
            // another keeps the run apart.
            let packed: Vec<Linear> = [(7, 32), (8, 16), (9, 21)]
                .iter()
                .map(|&(s, n)| Linear::packed(w(s, n)).unwrap())
                .collect();
            let group = LinearGroup::new(packed.clone()).unwrap();
            assert_eq!(group.products(), 1);
            assert_group_matches(&packed, &group, k);
            let partial_first = vec![packed[2].clone(), packed[0].clone()];
            let group = LinearGroup::new(partial_first.clone()).unwrap();
            assert_eq!(group.products(), 2);
            assert_group_matches(&partial_first, &group, k);
        }
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> (f32, f32) {
        let d = (a - b).unwrap().abs().unwrap();
        let max: f32 = d.max_all().unwrap().to_scalar().unwrap();
        let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        let mean: f32 = d.mean_all().unwrap().to_scalar().unwrap();
        let mean_ref: f32 = b.abs().unwrap().mean_all().unwrap().to_scalar().unwrap();
        (max / scale, mean / mean_ref)
    }

    #[test]
    fn quantized_matches_dense_within_tolerance() {
        // (format, max error / max |y|, mean error / mean |y|): Q8_0 keeps ~8 bits, Q4_K ~4.
        // Over 40 seeds of this shape Q8_0 measured 0.007-0.012 / 0.008-0.010 and Q4_K
        // 0.06-0.11 / 0.068-0.083; a wrong block layout or scale gives errors near 1.
        for (fmt, tol_max, tol_mean) in [
            (QuantFormat::Q8_0, 0.02, 0.015),
            (QuantFormat::Q4K, 0.15, 0.10),
        ] {
            let w = crate::seeded_randn(1, 0.05, &[96, 512]);
            let x = crate::seeded_randn(2, 1.0, &[7, 512]);
            let dense = Linear::from_weight(w.clone());
            let q = Linear::quantized(&w, fmt).unwrap();
            assert_eq!(q.format(), Some(fmt));
            let yd = dense.forward(&x).unwrap();
            let yq = q.forward(&x).unwrap();
            assert_eq!(yq.dims(), &[7, 96]);
            let (m, a) = rel_err(&yq, &yd);
            assert!(m < tol_max && a < tol_mean, "{fmt}: max {m} mean {a}");
            // A 3-D, non-contiguous input works too and agrees with the 2-D rows.
            let x3 = crate::seeded_randn(3, 1.0, &[512, 3])
                .t()
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let y3 = q.forward(&x3).unwrap();
            let y2 = q.forward(&x3.squeeze(0).unwrap()).unwrap();
            assert_eq!(y3.dims(), &[1, 3, 96]);
            let d: f32 = crate::max_abs_diff(&y3.squeeze(0).unwrap(), &y2).unwrap();
            assert!(d < 1e-5);
            // bf16 compute goes through the same kernel.
            let yb = q
                .forward(&x.to_dtype(DType::BF16).unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let (m, _) = rel_err(&yb, &yd);
            assert!(m < tol_max + 0.02, "{fmt} bf16: {m}");
        }
    }

    #[test]
    fn loader_quantizes_what_fits_and_reports_the_rest() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let loader = Rc::new(LinearLoader::new(Some(QuantFormat::Q4K), None));
        let (a, b, c) = loader.scope(|| {
            (
                Linear::load(&vb.pp("m"), 256, 32, "fits").unwrap(),
                Linear::load(&vb.pp("m"), 64, 32, "narrow").unwrap(),
                Linear::load(&vb.pp("m"), 48, 32, "odd").unwrap(),
            )
        });
        assert_eq!(a.format(), Some(QuantFormat::Q4K));
        // 64 is not a multiple of Q4_K's 256 but is of the fallback's 32.
        assert_eq!(b.ggml_type(), Some(Q4K_FALLBACK));
        assert_eq!(b.format(), None);
        assert!(c.dense_weight().is_some());
        let r = loader.take_report();
        assert_eq!(r.num_quantized(), 2);
        assert_eq!(r.num_dense(), 1);
        assert_eq!(r.layers[0].0, "m.fits.weight");
        assert!(matches!(&r.layers[1].1, LinearChoice::Quantized(t) if *t == Q4K_FALLBACK));
        assert!(matches!(&r.layers[2].1, LinearChoice::Dense(w) if w.contains("48")));
        // Outside the scope, loads are dense again.
        let c = Linear::load(&vb.pp("m"), 256, 32, "later").unwrap();
        assert!(c.dense_weight().is_some());
    }

    #[test]
    fn inference_loads_pack_dense_layers_and_training_keeps_tensors() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let mut l = LinearLoader::new(None, None);
        l.pack_dense = true;
        let l = Rc::new(l);
        let packed = l.scope(|| Linear::load(&vb, 48, 20, "p").unwrap());
        assert_eq!(
            matches!(packed, Linear::Packed(_)),
            PackedDense::available()
        );
        assert_eq!(packed.dense_dtype(), Some(DType::F32));
        // Same weight, same products as the tensor it came from.
        let w = vm.data().lock().unwrap()["p.weight"].as_tensor().clone();
        let x = crate::seeded_randn(9, 1.0, &[2, 5, 48]);
        let d = crate::max_abs_diff(
            &packed.forward(&x).unwrap(),
            &Linear::Dense(w.clone()).forward(&x).unwrap(),
        )
        .unwrap();
        assert!(d < 1e-4, "{d}");
        assert_eq!(
            crate::max_abs_diff(&packed.weight_f32().unwrap(), &w).unwrap(),
            0.0
        );
        // A plan only records; without a loader (training) layers stay differentiable.
        let mut plan = LinearLoader::new(None, None);
        plan.pack_dense = true;
        plan.plan_only = true;
        let plan = Rc::new(plan);
        assert!(plan
            .scope(|| Linear::load(&vb, 48, 20, "q").unwrap())
            .dense_weight()
            .is_some());
        assert!(Linear::load(&vb, 48, 20, "r")
            .unwrap()
            .dense_weight()
            .is_some());
    }

    #[test]
    fn embeddings_follow_the_loader_and_keep_their_stored_shape() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        // A convolution stored (out, c, kh, kw) becomes the (out, c*kh*kw) matrix.
        let conv = |vb: &VarBuilder, name: &str| {
            Linear::load_as(vb, (8, 3, 4, 4).into(), 48, 8, name, WeightRole::Embedding)
        };
        let w = conv(&vb, "conv").unwrap();
        assert_eq!(w.dense_weight().unwrap().dims(), &[8, 48]);
        assert_eq!(
            vm.data().lock().unwrap()["conv.weight"].dims(),
            &[8, 3, 4, 4]
        );
        // A wrong element count is an error naming the layer, not a panic.
        let err = Linear::load_as(&vb, (8, 3).into(), 48, 8, "bad", WeightRole::Linear)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad"), "{err}");
        for (dense_embeddings, quantized) in [(false, true), (true, false)] {
            let mut l = LinearLoader::new(Some(QuantFormat::Q8_0), None);
            l.dense_embeddings = dense_embeddings;
            let l = Rc::new(l);
            let (e, p) = l.scope(|| {
                (
                    Linear::load_as(&vb, (16, 64).into(), 64, 16, "table", WeightRole::Embedding)
                        .unwrap(),
                    Linear::load(&vb, 64, 16, "proj").unwrap(),
                )
            });
            assert_eq!(e.format().is_some(), quantized);
            assert_eq!(p.format(), Some(QuantFormat::Q8_0));
        }
    }
}
