//! A whole pixlm model in one GGUF file: every tensor under its checkpoint name (linear weights
//! in Q8_0 or Q4_K where their shape allows, everything else in f32) and the checkpoint's text
//! files in the metadata, so the file is all `pixlm run --model FILE.gguf` needs.
//!
//! Metadata written by [`export`]:
//! - `general.architecture`: the config's `model_type` (`neo_chat`, `qwen3`, `qwen3_moe`)
//! - `general.file_type_name` / `pixlm.quantization`: `q8_0` or `q4_k`
//! - `pixlm.format_version`: 1
//! - `pixlm.config_json`, `pixlm.tokenizer_json`, `pixlm.tokenizer_config_json`: file texts
//!   (required on load; a GGUF from another tool lacks them and is refused, naming the key)
//! - optional texts the caller passes, e.g. `pixlm.generation_config_json`,
//!   `pixlm.chat_template_json` (the resolved chat template and its special tokens).
//!
//! Why embeddings, the output head, norms and the patch embedding stay f32: the embedding table
//! is a lookup (quantizing it saves file size but no compute), the head's logits are what the
//! sampler ranks (its error lands directly on the token choice; with tied embeddings it is the
//! same tensor), norms and biases are tiny vectors, and the patch embedding's input dimension
//! (3·16·16 = 768) and the 2x2 conv's are small and run once per image.
//!
//! Loading maps the file read-only; each tensor is then copied once out of the map by candle
//! (quantized blocks into a `QTensor`, f32 tensors into the compute dtype).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::linear::{LinearChoice, LinearLoader, LinearReport, QuantFormat};
use crate::weights;
use crate::{Model, NeoSpecialIds};
use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

pub const KEY_ARCHITECTURE: &str = "general.architecture";
pub const KEY_CONFIG: &str = "pixlm.config_json";
pub const KEY_TOKENIZER: &str = "pixlm.tokenizer_json";
pub const KEY_TOKENIZER_CONFIG: &str = "pixlm.tokenizer_config_json";
pub const KEY_GENERATION_CONFIG: &str = "pixlm.generation_config_json";
pub const KEY_CHAT_TEMPLATE: &str = "pixlm.chat_template_json";
pub const KEY_QUANTIZATION: &str = "pixlm.quantization";
pub const KEY_FORMAT_VERSION: &str = "pixlm.format_version";
/// Keys a GGUF file must carry to load as a pixlm model.
pub const REQUIRED_KEYS: [&str; 3] = [KEY_CONFIG, KEY_TOKENIZER, KEY_TOKENIZER_CONFIG];

/// True if `path` is a file starting with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    if !path.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// An opened, memory-mapped pixlm GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` and reads its header; refuses a GGUF without pixlm's metadata.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // SAFETY: mapped read-only; the hazard of any map is another process truncating or
        // rewriting the file meanwhile, which no loader can rule out. pixlm never writes a file
        // it is reading (export writes a temporary file and renames it).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let content = Content::read(&mut std::io::Cursor::new(&mmap[..])).map_err(|e| {
            ModelError::Weights(format!("{}: not a GGUF file: {e}", path.display()))
        })?;
        let g = Self {
            path: path.to_path_buf(),
            mmap,
            content,
        };
        for key in REQUIRED_KEYS {
            g.require_text(key)?;
        }
        Ok(g)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A string metadata value.
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.content.metadata.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// A string metadata value that must be present; the error names the key.
    pub fn require_text(&self, key: &str) -> Result<&str> {
        self.text(key).ok_or_else(|| {
            ModelError::Config {
                path: self.path.clone(),
                msg: format!(
                    "this GGUF file has no `{key}` metadata, so it was not written by `pixlm quantize` \
                     (pixlm needs the model's config.json, tokenizer.json and tokenizer_config.json \
                     inside the file); convert the original checkpoint with `pixlm quantize`"
                ),
            }
        })
    }

    /// The model config stored in the file.
    pub fn config(&self) -> Result<ModelConfig> {
        let path = self.path.join(KEY_CONFIG);
        ModelConfig::from_json_str(self.require_text(KEY_CONFIG)?, &path)
    }

    /// The quantization named in the metadata, if any.
    pub fn quantization(&self) -> Option<QuantFormat> {
        self.text(KEY_QUANTIZATION).and_then(|s| s.parse().ok())
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    pub fn tensor_type(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|i| i.ggml_dtype)
    }

    fn bytes(&self, name: &str) -> Result<(&[u8], &gguf_file::TensorInfo)> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| {
            ModelError::Weights(format!("{}: no tensor {name}", self.path.display()))
        })?;
        let t = info.ggml_dtype;
        let elems = info.shape.elem_count();
        if !elems.is_multiple_of(t.block_size()) {
            return Err(ModelError::Weights(format!(
                "{name}: {elems} elements is not a whole number of {t:?} blocks"
            )));
        }
        let len = elems / t.block_size() * t.type_size();
        let start = self.content.tensor_data_offset as usize + info.offset as usize;
        let data = self.mmap.get(start..start + len).ok_or_else(|| {
            ModelError::Weights(format!(
                "{}: truncated: tensor {name} needs bytes {start}..{} of {}",
                self.path.display(),
                start + len,
                self.mmap.len()
            ))
        })?;
        Ok((data, info))
    }

    /// A tensor stored in a block-quantized type, as a `QTensor` on `device` (checked against
    /// `shape`); `None` when the tensor is absent or stored as a plain float type.
    pub fn quantized_tensor(
        &self,
        name: &str,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Option<QTensor>> {
        let Some(t) = self.tensor_type(name) else {
            return Ok(None);
        };
        if float_dtype(t).is_some() {
            return Ok(None);
        }
        let (data, info) = self.bytes(name)?;
        let shape = shape.into();
        if info.shape != shape {
            return Err(ModelError::Weights(format!(
                "{}: tensor {name} has shape {:?}, expected {shape:?}",
                self.path.display(),
                info.shape
            )));
        }
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Borrowed(data),
            device,
            t,
        )?;
        Ok(Some(QTensor::new(storage, shape)?))
    }

    /// Any tensor as a dense tensor in `dtype` on `device` (quantized ones are dequantized).
    pub fn dense_tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let (data, info) = self.bytes(name)?;
        let t = match float_dtype(info.ggml_dtype) {
            Some(dt) => Tensor::from_raw_buffer(data, dt, info.shape.dims(), device)?,
            None => {
                let storage = candle_core::quantized::QStorage::from_data(
                    std::borrow::Cow::Borrowed(data),
                    device,
                    info.ggml_dtype,
                )?;
                QTensor::new(storage, info.shape.clone())?.dequantize(device)?
            }
        };
        Ok(t.to_dtype(dtype)?)
    }
}

