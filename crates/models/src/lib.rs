//! pixlm-models: configs, weight loading, the shared layers and the architectures.
//!
//! A model runs a **packed batch**: the new tokens of several sequences at once, each with its
//! own KV cache. See [`Model::forward`].

pub mod config;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod kv;
pub mod layers;
pub mod neo;
pub mod qwen3;
pub mod transformer;
pub mod weights;

pub use config::{ModelConfig, NeoConfig, TextConfig, VisionConfig};
pub use error::{ModelError, Result};
pub use kv::{KvBlocks, KvCache};
pub use layers::linear::{HalfWeights, LinearChoice, LinearReport, QuantFormat};
pub use neo::NeoSpecialIds;
pub use transformer::{AttnProbe, LogitsWanted, Positions, Trace};

use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Largest |a − b| over two tensors, compared in f32 after flattening; infinity when their
/// element counts differ. The one comparison parity checks and tests use.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?;
    if a.dims() != b.dims() {
        return Ok(f32::INFINITY);
    }
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

/// Deterministic N(0, std²) test data (splitmix64 + Box–Muller), so a tolerance that holds
/// once holds on every machine and every run; candle's CPU `randn` cannot be seeded.
#[cfg(test)]
pub(crate) fn seeded_randn(seed: u64, std: f32, shape: &[usize]) -> Tensor {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        // 53 random bits in (0, 1]: never 0, so the logarithm below is finite.
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON
    };
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (next(), next());
            let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (g * std as f64) as f32
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches the data")
}

/// One image's patches as the preprocessing produced them: (grid_h·grid_w, 3·p·p) f32,
/// row-major over the patch grid, features in (channel, row, column) order.
#[derive(Clone, Debug)]
pub struct ImageInput {
    pub pixels: Vec<f32>,
    pub grid_h: usize,
    pub grid_w: usize,
}

impl ImageInput {
    /// Tokens this image becomes after the `merge`×`merge` downsampling.
    pub fn num_tokens(&self, merge: usize) -> usize {
        (self.grid_h / merge) * (self.grid_w / merge)
    }

    fn validate(&self, patch: usize) -> Result<()> {
        if self.grid_h == 0
            || self.grid_w == 0
            || !self.grid_h.is_multiple_of(2)
            || !self.grid_w.is_multiple_of(2)
        {
            return Err(ModelError::Input(format!(
                "image patch grid {}x{} must be non-empty and even",
                self.grid_h, self.grid_w
            )));
        }
        let want = self.grid_h * self.grid_w * 3 * patch * patch;
        if self.pixels.len() != want {
            return Err(ModelError::Input(format!(
                "image has {} pixel values, expected {want} for a {}x{} grid of {patch}px patches",
                self.pixels.len(),
                self.grid_h,
                self.grid_w
            )));
        }
        Ok(())
    }
}

/// One sequence's part of a packed forward.
pub struct SeqInput<'a> {
    /// The new token ids of this step.
    pub ids: &'a [u32],
    /// The images whose context tokens are among `ids`, in order (never split across steps).
    pub images: &'a [ImageInput],
    /// True for generated tokens (positions continue as in decoding), false for prompt tokens.
    pub decode: bool,
    pub cache: &'a mut KvCache,
    pub logits: LogitsWanted,
}

/// A loaded model of any supported architecture.
pub enum Model {
    Neo(Box<neo::Neo>),
    Qwen3(Box<qwen3::Qwen3>),
}

/// Where and in which dtype to compute, and whether to quantize the linear layers.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Quantize every weight matrix whose input dimension fits the format's block size
    /// (Q4_K falls back to Q4_0 where only 32 fits): linear layers, token embeddings, the
    /// output head and the patch embedding; norms and biases stay in `dtype`. For a GGUF file,
    /// weights stored quantized stay as stored and this applies to the dense rest.
    pub quant: Option<QuantFormat>,
    /// With `quant`, keep token embeddings, the output head and the patch embedding in `dtype`.
    pub dense_embeddings: bool,
    /// Widen bf16/f16 checkpoint weights to f32 at load (for comparisons). By default, under
    /// f32 on the CPU they stay as stored: the kernels widen them in registers, to the same
    /// values, so results are unchanged in half the memory.
    pub widen_half: bool,
    /// The type the KV cache stores keys and values in; `None` keeps them in the compute
    /// dtype (f32 by default, which the fixtures' tolerances assume). f16 or bf16 halve the
    /// cache's memory and what a decode step reads from it at long contexts, at the cost of
    /// rounding each key and value once (llama.cpp stores f16 by default).
    pub kv_dtype: Option<DType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            quant: None,
            dense_embeddings: false,
            widen_half: false,
            kv_dtype: None,
        }
    }
}

impl Model {
    /// Loads a checkpoint directory or a pixlm GGUF file (config already parsed). NEO needs
    /// its special token ids, which the caller looks up in the tokenizer.
    pub fn load(
        path: &Path,
        cfg: &ModelConfig,
        neo_ids: Option<NeoSpecialIds>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        Ok(Self::load_with_report(path, cfg, neo_ids, opts)?.0)
    }

