//! Options and helpers shared by the subcommands.

use anyhow::{bail, Result};
use clap::Args;
use pixlm_models::{LoadOptions, QuantFormat};
use std::path::PathBuf;

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIXLM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The image budget a NEO model resizes images to (`pixlm run`, `pixlm serve`).
#[derive(Args, Clone, Debug, Default)]
pub struct ImageBudgetArgs {
    /// Smallest image area in pixels after resizing (default: the model's config).
    #[arg(long)]
    pub min_pixels: Option<u64>,
    /// Largest image area in pixels after resizing (default: the model's config).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl ImageBudgetArgs {
    /// Applies the flags to `engine`'s preprocessing; an empty range is an error.
    pub fn apply(&self, engine: &mut pixlm_engine::Engine) -> anyhow::Result<()> {
        if let Some(v) = self.min_pixels {
            engine.preprocess.min_pixels = v;
        }
        if let Some(v) = self.max_pixels {
            engine.preprocess.max_pixels = v;
        }
        if engine.preprocess.min_pixels > engine.preprocess.max_pixels {
            anyhow::bail!(
                "--min-pixels ({}) is larger than --max-pixels ({})",
                engine.preprocess.min_pixels,
                engine.preprocess.max_pixels
            );
        }
        Ok(())
    }
}

/// Compute options every model-loading command takes.
#[derive(Args, Clone, Debug)]
pub struct ComputeArgs {
    /// Compute dtype on CPU: f32 (default, matches the reference), bf16 or f16. With f32, weight
    /// matrices a checkpoint stores in bf16 or f16 stay in that type in memory and are widened
    /// in registers: the same values as widening them at load, in half the memory, read twice
    /// as fast.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
    pub dtype: String,
    /// Worker threads for the tensor kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run on the GPU (needs a build with --features cuda or metal).
    #[arg(long)]
    pub gpu: bool,
    /// Quantize the weight matrices at load: q8_0 or q4_k (linear layers, token embeddings,
    /// output head, patch embedding; norms and biases stay as stored). Matrices whose input
    /// dimension is not a multiple of the block (32 for q8_0, 256 for q4_k) stay dense, except
    /// that q4_k uses Q4_0 where 32 fits.
    #[arg(long, value_parser = ["q8_0", "q4_k"])]
    pub quant: Option<String>,
    /// With --quant, keep token embeddings, output head and patch embedding unquantized.
    #[arg(long, requires = "quant")]
    pub dense_embeddings: bool,
    /// Type the KV cache stores keys and values in (default: the compute dtype, f32, which
    /// matches the reference). f16 or bf16 halve the cache's memory (the server holds twice
    /// the tokens in the same --kv-cache-mb) and what each decode step reads from it, which
    /// at long contexts is a large part of a step; each key and value is rounded once
    /// (llama.cpp stores f16 by default).
    #[arg(long, value_parser = ["f32", "f16", "bf16"])]
    pub kv_cache_dtype: Option<String>,
}

impl ComputeArgs {
    pub fn load_options(&self) -> Result<LoadOptions> {
        if let Some(n) = self.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            // candle's kernels read the thread count from the rayon pool; set it before any work.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        let parse = |s: &str| match s {
            "bf16" => candle_core::DType::BF16,
            "f16" => candle_core::DType::F16,
            _ => candle_core::DType::F32,
        };
        let dtype = parse(&self.dtype);
        let kv_dtype = self.kv_cache_dtype.as_deref().map(parse);
        let device = if self.gpu {
            if candle_core::utils::cuda_is_available() {
                candle_core::Device::new_cuda(0)?
            } else if candle_core::utils::metal_is_available() {
                candle_core::Device::new_metal(0)?
            } else {
                bail!("--gpu: this pixlm was built without CUDA or Metal support (rebuild with --features cuda or --features metal)");
            }
        } else {
            candle_core::Device::Cpu
        };
        let quant = match &self.quant {
            Some(q) => Some(q.parse::<QuantFormat>().map_err(anyhow::Error::msg)?),
            None => None,
        };
        Ok(LoadOptions {
            device,
            dtype,
            quant,
            dense_embeddings: self.dense_embeddings,
            widen_half: false,
            kv_dtype,
        })
    }
}

/// The model shipped in the repository, used when no --model is given.
pub fn default_model_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PIXLM_MODEL") {
        return PathBuf::from(p);
    }
    let exe_rel = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("../../models/shapes-neo")));
    if let Some(p) = exe_rel.filter(|p| p.is_dir()) {
        return p;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes-neo")
}

pub fn resolve_model(model: &Option<PathBuf>) -> Result<PathBuf> {
    match model {
        Some(p) => {
            if !p.exists() {
                bail!("model {} does not exist", p.display());
            }
            Ok(p.clone())
        }
        None => {
            let d = default_model_dir();
            if !d.join("config.json").is_file() {
                bail!(
                    "no --model given and the default model was not found at {} (set PIXLM_MODEL or pass --model DIR)",
                    d.display()
                );
            }
            Ok(d)
        }
    }
}

/// Peak resident memory of this process in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
