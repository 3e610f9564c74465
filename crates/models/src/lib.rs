//! pixlm-models: configs, weight loading, the shared layers and the architectures.
//!
//! A model runs a **packed batch**: the new tokens of several sequences at once, each with its
//! own KV cache. See [`Model::forward`].

pub mod config;
pub mod error;
pub mod kv;
pub mod layers;
pub mod neo;
pub mod qwen3;
pub mod transformer;
pub mod weights;

pub use config::{ModelConfig, NeoConfig, TextConfig, VisionConfig};
pub use error::{ModelError, Result};
pub use kv::KvCache;
pub use neo::NeoSpecialIds;
pub use transformer::{LogitsWanted, Positions, Trace};

use candle_core::{DType, Device, Tensor};
use std::path::Path;

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

/// Where and in which dtype to compute.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

impl Model {
    /// Loads a checkpoint directory (config already parsed). NEO needs its special token ids,
    /// which the caller looks up in the tokenizer.
    pub fn load(
        dir: &Path,
        cfg: &ModelConfig,
        neo_ids: Option<NeoSpecialIds>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let vb = weights::var_builder(dir, opts.dtype, &opts.device)?;
        Self::from_var_builder(&vb, cfg, neo_ids)
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
