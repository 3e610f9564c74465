//! The engine: a loaded model with its tokenizer, turning prepared prompts into tokens.
//!
//! `prepare` (messages → ids and image patches) → `prefill` (one packed forward, KV cache
//! filled) → `decode` (sample, stream, stop rules, one forward per token).

use crate::error::{EngineError, Result};
use crate::messages::ChatMessage;
use crate::prompt::{self, ChatTemplate};
use crate::sampler::{Sampler, SamplingParams};
use crate::stream::{StopMatcher, StreamDecoder};
use candle_core::Tensor;
use pixlm_media::{DecodeLimits, PreprocessConfig};
use pixlm_models::gguf;
use pixlm_models::{
    ImageInput, KvCache, LoadOptions, LogitsWanted, Model, ModelConfig, NeoSpecialIds, SeqInput,
    Trace,
};
use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;

/// What a model family needs to build prompts.
#[derive(Clone, Debug)]
pub enum Family {
    Neo(NeoSpecialIds),
    Qwen3,
}

/// What [`Engine::warm_up`] measured.
#[derive(Clone, Copy, Debug)]
pub struct WarmUp {
    pub took: std::time::Duration,
    /// Bytes of keys and values one token takes in a sequence's cache, over all layers.
    pub kv_bytes_per_token: usize,
}

pub struct Engine {
    pub model: Model,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub family: Family,
    pub dir: PathBuf,
    /// The checkpoint's chat template (text models build their prompt with it; NEO uses its
    /// fixed `neo1_0` format). `None` when the directory has none.
    pub chat_template: Option<ChatTemplate>,
    /// Keyword arguments every chat-template render gets unless the caller passes its own
    /// (`prepare_with_kwargs`), e.g. `{"enable_thinking": false}`.
    pub template_kwargs: Map<String, Json>,
    /// Token ids that end generation (the chat end token).
    pub stop_ids: Vec<u32>,
    /// Longest prompt + generation the engine accepts.
    pub context_limit: usize,
    pub preprocess: PreprocessConfig,
    pub decode_limits: DecodeLimits,
    pub max_images: usize,
}

/// Facts about one image of a prepared prompt.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub source: String,
    pub original_wh: (u32, u32),
    pub resized_wh: (usize, usize),
    pub grid_hw: (usize, usize),
    pub tokens: usize,
}

/// A prompt ready for the model.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub prompt: String,
    pub ids: Vec<u32>,
    pub images: Vec<ImageInput>,
    pub image_info: Vec<ImageInfo>,
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub stop_strings: Vec<String>,
    /// Extra stop token ids besides the model's end-of-turn token.
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_new_tokens: 512,
            stop_strings: Vec::new(),
            stop_ids: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string ended the answer.
    Stop,
    /// `max_new_tokens` or the context limit was reached.
    Length,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids, the stop token included if one was produced.
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

fn tok_err(path: &Path, what: impl Into<String>) -> EngineError {
    EngineError::Tokenizer {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// `eos_token_id` of `generation_config.json` (a number or a list), if the file has one.
pub fn generation_eos_ids(dir: &Path) -> Result<Option<Vec<u32>>> {
    let path = dir.join("generation_config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(tok_err(&path, e.to_string())),
    };
    generation_eos_ids_from_text(&text, &path)
}

/// `eos_token_id` of a `generation_config.json` text (`path` names it in errors).
pub fn generation_eos_ids_from_text(text: &str, path: &Path) -> Result<Option<Vec<u32>>> {
    let path = path.to_path_buf();
    let v: Json = serde_json::from_str(text).map_err(|e| tok_err(&path, e.to_string()))?;
    let bad = || {
        tok_err(
            &path,
            "eos_token_id must be a token id or a list of token ids",
        )
    };
    let id = |x: &Json| {
        x.as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(bad)
    };
    match v.get("eos_token_id") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Array(a)) if a.is_empty() => Ok(None),
        Some(Json::Array(a)) => a.iter().map(id).collect::<Result<Vec<_>>>().map(Some),
        Some(x) => Ok(Some(vec![id(x)?])),
    }
}

/// Looks a special token up by its string (ids are never hard-coded).
pub fn token_id(tok: &Tokenizer, path: &Path, s: &str) -> Result<u32> {
    tok.token_to_id(s)
        .ok_or_else(|| tok_err(path, format!("the tokenizer has no {s} token")))
}