    /// As [`Model::load`], also saying which linear layers were quantized and which stayed
    /// dense (and why). The report is empty for a dense load of a checkpoint directory.
    pub fn load_with_report(
        path: &Path,
        cfg: &ModelConfig,
        neo_ids: Option<NeoSpecialIds>,
        opts: &LoadOptions,
    ) -> Result<(Self, LinearReport)> {
        let (mut model, report) = if gguf::is_gguf(path) {
            let file = std::sync::Arc::new(gguf::GgufFile::open(path)?);
            gguf::load_model(
                &file,
                cfg,
                neo_ids,
                opts.dtype,
                &opts.device,
                opts.quant,
                opts.dense_embeddings,
            )?
        } else {
            let vb = weights::var_builder(path, opts.dtype, &opts.device)?;
            // Computing in f32 on the CPU, weights the checkpoint stores in bf16/f16 stay so.
            let half = if opts.dtype == DType::F32 && opts.device.is_cpu() && !opts.widen_half {
                layers::linear::HalfWeights::Stored(weights::half_tensors(path)?)
            } else {
                layers::linear::HalfWeights::None
            };
            let mut loader = layers::linear::LinearLoader::new(opts.quant, None);
            loader.dense_embeddings = opts.dense_embeddings;
            loader.half = half;
            loader.pack_dense = true;
            Self::from_var_builder_loading(&vb, cfg, neo_ids, loader)?
        };
        model.set_kv_dtype(opts.kv_dtype)?;
        if !report.layers.is_empty() {
            tracing::info!(
                "{}: {} weight matrices quantized, {} dense",
                path.display(),
                report.num_quantized(),
                report.num_dense()
            );
        }
        Ok((model, report))
    }

    /// Builds the model from any `VarBuilder` (a checkpoint, or a `VarMap` for training and
    /// random-weight benchmarks).
    pub fn from_var_builder(
        vb: &candle_nn::VarBuilder,
        cfg: &ModelConfig,
        neo_ids: Option<NeoSpecialIds>,
    ) -> Result<Self> {
        match cfg {
            ModelConfig::Neo(c) => {
                let ids = neo_ids.ok_or_else(|| {
                    ModelError::Unsupported(
                        "NEO needs the ids of <img>, </img>, <IMG_CONTEXT>".into(),
                    )
                })?;
                Ok(Model::Neo(Box::new(neo::Neo::load(vb, c, ids)?)))
            }
            ModelConfig::Qwen3(c) => Ok(Model::Qwen3(Box::new(qwen3::Qwen3::load(vb, c)?))),
        }
    }

    /// As [`Model::from_var_builder`], quantizing the weight matrices to `quant` where their
    /// shape allows (e.g. random-weight benchmarks of a quantized model), for inference: the
    /// dense weights are packed for the CPU kernels where they apply (not differentiable; use
    /// `from_var_builder` to train).
    pub fn from_var_builder_quantized(
        vb: &candle_nn::VarBuilder,
        cfg: &ModelConfig,
        neo_ids: Option<NeoSpecialIds>,
        quant: Option<QuantFormat>,
    ) -> Result<(Self, LinearReport)> {
        Self::from_var_builder_with(vb, cfg, neo_ids, quant, layers::linear::HalfWeights::None)
    }

    /// As [`Model::from_var_builder_quantized`], keeping `half` dense weights in f16/bf16.
    pub fn from_var_builder_with(
        vb: &candle_nn::VarBuilder,
        cfg: &ModelConfig,
        neo_ids: Option<NeoSpecialIds>,
        quant: Option<QuantFormat>,
        half: layers::linear::HalfWeights,
    ) -> Result<(Self, LinearReport)> {
        let mut loader = layers::linear::LinearLoader::new(quant, None);
        loader.half = half;
        loader.pack_dense = true;
        Self::from_var_builder_loading(vb, cfg, neo_ids, loader)
    }

    /// [`Model::from_var_builder`] with `loader` deciding every linear layer; its report
    /// when it quantizes, else an empty one.
    fn from_var_builder_loading(
        vb: &candle_nn::VarBuilder,
        cfg: &ModelConfig,
        neo_ids: Option<NeoSpecialIds>,
        loader: layers::linear::LinearLoader,
    ) -> Result<(Self, LinearReport)> {
        let quantizes = loader.quant.is_some();
        let loader = std::rc::Rc::new(loader);
        let m = loader.scope(|| Self::from_var_builder(vb, cfg, neo_ids))?;
        let report = if quantizes {
            loader.take_report()
        } else {
            LinearReport::default()
        };
        Ok((m, report))
    }

    /// Runs one packed forward over every sequence of `batch`, appending to their caches.
    /// Returns, per sequence, the logits it asked for as an (n, vocab) f32 tensor.
    pub fn forward(
        &self,
        batch: &mut [SeqInput],
        trace: Option<&mut Trace>,
    ) -> Result<Vec<Option<Tensor>>> {
        match self {
            Model::Neo(m) => m.forward(batch, trace),
            Model::Qwen3(m) => m.forward(batch, trace),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.backbone().vocab_size()
    }

    pub fn device(&self) -> &Device {
        self.backbone().device()
    }

    /// Stores the KV cache's keys and values in `dtype` from now on (`None`: in the compute
    /// dtype); anything but f32, f16 or bf16 is refused. Caches filled before keep their
    /// blocks as they are, so set this before the first forward.
    pub fn set_kv_dtype(&mut self, dtype: Option<DType>) -> Result<()> {
        if let Some(d) = dtype {
            if !matches!(d, DType::F32 | DType::F16 | DType::BF16) {
                return Err(ModelError::Unsupported(format!(
                    "a KV cache of {d:?} (f32, f16 or bf16 are supported)"
                )));
            }
        }
        match self {
            Model::Neo(m) => m.backbone_mut().kv_dtype = dtype,
            Model::Qwen3(m) => m.backbone_mut().kv_dtype = dtype,
        }
        Ok(())
    }

    pub fn backbone(&self) -> &transformer::Backbone {
        match self {
            Model::Neo(m) => m.backbone(),
            Model::Qwen3(m) => m.backbone(),
        }
    }

    pub fn as_neo(&self) -> Option<&neo::Neo> {
        match self {
            Model::Neo(m) => Some(m),
            _ => None,
        }
    }
}
