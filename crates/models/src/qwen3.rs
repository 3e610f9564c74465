//! Qwen3 (`Qwen3ForCausalLM`) and Qwen3-MoE (`Qwen3MoeForCausalLM`): the shared backbone with
//! plain 1-D RoPE, positions 0, 1, 2, … The MoE variant differs only in its feed-forward:
//! the layers `TextConfig::is_moe_layer` names use a mixture of experts (`layers::moe`), the
//! others the dense gated MLP.

use crate::config::TextConfig;
use crate::error::{ModelError, Result};
use crate::transformer::{Backbone, Positions, Trace};
use crate::SeqInput;
use candle_core::Tensor;
use candle_nn::VarBuilder;

pub struct Qwen3 {
    backbone: Backbone,
}

impl Qwen3 {
    pub fn load(vb: &VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let tied = cfg.tie_word_embeddings.unwrap_or(false);
        Ok(Self {
            backbone: Backbone::load(vb, cfg, tied, false)?,
        })
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    pub(crate) fn backbone_mut(&mut self) -> &mut Backbone {
        &mut self.backbone
    }

    pub fn forward(
        &self,
        batch: &mut [SeqInput],
        trace: Option<&mut Trace>,
    ) -> Result<Vec<Option<Tensor>>> {
        let mut pos = Positions::default();
        let mut ids = Vec::new();
        for s in batch.iter() {
            if !s.images.is_empty() {
                return Err(ModelError::Input(
                    "this is a text-only model; images are not accepted".into(),
                ));
            }
            let start = s.cache.last_t();
            pos.t.extend((1..=s.ids.len() as i64).map(|i| start + i));
            ids.extend_from_slice(s.ids);
        }
        let x = self.backbone.embed(&ids)?;
        self.backbone.forward(x, &pos, batch, trace)
    }
}
