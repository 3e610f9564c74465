//! Sharded checkpoints with an index, and f32 / f16 / bf16 tensors, load to the same model.

use candle_core::{DType, Device, Tensor};
use pixlm_models::{KvCache, LogitsWanted, Model, ModelConfig, NeoSpecialIds, SeqInput};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> Option<PathBuf> {
    let p = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    p.join("neo-tiny/model").is_dir().then_some(p)
}

const IDS: NeoSpecialIds = NeoSpecialIds {
    img_start: 151670,
    img_end: 151671,
    img_context: 151669,
};

fn logits(dir: &Path) -> Tensor {
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let m = Model::load(dir, &cfg, Some(IDS), &Default::default()).unwrap();
    let mut cache = KvCache::new();
    let ids = [
        151644u32, 872, 198, 3838, 374, 304, 419, 2168, 30, 151645, 198,
    ];
    let out = m
        .forward(
            &mut [SeqInput {
                ids: &ids,
                images: &[],
                decode: false,
                cache: &mut cache,
                logits: LogitsWanted::Last,
            }],
            None,
        )
        .unwrap();
    out.into_iter().next().unwrap().unwrap()
}

#[test]
fn loads_sharded_checkpoint() {
    let Some(fx) = fixtures() else {
        eprintln!("fixtures not found; skipping");
        return;
    };
    let src = fx.join("neo-tiny/model");
    let tmp = tempfile::Builder::new()
        .prefix("pixlm-sharded-")
        .tempdir()
        .unwrap();
    let dst = tmp.path().join("sharded");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut index = serde_json::Map::new();
    for (shard, part, dtype) in [
        ("model-00001-of-00002.safetensors", a, DType::F32),
        ("model-00002-of-00002.safetensors", b, DType::BF16),
    ] {
        let m: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&m, dst.join(shard)).unwrap();
        for n in part.iter() {
            index.insert((*n).clone(), serde_json::json!(shard));
        }
    }
    std::fs::write(
        dst.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": index}).to_string(),
    )
    .unwrap();
    let d: f32 = pixlm_models::max_abs_diff(&logits(&src), &logits(&dst)).unwrap();
    assert_eq!(
        d, 0.0,
        "bf16 values are exact in f32, so the logits must be identical"
    );
    // f16 weights: tiny embedding values fall into f16's subnormal range, so allow rounding.
    let f16_dir = tmp.path().join("f16");
    std::fs::create_dir_all(&f16_dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), f16_dir.join(f)).unwrap();
    }
    let m: HashMap<String, Tensor> = all
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&m, f16_dir.join("model.safetensors")).unwrap();
    let d: f32 = pixlm_models::max_abs_diff(&logits(&src), &logits(&f16_dir)).unwrap();
    assert!(d < 1e-4, "f16 checkpoint logits differ by {d}");
    // A missing shard is named in the error.
    std::fs::remove_file(dst.join("model-00002-of-00002.safetensors")).unwrap();
    let cfg = ModelConfig::from_dir(&dst).unwrap();
    let err = Model::load(&dst, &cfg, Some(IDS), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}
