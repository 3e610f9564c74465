//! Finding and opening a checkpoint's weights: one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Tensors are read through a memory map (no read of the
//! whole file into a buffer); candle then materialises each tensor in the compute dtype.

use crate::error::{ModelError, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The safetensors files of a checkpoint directory, in a deterministic order.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(ModelError::NoSuchDir(dir.to_path_buf()));
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io {
            path: index.clone(),
            source: e,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: index.clone(),
            source: e,
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index.clone(),
                msg: "no \"weight_map\" object".into(),
            })?;
        let mut shards = BTreeSet::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| ModelError::Config {
                path: index.clone(),
                msg: format!("weight_map entry {name:?} is not a file name"),
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(ModelError::Config {
                    path: index.clone(),
                    msg: format!(
                        "weight_map entry {name:?} points outside the directory: {file:?}"
                    ),
                });
            }
            shards.insert(file.to_string());
        }
        let mut files = Vec::new();
        for s in shards {
            let p = dir.join(&s);
            if !p.is_file() {
                return Err(ModelError::Missing {
                    path: dir.to_path_buf(),
                    what: format!("shard {s} (listed in model.safetensors.index.json)"),
                });
            }
            files.push(p);
        }
        if files.is_empty() {
            return Err(ModelError::Config {
                path: index,
                msg: "weight_map is empty".into(),
            });
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::Missing {
        path: dir.to_path_buf(),
        what: "model.safetensors (or model.safetensors.index.json with its shards)".into(),
    })
}

/// Opens the checkpoint's weights as a `VarBuilder` converting to `dtype` on `device`.
pub fn var_builder(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let files = safetensors_files(dir)?;
    for f in &files {
        check_header(f)?;
    }
    // SAFETY: the files are mapped read-only and candle copies each tensor out of the map when it
    // is fetched. The only hazard of a map is another process truncating or rewriting the file
    // while it is mapped, which no loader can rule out; pixlm never writes to a checkpoint it is
    // reading. `loads_sharded_checkpoint` in tests exercises this path.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
        .map_err(|e| ModelError::Weights(format!("opening {}: {e}", dir.display())))?;
    Ok(vb)
}

/// Parses a safetensors header to give a clear error for a truncated or non-safetensors file
/// before candle maps it.
/// The stored dtype of every f16 or bf16 tensor of the checkpoint in `dir`, by name (the
/// safetensors headers; [`var_builder`] has checked them).
pub fn half_tensors(dir: &Path) -> Result<std::collections::HashMap<String, DType>> {
    let mut out = std::collections::HashMap::new();
    for f in safetensors_files(dir)? {
        for (name, dtype) in check_header(&f)? {
            match dtype.as_str() {
                "BF16" => out.insert(name, DType::BF16),
                "F16" => out.insert(name, DType::F16),
                _ => None,
            };
        }
    }
    Ok(out)
}

/// Checks a safetensors file's header; returns each tensor's name and stored dtype.
fn check_header(path: &Path) -> Result<Vec<(String, String)>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let len = f
        .metadata()
        .map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?
        .len();
    let mut n = [0u8; 8];
    let bad = |msg: String| ModelError::Weights(format!("{}: {msg}", path.display()));
    f.read_exact(&mut n)
        .map_err(|_| bad("too short to be a safetensors file".into()))?;
    let hlen = u64::from_le_bytes(n);
    if hlen > 100 << 20 || 8 + hlen > len {
        return Err(bad(format!(
            "not a safetensors file (header length {hlen} for a file of {len} bytes)"
        )));
    }
    let mut h = vec![0u8; hlen as usize];
    f.read_exact(&mut h)
        .map_err(|_| bad("truncated header".into()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&h).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_len = len - 8 - hlen;
    let mut dtypes = Vec::with_capacity(obj.len());
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let end = t
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(|e| e.as_u64())
            .ok_or_else(|| bad(format!("tensor {name} has no data_offsets")))?;
        if end > data_len {
            return Err(bad(format!(
                "truncated: tensor {name} ends at byte {end} but the data section has {data_len}"
            )));
        }
        let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        dtypes.push((name.clone(), dtype.to_string()));
    }
    Ok(dtypes)
}

/// Fetches a tensor by its checkpoint name, turning candle's error into one that names it.
pub fn get(
    vb: &VarBuilder,
    shape: impl Into<candle_core::Shape>,
    name: &str,
    init: candle_nn::Init,
) -> Result<candle_core::Tensor> {
    let shape = shape.into();
    vb.get_with_hints(shape.clone(), name, init).map_err(|e| {
        ModelError::Weights(format!(
            "tensor {}.{name} (expected shape {shape:?}): {e}",
            vb.prefix()
        ))
    })
}
