//! A whole pixlm model in one GGUF file: every tensor under its checkpoint name (weight
//! matrices in Q8_0 or Q4_K where their shape allows, Q4_K's narrow ones in its Q4_0 fallback,
//! everything else in f32) and the checkpoint's text files in the metadata, so the file is all
//! `pixlm run --model FILE.gguf` needs.
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
//! What is quantized is decided by the same loader as `--quant` at load time: every linear
//! layer, and by default the embedding-like matrices too (token embeddings, a separate output
//! head, the patch embedding's two convolutions, stored quantized as (out, in) matrices); norms
//! and biases are tiny vectors and stay f32. `dense_embeddings` keeps the embedding-like ones
//! in f32 (BENCHMARKS.md has the measurement behind the default).
//!
//! [`export`] streams: the header is computed from the plan (every tensor's final type and
//! shape are known before any weight is read), then each tensor is read, converted, written and
//! dropped, so memory stays at one tensor whatever the model's size.
//!
//! Loading maps the file read-only; each tensor is then copied once out of the map by candle
//! (quantized blocks into a `QTensor`, f32 tensors into the compute dtype).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::linear::{LinearLoader, LinearReport, QuantFormat};
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
    dense_embeddings: bool,
) -> Result<(Model, LinearReport)> {
    let vb = var_builder(file, dtype, device);
    let mut loader = LinearLoader::new(quant, Some(file.clone()));
    loader.dense_embeddings = dense_embeddings;
    loader.pack_dense = true;
    let loader = Rc::new(loader);
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

/// Writes the checkpoint in `dir` as one GGUF file at `out`: weight matrices in `format` where
/// their input dimension allows (the same decision as `LoadOptions::quant`, made by
/// `Linear::load`; embedding-like ones only without `dense_embeddings`), every other tensor
/// in f32, and `texts` (key, text) in the metadata, which must include [`REQUIRED_KEYS`].
/// Tensors are converted and written one at a time.
#[allow(clippy::too_many_arguments)]
pub fn export(
    dir: &Path,
    cfg: &ModelConfig,
    neo_ids: Option<NeoSpecialIds>,
    format: QuantFormat,
    dense_embeddings: bool,
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
    // weight matrix and whether it fits the format, exactly as `--quant` does at load.
    let st = Arc::new(st);
    let vb = VarBuilder::from_backend(Box::new(ShapeOnly(st.clone())), DType::F32, cpu.clone());
    let mut loader = LinearLoader::new(Some(format), None);
    loader.plan_only = true;
    loader.dense_embeddings = dense_embeddings;
    let loader = Rc::new(loader);
    drop(loader.scope(|| Model::from_var_builder(&vb, cfg, neo_ids))?);
    let linears = loader.take_report();
    let planned: HashMap<&str, GgmlDType> = linears.quantized_types().collect();

    // Every tensor's stored type and shape, before reading any: a quantized matrix is stored
    // (out, in) (a convolution's kernel dims folded into `in`), a scalar as one element.
    let mut infos: Vec<TensorOut> = Vec::with_capacity(names.len());
    let (mut f32_bytes, mut quantized_params, mut total_params, mut f32_tensors) = (0u64, 0, 0, 0);
    for name in &names {
        let dims = st.get(name)?.shape().to_vec();
        let elems: usize = dims.iter().product();
        total_params += elems;
        f32_bytes += 4 * elems as u64;
        let (ty, dims) = match planned.get(name.as_str()) {
            Some(&ty) => {
                quantized_params += elems;
                (ty, vec![dims[0], elems / dims[0].max(1)])
            }
            None => {
                f32_tensors += 1;
                (GgmlDType::F32, if dims.is_empty() { vec![1] } else { dims })
            }
        };
        infos.push(TensorOut {
            name: name.clone(),
            ty,
            dims,
        });
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
        meta.push((k.clone(), Value::String(compact_json(t))));
    }
    let tmp = out.with_extension("gguf.partial");
    let io = |e: std::io::Error| ModelError::Io {
        path: tmp.clone(),
        source: e,
    };
    let written = (|| -> Result<()> {
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::new(f);
        write_header(&mut w, &meta, &infos).map_err(io)?;
        for info in &infos {
            let t = st.load(&info.name, &cpu)?.to_dtype(DType::F32)?;
            let t = t.reshape(info.dims.as_slice())?;
            let q = QTensor::quantize(&t, info.ty).map_err(|e| {
                ModelError::Weights(format!("quantizing {} to {:?}: {e}", info.name, info.ty))
            })?;
            let data = q.data()?;
            if data.len() != info.bytes() {
                return Err(ModelError::Weights(format!(
                    "{}: {} bytes quantized, {} planned",
                    info.name,
                    data.len(),
                    info.bytes()
                )));
            }
            use std::io::Write;
            w.write_all(&data).map_err(io)?;
            w.write_all(&[0u8; ALIGN][..pad(data.len())]).map_err(io)?;
            progress(ExportEvent::Tensor { name: &info.name });
        }
        progress(ExportEvent::Writing);
        use std::io::Write;
        w.flush().map_err(io)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
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
        tensors: infos.len(),
        f32_tensors,
        quantized_params,
        total_params,
        f32_bytes,
        file_bytes,
    })
}

/// `text` without the whitespace between JSON tokens when it is JSON (checkpoint files are
/// often pretty-printed: the shapes model's tokenizer.json shrinks from 38 KB to 15 KB), else
/// `text` unchanged. Strings, escapes included, are copied as they are.
pub fn compact_json(text: &str) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// GGUF's default alignment of the tensor data.
const ALIGN: usize = 32;

fn pad(len: usize) -> usize {
    (ALIGN - len % ALIGN) % ALIGN
}

/// One tensor as it will be stored.
struct TensorOut {
    name: String,
    ty: GgmlDType,
    /// Row-major, outermost first (GGUF stores them innermost first).
    dims: Vec<usize>,
}

impl TensorOut {
    fn bytes(&self) -> usize {
        let elems: usize = self.dims.iter().product();
        elems / self.ty.block_size() * self.ty.type_size()
    }
}

/// GGML's type ids, as GGUF stores them.
fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// The GGUF (version 3) header: metadata, then every tensor's name, dims, type and offset
/// into the data section, then padding to the alignment. Only the value types `export`
/// writes (strings and u32) are supported.
fn write_header<W: std::io::Write>(
    w: &mut W,
    meta: &[(String, Value)],
    tensors: &[TensorOut],
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let string = |buf: &mut Vec<u8>, s: &str| {
        buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    };
    buf.extend_from_slice(&0x4655_4747u32.to_le_bytes());
    buf.extend_from_slice(&3u32.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    buf.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        string(&mut buf, k);
        match v {
            Value::U32(x) => {
                buf.extend_from_slice(&4u32.to_le_bytes());
                buf.extend_from_slice(&x.to_le_bytes());
            }
            Value::String(t) => {
                buf.extend_from_slice(&8u32.to_le_bytes());
                string(&mut buf, t);
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "GGUF metadata {k}: value type {:?} not written by pixlm",
                    other.value_type()
                )))
            }
        }
    }
    let mut offset = 0usize;
    for t in tensors {
        string(&mut buf, &t.name);
        buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for &d in t.dims.iter().rev() {
            buf.extend_from_slice(&(d as u64).to_le_bytes());
        }
        buf.extend_from_slice(&ggml_type_id(t.ty).to_le_bytes());
        buf.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.bytes() + pad(t.bytes());
    }
    buf.resize(buf.len() + pad(buf.len()), 0);
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_keeps_strings_and_meaning() {
        let text = "{\n  \"a b\": \"x \\\" y \\\\\",\n\t\"c\" : [1, 2, {\"d\": \" \\n \"}]\r\n}";
        let c = compact_json(text);
        assert_eq!(
            c,
            "{\"a b\":\"x \\\" y \\\\\",\"c\":[1,2,{\"d\":\" \\n \"}]}"
        );
        let a: serde_json::Value = serde_json::from_str(text).unwrap();
        let b: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(a, b);
        // Not JSON: unchanged.
        assert_eq!(compact_json("not { json"), "not { json");
    }

    #[test]
    fn header_offsets_follow_the_aligned_sizes() {
        let t = |name: &str, ty, dims: Vec<usize>| TensorOut {
            name: name.into(),
            ty,
            dims,
        };
        let tensors = [
            t("a", GgmlDType::F32, vec![3]),
            t("b", GgmlDType::Q8_0, vec![2, 32]),
        ];
        let mut buf = Vec::new();
        write_header(&mut buf, &[("k".into(), Value::U32(7))], &tensors).unwrap();
        assert_eq!(buf.len() % ALIGN, 0);
        assert_eq!(tensors[0].bytes(), 12);
        assert_eq!(tensors[1].bytes(), 68);
        // Unsupported metadata types are an error, not a corrupt file.
        let err = write_header(&mut Vec::new(), &[("k".into(), Value::F32(1.0))], &tensors);
        assert!(err.is_err());
    }
}