impl Engine {
    /// Loads a checkpoint directory in the Hugging Face layout, or a GGUF file written by
    /// `pixlm quantize` (which carries the config and tokenizer files in its metadata).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let gguf = if gguf::is_gguf(dir) {
            Some(Arc::new(gguf::GgufFile::open(dir)?))
        } else if dir.is_file() {
            return Err(EngineError::Model(pixlm_models::ModelError::Unsupported(
                format!(
                    "{} is a file but not a GGUF model (it does not start with the GGUF \
                     magic); a model is a Hugging Face checkpoint directory or a GGUF file \
                     written by `pixlm quantize`",
                    dir.display()
                ),
            )));
        } else {
            None
        };
        let (config, tok_path, tokenizer) = match &gguf {
            Some(g) => {
                let tok_path = dir.join(gguf::KEY_TOKENIZER);
                let text = g.require_text(gguf::KEY_TOKENIZER)?;
                let tokenizer = Tokenizer::from_bytes(text.as_bytes())
                    .map_err(|e| tok_err(&tok_path, e.to_string()))?;
                (g.config()?, tok_path, tokenizer)
            }
            None => {
                let config = ModelConfig::from_dir(dir)?;
                let tok_path = dir.join("tokenizer.json");
                if !tok_path.is_file() {
                    return Err(EngineError::Model(pixlm_models::ModelError::Missing {
                        path: dir.to_path_buf(),
                        what: "tokenizer.json".into(),
                    }));
                }
                let tokenizer = Tokenizer::from_file(&tok_path)
                    .map_err(|e| tok_err(&tok_path, e.to_string()))?;
                (config, tok_path, tokenizer)
            }
        };
        let (family, stop_ids, context_limit, preprocess) = match &config {
            ModelConfig::Neo(c) => {
                if let Some(t) = &c.template {
                    if t != "neo1_0" {
                        return Err(EngineError::Model(pixlm_models::ModelError::Unsupported(
                            format!("conversation template {t:?} (pixlm knows neo1_0)"),
                        )));
                    }
                }
                let ids = NeoSpecialIds {
                    img_start: token_id(&tokenizer, &tok_path, "<img>")?,
                    img_end: token_id(&tokenizer, &tok_path, "</img>")?,
                    img_context: token_id(&tokenizer, &tok_path, "<IMG_CONTEXT>")?,
                };
                let stop = token_id(&tokenizer, &tok_path, "<|im_end|>")?;
                let v = &c.vision_config;
                let pre = PreprocessConfig {
                    patch_size: v.patch_size,
                    merge_size: v.merge_size(),
                    min_pixels: v.min_pixels,
                    max_pixels: v.max_pixels,
                    ..PreprocessConfig::default()
                };
                let limit = c.llm_config.max_position_embeddings.unwrap_or(32768);
                (Family::Neo(ids), vec![stop], limit, pre)
            }
            ModelConfig::Qwen3(c) => {
                let eos = match &gguf {
                    Some(g) => match g.text(gguf::KEY_GENERATION_CONFIG) {
                        Some(t) => generation_eos_ids_from_text(t, &dir.join("generation_config"))?,
                        None => None,
                    },
                    None => generation_eos_ids(dir)?,
                };
                let stops = match eos {
                    Some(ids) => ids,
                    None => {
                        let mut stops = vec![token_id(&tokenizer, &tok_path, "<|im_end|>")?];
                        if let Some(e) = tokenizer.token_to_id("<|endoftext|>") {
                            stops.push(e);
                        }
                        stops
                    }
                };
                let limit = c.max_position_embeddings.unwrap_or(32768);
                (Family::Qwen3, stops, limit, PreprocessConfig::default())
            }
        };
        let neo_ids = match family {
            Family::Neo(ids) => Some(ids),
            _ => None,
        };
        let (chat_template, model) = match &gguf {
            Some(g) => {
                let t = match g.text(gguf::KEY_CHAT_TEMPLATE) {
                    Some(text) => Some(chat_template_from_json(text, dir)?),
                    None => None,
                };
                let (mut m, _) = gguf::load_model(
                    g,
                    &config,
                    neo_ids,
                    opts.dtype,
                    &opts.device,
                    opts.quant,
                    opts.dense_embeddings,
                )?;
                m.set_kv_dtype(opts.kv_dtype)?;
                (t, m)
            }
            None => (
                ChatTemplate::load(dir)?,
                Model::load(dir, &config, neo_ids, opts)?,
            ),
        };
        Ok(Self {
            model,
            config,
            tokenizer,
            family,
            dir: dir.to_path_buf(),
            chat_template,
            template_kwargs: Map::new(),
            stop_ids,
            context_limit,
            preprocess,
            decode_limits: DecodeLimits::default(),
            max_images: 16,
        })
    }

    /// Reads an image given as a `data:` URL, a `file://` URL or a path (relative paths are
    /// taken from `base_dir` when given). Remote URLs are refused here.
    pub fn load_image(
        &self,
        url: &str,
        base_dir: Option<&Path>,
    ) -> Result<pixlm_media::image::RgbImage> {
        let err = |source| EngineError::Image {
            source_name: short_url(url),
            source,
        };
        if let Some(rest) = url.strip_prefix("data:") {
            let (meta, data) = rest.split_once(',').ok_or_else(|| {
                EngineError::Request(format!("malformed data URL {}", short_url(url)))
            })?;
            if !meta.ends_with(";base64") {
                return Err(EngineError::Request(format!(
                    "data URL {} is not base64-encoded",
                    short_url(url)
                )));
            }
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| {
                    EngineError::Request(format!("data URL {}: bad base64: {e}", short_url(url)))
                })?;
            return pixlm_media::decode_image(&bytes, &self.decode_limits).map_err(err);
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Err(EngineError::Request(format!(
                "remote image URL {} is not fetched here; pass a file or a data: URL",
                short_url(url)
            )));
        }
        let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
        let path = match base_dir {
            Some(b) if path.is_relative() => b.join(path),
            _ => path.to_path_buf(),
        };
        pixlm_media::load_image(&path, &self.decode_limits).map_err(err)
    }

    /// Builds the prompt, loads and preprocesses its images, and tokenizes.
    pub fn prepare(&self, messages: &[ChatMessage], base_dir: Option<&Path>) -> Result<Prepared> {
        self.prepare_with(messages, base_dir, &self.preprocess)
    }

    /// `prepare` with explicit image preprocessing; the chat template gets
    /// `self.template_kwargs`.
    pub fn prepare_with(
        &self,
        messages: &[ChatMessage],
        base_dir: Option<&Path>,
        pre: &PreprocessConfig,
    ) -> Result<Prepared> {
        self.prepare_with_kwargs(messages, base_dir, pre, &self.template_kwargs)
    }

    /// `prepare_with`, the chat template rendered with `template_kwargs` (e.g.
    /// `{"enable_thinking": false}`; ignored by NEO, whose `neo1_0` format takes none).
    pub fn prepare_with_kwargs(
        &self,
        messages: &[ChatMessage],
        base_dir: Option<&Path>,
        pre: &PreprocessConfig,
        template_kwargs: &Map<String, Json>,
    ) -> Result<Prepared> {
        let (prompt_text, images, image_info) = match &self.family {
            Family::Neo(_) => {
                let parts = prompt::neo_prompt(messages)?;
                if parts.images.len() > self.max_images {
                    return Err(EngineError::Request(format!(
                        "{} images in one request; at most {} are accepted",
                        parts.images.len(),
                        self.max_images
                    )));
                }
                let mut images = Vec::new();
                let mut info = Vec::new();
                for url in &parts.images {
                    let img = self.load_image(url, base_dir)?;
                    let p = pixlm_media::preprocess(&img, pre).map_err(|e| EngineError::Image {
                        source_name: short_url(url),
                        source: e,
                    })?;
                    info.push(ImageInfo {
                        source: short_url(url),
                        original_wh: img.dimensions(),
                        resized_wh: (p.grid_w * p.patch_size, p.grid_h * p.patch_size),
                        grid_hw: (p.grid_h, p.grid_w),
                        tokens: p.num_tokens(),
                    });
                    images.push(ImageInput {
                        pixels: p.data,
                        grid_h: p.grid_h,
                        grid_w: p.grid_w,
                    });
                }
                let counts: Vec<usize> = info.iter().map(|i| i.tokens).collect();
                (prompt::expand_images(&parts.text, &counts), images, info)
            }
            Family::Qwen3 => {
                let t = self.chat_template.as_ref().ok_or_else(|| {
                    EngineError::Template(format!(
                        "{} has no chat template (no chat_template in tokenizer_config.json, \
                         no chat_template.jinja), so a chat prompt cannot be built for this \
                         text model",
                        self.dir.display()
                    ))
                })?;
                if messages.is_empty() {
                    return Err(EngineError::Request("no messages".into()));
                }
                (
                    t.render(messages, true, template_kwargs)?,
                    Vec::new(),
                    Vec::new(),
                )
            }
        };
        let enc = self
            .tokenizer
            .encode(prompt_text.as_str(), false)
            .map_err(|e| EngineError::Request(format!("tokenizing the prompt: {e}")))?;
        let ids = enc.get_ids().to_vec();
        if ids.len() >= self.context_limit {
            return Err(EngineError::ContextOverflow {
                tokens: ids.len(),
                limit: self.context_limit,
            });
        }
        Ok(Prepared {
            prompt: prompt_text,
            ids,
            images,
            image_info,
        })
    }

    /// One short text-only forward (16 tokens), so that one-time costs are paid at start-up
    /// and not by the first request: candle repacks each quantized weight on its first
    /// multi-row product (NEO-2B at Q8_0: the first 273-token prompt took 9.1 s, the next
    /// 4.9 s), and weights are touched for the first time. Returns how long it took, and
    /// the bytes of keys and values a token takes in a cache (all layers; measured, so it
    /// holds for whatever widths and dtype the model keeps).
    pub fn warm_up(&self) -> Result<WarmUp> {
        let t = Instant::now();
        let n = self.tokenizer.get_vocab_size(true).clamp(1, 16) as u32;
        let p = Prepared {
            prompt: String::new(),
            ids: (0..n).collect(),
            images: Vec::new(),
            image_info: Vec::new(),
        };
        let (cache, _) = self.prefill(&p, LogitsWanted::Last, None)?;
        Ok(WarmUp {
            took: t.elapsed(),
            kv_bytes_per_token: cache.bytes() / cache.capacity(0).max(1),
        })
    }

    /// Runs the prompt through the model; returns its cache and the logits asked for.
    pub fn prefill(
        &self,
        p: &Prepared,
        want: LogitsWanted,
        trace: Option<&mut Trace>,
    ) -> Result<(KvCache, Tensor)> {
        let mut cache = KvCache::new();
        let mut out = self.model.forward(
            &mut [SeqInput {
                ids: &p.ids,
                images: &p.images,
                decode: false,
                cache: &mut cache,
                logits: want,
            }],
            trace,
        )?;
        let logits = out
            .pop()
            .flatten()
            .ok_or_else(|| EngineError::Request("empty prompt".into()))?;
        Ok((cache, logits))
    }

    /// The decode loop: samples from `first_logits`, then feeds each token back. `on_text`
    /// receives the answer as it is produced (UTF-8 safe, stop strings withheld); `on_step`
    /// sees the logits behind every generated token.
    pub fn decode(
        &self,
        mut cache: KvCache,
        first_logits: Vec<f32>,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
        mut on_step: Option<StepObserver<'_>>,
    ) -> Result<Generation> {
        let prompt_tokens = cache.len();
        let mut sampler = Sampler::new(opts.sampling.clone())?;
        let mut stream = StreamDecoder::new(&self.tokenizer, true);
        let mut stops = StopMatcher::new(opts.stop_strings.clone());
        let budget = opts
            .max_new_tokens
            .min(self.context_limit.saturating_sub(prompt_tokens));
        let mut ids: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut logits = first_logits;
        let mut finish = FinishReason::Length;
        let t0 = Instant::now();
        let mut emit = |s: &str, text: &mut String| {
            if !s.is_empty() {
                on_text(s);
                text.push_str(s);
            }
        };
        while ids.len() < budget {
            if let Some(f) = on_step.as_deref_mut() {
                f(&logits);
            }
            let next = sampler.sample(&logits, &ids);
            ids.push(next);
            if self.stop_ids.contains(&next) || opts.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            let piece = stream
                .push(next)
                .map_err(|e| EngineError::Request(e.to_string()))?;
            let out = stops.push(&piece);
            emit(&out.text, &mut text);
            if out.is_stop() {
                finish = FinishReason::Stop;
                break;
            }
            if ids.len() >= budget {
                break;
            }
            let mut out = self.model.forward(
                &mut [SeqInput {
                    ids: &[next],
                    images: &[],
                    decode: true,
                    cache: &mut cache,
                    logits: LogitsWanted::Last,
                }],
                None,
            )?;
            let l = out
                .pop()
                .flatten()
                .ok_or_else(|| EngineError::Request("model returned no logits".into()))?;
            logits = l.squeeze(0)?.to_vec1()?;
        }
        if !stops.is_stopped() {
            let rest = stream.finish();
            let out = stops.push(&rest);
            emit(&out.text, &mut text);
            if !out.is_stop() {
                emit(&stops.finish().text, &mut text);
            }
        }
        Ok(Generation {
            ids,
            text,
            finish,
            prompt_tokens,
            prefill_secs: 0.0,
            decode_secs: t0.elapsed().as_secs_f64(),
        })
    }

    /// Prepared prompt → answer, streaming text to `on_text`.
    pub fn generate(
        &self,
        p: &Prepared,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let t0 = Instant::now();
        let (cache, logits) = self.prefill(p, LogitsWanted::Last, None)?;
        let logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let prefill_secs = t0.elapsed().as_secs_f64();
        let mut g = self.decode(cache, logits, opts, on_text, None)?;
        g.prefill_secs = prefill_secs;
        Ok(g)
    }
}