fn float_dtype(t: GgmlDType) -> Option<DType> {
    match t {
        GgmlDType::F32 => Some(DType::F32),
        GgmlDType::F16 => Some(DType::F16),
        GgmlDType::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Serves a GGUF file's tensors to a `VarBuilder` (dense, in the compute dtype).
struct GgufBackend(Arc<GgufFile>);

impl candle_nn::var_builder::SimpleBackend for GgufBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "shape mismatch for {name}: expected {s:?}, stored {:?}",
                t.shape()
            )
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0
            .dense_tensor(name, dtype, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.content.tensor_infos.contains_key(name)
    }
}

/// Placeholder weights with the checkpoint's shapes (a broadcast zero, no allocation), for
/// planning an export without reading the weights.
struct ShapeOnly(Arc<candle_core::safetensors::MmapedSafetensors>);

impl candle_nn::var_builder::SimpleBackend for ShapeOnly {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let stored = self.0.get(name)?.shape().to_vec();
        if stored.as_slice() != s.dims() {
            candle_core::bail!("shape mismatch for {name}: expected {s:?}, stored {stored:?}")
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let stored = self.0.get(name)?.shape().to_vec();
        Tensor::zeros((), dtype, dev)?.broadcast_as(stored)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// A `VarBuilder` over a GGUF file's tensors.
pub fn var_builder(file: &Arc<GgufFile>, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(GgufBackend(file.clone())), dtype, device.clone())
}

/// Loads the model stored in a GGUF file. Linear weights stored quantized stay quantized;
/// `quant` additionally quantizes the linear weights stored dense (where their shape allows).
pub fn load_model(
    file: &Arc<GgufFile>,
    cfg: &ModelConfig,
    neo_ids: Option<NeoSpecialIds>,
    dtype: DType,
    device: &Device,
    quant: Option<QuantFormat>,
) -> Result<(Model, LinearReport)> {
    let vb = var_builder(file, dtype, device);
    let loader = Rc::new(LinearLoader::new(quant, Some(file.clone())));
    let model = loader.scope(|| Model::from_var_builder(&vb, cfg, neo_ids))?;
    Ok((model, loader.take_report()))
}

/// Progress of [`export`].
#[derive(Clone, Debug)]
pub enum ExportEvent<'a> {
    /// The checkpoint has this many tensors.
    Start { tensors: usize },
    /// One tensor is ready (quantized or converted to f32).
    Tensor { name: &'a str },
    /// Everything is converted; the file is being written.
    Writing,
}

/// What [`export`] wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// Every linear weight and what became of it.
    pub linears: LinearReport,
    /// Tensors written (all of the checkpoint's).
    pub tensors: usize,
    /// Tensors written as f32.
    pub f32_tensors: usize,
    /// Parameters in quantized linears, and in total.
    pub quantized_params: usize,
    pub total_params: usize,
    /// The size the checkpoint's tensors take in f32, and the GGUF file's size.
    pub f32_bytes: u64,
    pub file_bytes: u64,
}

