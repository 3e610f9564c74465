//! Configs read from a checkpoint's `config.json`, as serde structs mirroring the file.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;

/// A number, or a one-element list holding it (the NEO remote code stores some fields as
/// 1-tuples; spec §1.4).
fn number_or_singleton<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrList {
        Num(f64),
        List(Vec<f64>),
    }
    match NumOrList::deserialize(d)? {
        NumOrList::Num(x) => Ok(x),
        NumOrList::List(v) if v.len() == 1 => Ok(v[0]),
        NumOrList::List(v) => Err(serde::de::Error::custom(format!(
            "expected a number or a one-element list, got a list of {}",
            v.len()
        ))),
    }
}

fn default_rope_theta() -> f64 {
    1_000_000.0
}
fn default_rope_theta_hw() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}

/// The Qwen3 text-model configuration (`Qwen3Config`, also NEO's `llm_config`), with the
/// Qwen3-MoE and NEO extra fields optional.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: bool,
    // NEO (`NEOLLMConfig`)
    #[serde(default = "default_rope_theta_hw")]
    pub rope_theta_hw: f64,
    #[serde(default)]
    pub extra_num_layers: usize,
    // Qwen3-MoE
    #[serde(default)]
    pub num_experts: usize,
    #[serde(default)]
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub moe_intermediate_size: usize,
    #[serde(default = "default_true")]
    pub norm_topk_prob: bool,
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    #[serde(default = "default_one")]
    pub decoder_sparse_step: usize,
}

fn default_one() -> usize {
    1
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether layer `i` uses a mixture-of-experts feed-forward (HF Qwen3-MoE rule).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.num_experts > 0
            && !self.mlp_only_layers.contains(&i)
            && self.decoder_sparse_step > 0
            && (i + 1).is_multiple_of(self.decoder_sparse_step)
    }

    /// Checks the values the forward relies on, so a bad file fails at load, not mid-forward.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| {
            Err(ModelError::Config {
                path: path.to_path_buf(),
                msg,
            })
        };
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return bad("hidden_size, num_hidden_layers and vocab_size must be positive".into());
        }
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        let hd = self.head_dim();
        if hd == 0 || !hd.is_multiple_of(4) {
            return bad(format!("head_dim {hd} must be a positive multiple of 4"));
        }
        if let Some(rs) = &self.rope_scaling {
            if !rs.is_null() {
                return bad(format!("rope_scaling {rs} is not supported yet"));
            }
        }
        if self.use_sliding_window {
            return bad("use_sliding_window = true is not supported".into());
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return bad(format!("hidden_act {act:?} is not supported (only silu)"));
            }
        }
        if self.attention_bias {
            return bad("attention_bias = true is not supported".into());
        }
        if self.num_experts > 0
            && (self.num_experts_per_tok == 0
                || self.num_experts_per_tok > self.num_experts
                || self.moe_intermediate_size == 0)
        {
            return bad(format!(
                "MoE config: num_experts_per_tok ({}) must be in 1..={} and moe_intermediate_size positive",
                self.num_experts_per_tok, self.num_experts
            ));
        }
        Ok(())
    }
}

/// NEO's `vision_config` (the patch embedding layer).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    #[serde(deserialize_with = "number_or_singleton")]
    pub llm_hidden_size: f64,
    pub patch_size: usize,
    #[serde(deserialize_with = "number_or_singleton", default = "half")]
    pub downsample_ratio: f64,
    #[serde(default = "three")]
    pub num_channels: usize,
    #[serde(default = "default_rope_theta_hw")]
    pub rope_theta_vision: f64,
    #[serde(default = "default_max_pos_vision")]
    pub max_position_embeddings_vision: usize,
    #[serde(default = "default_min_pixels")]
    pub min_pixels: u64,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn half() -> f64 {
    0.5
}
fn three() -> usize {
    3
}
fn default_max_pos_vision() -> usize {
    10_000
}
fn default_min_pixels() -> u64 {
    65_536
}
fn default_max_pixels() -> u64 {
    4_194_304
}

impl VisionConfig {
    /// Patches merged per side by the 2x2 dense conv (1 / downsample_ratio).
    pub fn merge_size(&self) -> usize {
        (1.0 / self.downsample_ratio).round() as usize
    }
}

/// Top-level NEO config (`NEOChatConfig`, `model_type = "neo_chat"`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NeoConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub llm_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default, deserialize_with = "opt_number_or_singleton")]
    pub downsample_ratio: Option<f64>,
}

fn opt_number_or_singleton<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    number_or_singleton(d).map(Some)
}

