//! The shapes model's architecture (a small NEO) and its Hugging Face `config.json`.

use pixlm_models::{ModelConfig, NeoConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Sizes of a NEO-architecture model. Presets: `small` (the shipped model) and `tiny` (tests).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelSpec {
    pub hidden: usize,
    pub layers: usize,
    pub extra_layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vision_hidden: usize,
    /// Preprocessing pixel budget (the `vision_config` min/max pixels pixlm resizes to).
    pub min_pixels: u64,
    pub max_pixels: u64,
    /// Base of the patch embedding's 2-D RoPE.
    #[serde(default = "default_theta_vision")]
    pub rope_theta_vision: f64,
    /// Side of the patch embedding's square patches, in pixels.
    #[serde(default = "default_patch")]
    pub patch_size: usize,
}

fn default_patch() -> usize {
    16
}

fn default_theta_vision() -> f64 {
    10000.0
}

impl ModelSpec {
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "small" => Some(Self {
                hidden: 160,
                layers: 6,
                extra_layers: 2,
                heads: 5,
                kv_heads: 5,
                head_dim: 32,
                intermediate: 448,
                vision_hidden: 96,
                min_pixels: 50176,
                max_pixels: 50176,
                rope_theta_vision: 10000.0,
                patch_size: 16,
            }),
            "tiny" => Some(Self {
                hidden: 32,
                layers: 2,
                extra_layers: 1,
                heads: 2,
                kv_heads: 1,
                head_dim: 16,
                intermediate: 64,
                vision_hidden: 16,
                min_pixels: 16384,
                max_pixels: 16384,
                rope_theta_vision: 10000.0,
                patch_size: 16,
            }),
            _ => None,
        }
    }

    /// The `config.json` of a NEO checkpoint with these sizes and `vocab_rows` embedding rows.
    pub fn config_json(&self, vocab_rows: usize) -> serde_json::Value {
        let llm = json!({
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "extra_num_layers": self.extra_layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": 4096,
            "max_position_embeddings_hw": 10000,
            "rms_norm_eps": 1e-6,
            "rope_scaling": null,
            "rope_theta": 1000000.0,
            "rope_theta_hw": 10000.0,
            "tie_word_embeddings": true,
            "use_sliding_window": false,
            "vocab_size": vocab_rows,
            "dtype": "float32",
        });
        json!({
            "architectures": ["NEOChatModel"],
            "model_type": "neo_chat",
            "template": "neo1_0",
            "downsample_ratio": 0.5,
            "dtype": "float32",
            "tie_word_embeddings": true,
            "use_backbone_lora": 0,
            "use_llm_lora": 0,
            "llm_config": llm,
            "vision_config": {
                "architectures": ["NEOVisionModel"],
                "model_type": "neo_vision",
                "hidden_size": self.vision_hidden,
                "llm_hidden_size": self.hidden,
                "patch_size": self.patch_size,
                "downsample_ratio": 0.5,
                "num_channels": 3,
                "rope_theta_vision": self.rope_theta_vision,
                "max_position_embeddings_vision": 10000,
                "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels,
            },
            "pixlm_model_spec": self,
        })
    }

    pub fn neo_config(&self, vocab_rows: usize) -> pixlm_models::Result<NeoConfig> {
        let text = self.config_json(vocab_rows).to_string();
        match ModelConfig::from_json_str(&text, std::path::Path::new("config.json"))? {
            ModelConfig::Neo(c) => Ok(c),
            _ => Err(pixlm_models::ModelError::Unsupported(
                "not a NEO config".into(),
            )),
        }
    }
}
