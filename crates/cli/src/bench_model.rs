//! `pixlm bench --write-model DIR`: a checkpoint of a benchmark shape with random weights, in
//! the Hugging Face layout real checkpoints use (config.json, sharded safetensors with their
//! index, tokenizer files), so that the server and the loaders can be measured at a real
//! model's size on machines that cannot download one.

use crate::bench::{config_json, RandomWeights, RecordedWeights};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use pixlm_engine::engine::token_id;
use pixlm_models::{Model, ModelConfig, NeoSpecialIds};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// Largest shard written, in bytes (Hugging Face's `save_pretrained` default is 5 GB; smaller
/// shards keep each file's write short and exercise the sharded loader at every size).
const SHARD_BYTES: usize = 2 << 30;

/// Writes a random-weight checkpoint of benchmark `shape` into `out` (bf16 weights, as NEO and
/// Qwen3 are published), with the tokenizer files of `tokenizer_from`.
pub(crate) fn write_random_model(shape: &str, out: &Path, tokenizer_from: &Path) -> Result<()> {
    if shape == "all" {
        bail!("--write-model writes one shape; pick one with --shape");
    }
    let cfg_json = config_json(shape)?;
    let cfg = ModelConfig::from_json_str(&cfg_json.to_string(), Path::new("bench-config"))?;
    let tok_path = tokenizer_from.join("tokenizer.json");
    let tok_text = std::fs::read_to_string(&tok_path)
        .with_context(|| format!("reading the tokenizer {}", tok_path.display()))?;
    if !tokenizer_from.join("tokenizer_config.json").is_file() {
        bail!(
            "{} is missing (it carries the chat template)",
            tokenizer_from.join("tokenizer_config.json").display()
        );
    }
    // Read as the engine reads it when it loads the checkpoint.
    let tok = tokenizers::Tokenizer::from_str(&tok_text)
        .map_err(|e| anyhow!("{} is not a tokenizer: {e}", tok_path.display()))?;
    let n_ids = tok.get_vocab_size(true) as u64;
    let vocab = cfg_json["llm_config"]["vocab_size"]
        .as_u64()
        .or_else(|| cfg_json["vocab_size"].as_u64())
        .ok_or_else(|| anyhow!("shape {shape} has no vocab_size"))?;
    // Real checkpoints pad the vocabulary a little (Qwen3: 151,669 ids, 151,936 rows); a
    // tokenizer far smaller than the shape's rows could not decode what the model writes.
    if n_ids > vocab || n_ids + 1024 < vocab {
        bail!(
            "{} has {n_ids} token ids, but shape {shape} has {vocab} embedding rows (use a tokenizer of that vocabulary, e.g. ../shared/fixtures/neo-tiny/model)",
            tok_path.display()
        );
    }
    let neo_ids = match cfg {
        ModelConfig::Neo(_) => {
            let id = |t: &str| token_id(&tok, &tok_path, t);
            Some(NeoSpecialIds {
                img_start: id("<img>")?,
                img_end: id("</img>")?,
                img_context: id("<IMG_CONTEXT>")?,
            })
        }
        _ => None,
    };

    let seen: RecordedWeights = Arc::new(Mutex::new(BTreeMap::new()));
    let vb = candle_nn::VarBuilder::from_backend(
        Box::new(RandomWeights {
            record: Some(seen.clone()),
        }),
        DType::BF16,
        Device::Cpu,
    );
    let bar = ProgressBar::new_spinner();
    bar.set_message(format!("drawing random weights for {shape}"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    drop(Model::from_var_builder(&vb, &cfg, neo_ids)?);
    let tensors = std::mem::take(
        &mut *seen
            .lock()
            .map_err(|_| anyhow!("weight recorder poisoned"))?,
    );
    bar.finish_and_clear();

    // Shards in name order, each at most SHARD_BYTES (a larger tensor gets a shard of its own).
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut filled = 0usize;
    let mut total = 0usize;
    for (name, t) in tensors {
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        if filled > 0 && filled + bytes > SHARD_BYTES {
            shards.push(Vec::new());
            filled = 0;
        }
        filled += bytes;
        total += bytes;
        if let Some(last) = shards.last_mut() {
            last.push((name, t));
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        bar.set_message(file.clone());
        let bytes: usize = shard
            .iter()
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        for (name, _) in &shard {
            weight_map.insert(name.clone(), file.clone().into());
        }
        let map: HashMap<String, Tensor> = shard.into_iter().collect();
        candle_core::safetensors::save(&map, out.join(&file))
            .with_context(|| format!("writing {}", out.join(&file).display()))?;
        bar.inc(bytes as u64);
    }
    bar.finish_and_clear();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let write = |name: &str, text: String| -> Result<()> {
        std::fs::write(out.join(name), text)
            .with_context(|| format!("writing {}", out.join(name).display()))
    };
    write(
        "model.safetensors.index.json",
        serde_json::to_string_pretty(&index)?,
    )?;
    let mut cfg_json = cfg_json;
    cfg_json["torch_dtype"] = "bfloat16".into();
    write("config.json", serde_json::to_string_pretty(&cfg_json)?)?;
    write("tokenizer.json", tok_text)?;
    for extra in ["tokenizer_config.json", "generation_config.json"] {
        let src = tokenizer_from.join(extra);
        if src.is_file() {
            let text = std::fs::read_to_string(&src)
                .with_context(|| format!("reading {}", src.display()))?;
            write(extra, text)?;
        }
    }
    println!(
        "wrote {} ({shape}, random bf16 weights, {:.2} GB in {n} shard{})",
        out.display(),
        total as f64 / 1e9,
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}