/// Writes the checkpoint in `dir` as one GGUF file at `out`: linear weights in `format` where
/// their input dimension allows (the same decision as `LoadOptions::quant`, made by
/// `Linear::load`), every other tensor in f32, and `texts` (key, text) in the metadata, which
/// must include [`REQUIRED_KEYS`].
pub fn export(
    dir: &Path,
    cfg: &ModelConfig,
    neo_ids: Option<NeoSpecialIds>,
    format: QuantFormat,
    texts: &[(String, String)],
    out: &Path,
    progress: &mut dyn FnMut(ExportEvent),
) -> Result<ExportReport> {
    for key in REQUIRED_KEYS {
        if !texts.iter().any(|(k, _)| k == key) {
            return Err(ModelError::Input(format!(
                "GGUF export needs the `{key}` text"
            )));
        }
    }
    let files = weights::safetensors_files(dir)?;
    let cpu = Device::Cpu;
    // SAFETY: as in `weights::var_builder` (read-only maps of files pixlm does not write).
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .map_err(|e| ModelError::Weights(format!("opening {}: {e}", dir.display())))?;
    let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    progress(ExportEvent::Start {
        tensors: names.len(),
    });

    // Plan: build the model over placeholder weights (shapes checked against the checkpoint,
    // no data read) with a planning loader, so `Linear::load` decides layer by layer what is a
    // linear weight and whether it fits the format, exactly as `--quant` does at load.
    let st = Arc::new(st);
    let vb = VarBuilder::from_backend(Box::new(ShapeOnly(st.clone())), DType::F32, cpu.clone());
    let mut loader = LinearLoader::new(Some(format), None);
    loader.plan_only = true;
    let loader = Rc::new(loader);
    drop(loader.scope(|| Model::from_var_builder(&vb, cfg, neo_ids))?);
    let linears = loader.take_report();
    let planned: HashMap<&str, QuantFormat> = linears
        .layers
        .iter()
        .filter_map(|(n, c)| match c {
            LinearChoice::Quantized(f) => Some((n.as_str(), *f)),
            LinearChoice::Dense(_) => None,
        })
        .collect();

    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let (mut f32_bytes, mut quantized_params, mut total_params, mut f32_tensors) = (0u64, 0, 0, 0);
    for name in &names {
        let t = st.load(name, &cpu)?;
        let elems = t.elem_count();
        total_params += elems;
        f32_bytes += 4 * elems as u64;
        let q = match planned.get(name.as_str()) {
            Some(f) => {
                quantized_params += elems;
                QTensor::quantize(&t, f.ggml())
                    .map_err(|e| ModelError::Weights(format!("quantizing {name} to {f}: {e}")))?
            }
            None => {
                f32_tensors += 1;
                let t = t.to_dtype(DType::F32)?;
                let t = if t.rank() == 0 { t.reshape(1)? } else { t };
                QTensor::quantize(&t, GgmlDType::F32)?
            }
        };
        tensors.push((name.clone(), q));
        progress(ExportEvent::Tensor { name });
    }

    let arch = serde_json::from_str::<serde_json::Value>(
        &texts
            .iter()
            .find(|(k, _)| k == KEY_CONFIG)
            .map(|(_, t)| t.clone())
            .unwrap_or_default(),
    )
    .ok()
    .and_then(|v| {
        v.get("model_type")
            .and_then(|m| m.as_str())
            .map(String::from)
    })
    .unwrap_or_else(|| "pixlm".into());
    let mut meta: Vec<(String, Value)> = vec![
        (KEY_ARCHITECTURE.into(), Value::String(arch)),
        (
            "general.file_type_name".into(),
            Value::String(format.name().into()),
        ),
        (KEY_QUANTIZATION.into(), Value::String(format.name().into())),
        (KEY_FORMAT_VERSION.into(), Value::U32(1)),
    ];
    for (k, t) in texts {
        meta.push((k.clone(), Value::String(t.clone())));
    }
    progress(ExportEvent::Writing);
    let tmp = out.with_extension("gguf.partial");
    let io = |e: std::io::Error| ModelError::Io {
        path: tmp.clone(),
        source: e,
    };
    {
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::new(f);
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, q)| (k.as_str(), q)).collect();
        gguf_file::write(&mut w, &meta_refs, &t_refs)?;
        use std::io::Write;
        w.flush().map_err(io)?;
    }
    std::fs::rename(&tmp, out).map_err(|e| ModelError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    let file_bytes = std::fs::metadata(out)
        .map_err(|e| ModelError::Io {
            path: out.to_path_buf(),
            source: e,
        })?
        .len();
    Ok(ExportReport {
        linears,
        tensors: tensors.len(),
        f32_tensors,
        quantized_params,
        total_params,
        f32_bytes,
        file_bytes,
    })
}