/// A callback that sees the logits behind every generated token.
pub type StepObserver<'a> = &'a mut dyn FnMut(&[f32]);

/// A URL or path shortened for messages (data URLs are long).
pub fn short_url(url: &str) -> String {
    if url.len() > 80 {
        let cut = url
            .char_indices()
            .nth(60)
            .map(|(i, _)| i)
            .unwrap_or(url.len());
        format!("{}…", &url[..cut])
    } else {
        url.to_string()
    }
}

/// The chat template stored in a GGUF file: `{"source": ..., "special_tokens": {...}}`.
fn chat_template_from_json(text: &str, file: &Path) -> Result<ChatTemplate> {
    let path = file.join(gguf::KEY_CHAT_TEMPLATE);
    let v: Json = serde_json::from_str(text).map_err(|e| tok_err(&path, e.to_string()))?;
    let source = v
        .get("source")
        .and_then(Json::as_str)
        .ok_or_else(|| tok_err(&path, "no \"source\" string"))?
        .to_string();
    let special_tokens = v
        .get("special_tokens")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    Ok(ChatTemplate {
        source,
        special_tokens,
    })
}

/// Writes the checkpoint directory `dir` as one GGUF file at `out` (see
/// `pixlm_models::gguf::export`), with config.json, tokenizer.json, tokenizer_config.json,
/// generation_config.json (when present) and the resolved chat template in its metadata, so
/// `Engine::load(out)` needs no other file.
pub fn export_gguf(
    dir: &Path,
    format: pixlm_models::QuantFormat,
    dense_embeddings: bool,
    out: &Path,
    progress: &mut dyn FnMut(gguf::ExportEvent),
) -> Result<gguf::ExportReport> {
    let read = |name: &str| -> Result<Option<String>> {
        let p = dir.join(name);
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EngineError::Model(pixlm_models::ModelError::Io {
                path: p,
                source: e,
            })),
        }
    };
    let mut texts = Vec::new();
    for (file, key, required) in [
        ("config.json", gguf::KEY_CONFIG, true),
        ("tokenizer.json", gguf::KEY_TOKENIZER, true),
        ("tokenizer_config.json", gguf::KEY_TOKENIZER_CONFIG, true),
        ("generation_config.json", gguf::KEY_GENERATION_CONFIG, false),
    ] {
        match read(file)? {
            Some(t) => texts.push((key.to_string(), t)),
            None if required => {
                return Err(EngineError::Model(pixlm_models::ModelError::Missing {
                    path: dir.to_path_buf(),
                    what: file.into(),
                }))
            }
            None => {}
        }
    }
    if let Some(t) = ChatTemplate::load(dir)? {
        let v = serde_json::json!({"source": t.source, "special_tokens": t.special_tokens});
        texts.push((gguf::KEY_CHAT_TEMPLATE.to_string(), v.to_string()));
    }
    let config = ModelConfig::from_dir(dir)?;
    let neo_ids = match &config {
        ModelConfig::Neo(_) => {
            let tok_path = dir.join("tokenizer.json");
            let tok =
                Tokenizer::from_file(&tok_path).map_err(|e| tok_err(&tok_path, e.to_string()))?;
            Some(NeoSpecialIds {
                img_start: token_id(&tok, &tok_path, "<img>")?,
                img_end: token_id(&tok, &tok_path, "</img>")?,
                img_context: token_id(&tok, &tok_path, "<IMG_CONTEXT>")?,
            })
        }
        ModelConfig::Qwen3(_) => None,
    };
    Ok(gguf::export(
        dir,
        &config,
        neo_ids,
        format,
        dense_embeddings,
        &texts,
        out,
        progress,
    )?)
}