impl NeoConfig {
    /// Spec §11.3: tied if either the LLM config or the top level says so.
    pub fn tied(&self) -> bool {
        self.llm_config.tie_word_embeddings.unwrap_or(false)
            || self.tie_word_embeddings.unwrap_or(false)
    }

    pub fn validate(&self, path: &Path) -> Result<()> {
        self.llm_config.validate(path)?;
        let v = &self.vision_config;
        let bad = |msg: String| {
            Err(ModelError::Config {
                path: path.to_path_buf(),
                msg,
            })
        };
        if v.llm_hidden_size as usize != self.llm_config.hidden_size {
            return bad(format!(
                "vision_config.llm_hidden_size ({}) differs from llm_config.hidden_size ({})",
                v.llm_hidden_size, self.llm_config.hidden_size
            ));
        }
        if v.merge_size() != 2 {
            return bad(format!(
                "vision_config.downsample_ratio {} is not supported (only 0.5)",
                v.downsample_ratio
            ));
        }
        if !v.hidden_size.is_multiple_of(4) || v.patch_size == 0 || v.num_channels != 3 {
            return bad("vision_config: hidden_size must be a multiple of 4, patch_size positive, num_channels 3".into());
        }
        if !self.llm_config.head_dim().is_multiple_of(4) {
            return bad("llm head_dim must be a multiple of 4 for the H/W split".into());
        }
        Ok(())
    }
}

/// The architectures pixlm knows, chosen by `model_type`.
#[derive(Clone, Debug)]
pub enum ModelConfig {
    Neo(NeoConfig),
    Qwen3(TextConfig),
}

impl ModelConfig {
    /// Reads and validates `config.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::Missing {
                    path: dir.to_path_buf(),
                    what: "config.json".into(),
                }
            } else {
                ModelError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        Self::from_json_str(&text, &path)
    }

    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        let model_type = v
            .get("model_type")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string();
        let parse_err = |e: serde_json::Error| ModelError::Config {
            path: path.to_path_buf(),
            msg: format!("{model_type}: {e}"),
        };
        match model_type.as_str() {
            "neo_chat" => {
                let c: NeoConfig = serde_json::from_value(v.clone()).map_err(parse_err)?;
                c.validate(path)?;
                Ok(ModelConfig::Neo(c))
            }
            "qwen3" | "qwen3_moe" => {
                let c: TextConfig = serde_json::from_value(v.clone()).map_err(parse_err)?;
                c.validate(path)?;
                Ok(ModelConfig::Qwen3(c))
            }
            "" => Err(ModelError::Config {
                path: path.to_path_buf(),
                msg: "no \"model_type\" field; cannot tell which architecture this is".into(),
            }),
            other => Err(ModelError::Unsupported(format!(
                "model_type {other:?} in {} (pixlm knows neo_chat, qwen3, qwen3_moe)",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singleton_fields_accepted() {
        let j = r#"{"model_type":"neo_chat","template":"neo1_0",
          "llm_config":{"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"head_dim":16,"intermediate_size":128,"vocab_size":1000,
            "tie_word_embeddings":true},
          "vision_config":{"hidden_size":32,"llm_hidden_size":[64],"patch_size":16,
            "downsample_ratio":[0.5]}}"#;
        let c = ModelConfig::from_json_str(j, Path::new("config.json")).unwrap();
        match c {
            ModelConfig::Neo(n) => {
                assert_eq!(n.vision_config.llm_hidden_size, 64.0);
                assert_eq!(n.vision_config.merge_size(), 2);
                assert!(n.tied());
            }
            _ => panic!("expected neo"),
        }
    }

    #[test]
    fn unknown_model_type_is_named() {
        let e = ModelConfig::from_json_str(r#"{"model_type":"llama"}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("llama"), "{e}");
    }

    #[test]
    fn bad_heads_refused() {
        let j = r#"{"model_type":"qwen3","hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":3,"num_key_value_heads":2,"intermediate_size":128,"vocab_size":1000}"#;
        let e = ModelConfig::from_json_str(j, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
    }

    #[test]
    fn moe_layer_rule() {
        let j = r#"{"model_type":"qwen3_moe","hidden_size":16,"num_hidden_layers":3,
            "num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":64,"vocab_size":100,
            "num_experts":8,"num_experts_per_tok":2,"moe_intermediate_size":32,"mlp_only_layers":[1]}"#;
        let ModelConfig::Qwen3(c) = ModelConfig::from_json_str(j, Path::new("c.json")).unwrap()
        else {
            panic!()
        };
        assert!(c.is_moe_layer(0) && !c.is_moe_layer(1) && c.is_moe_layer(2));
    }
}
