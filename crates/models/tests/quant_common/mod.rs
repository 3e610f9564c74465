//! Shared by the quantization tests: a random-weight NEO checkpoint of a chosen shape written
//! to disk, a fixed image+text prompt, and logit comparisons.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use pixlm_models::{
    ImageInput, KvCache, LogitsWanted, Model, ModelConfig, NeoSpecialIds, SeqInput,
};
use std::path::Path;

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub kv: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub vocab: usize,
    pub vision: usize,
    pub tied: bool,
}

pub fn ids(vocab: usize) -> NeoSpecialIds {
    let v = vocab as u32;
    NeoSpecialIds {
        img_start: v - 3,
        img_end: v - 2,
        img_context: v - 1,
    }
}

/// A fresh scratch directory, removed when the returned guard drops.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pixlm-quant-{tag}-"))
        .tempdir()
        .expect("a scratch directory")
}

pub fn config_json(s: &Shape) -> String {
    serde_json::json!({
        "model_type": "neo_chat", "template": "neo1_0", "tie_word_embeddings": s.tied,
        "llm_config": {"model_type": "qwen3", "hidden_size": s.hidden, "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads, "num_key_value_heads": s.kv, "head_dim": s.head_dim,
            "intermediate_size": s.inter, "vocab_size": s.vocab, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "rope_theta_hw": 1e4, "tie_word_embeddings": s.tied,
            "max_position_embeddings": 4096},
        "vision_config": {"hidden_size": s.vision, "llm_hidden_size": s.hidden, "patch_size": 16,
            "downsample_ratio": 0.5, "rope_theta_vision": 1e4}
    })
    .to_string()
}

/// Writes config.json + model.safetensors of a random NEO model to `dir`. Weights are scaled so
/// activations stay O(1) (matrices ~ N(0, 1/in), embeddings ~ N(0, 1)), giving logits with a
/// spread like a trained model's rather than the near-uniform ones of a 0.02 init.
pub fn write_random_neo(dir: &Path, s: &Shape, seed: u64) {
    let dev = Device::Cpu;
    let text = config_json(s);
    std::fs::write(dir.join("config.json"), &text).unwrap();
    let cfg = ModelConfig::from_json_str(&text, &dir.join("config.json")).unwrap();
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
    drop(Model::from_var_builder(&vb, &cfg, Some(ids(s.vocab))).unwrap());
    for (name, var) in vm.data().lock().unwrap().iter() {
        let t = var.as_tensor();
        let dims = t.dims().to_vec();
        if dims.len() < 2 {
            continue; // norms (ones) and biases (zeros)
        }
        let std = if name.ends_with("embed_tokens.weight") {
            1.0
        } else {
            let fan_in: usize = dims[1..].iter().product();
            1.0 / (fan_in as f64).sqrt()
        };
        // Uniform in ±std·√3 (standard deviation `std`), from a seeded xorshift.
        let mut x: u64 = seed ^ 0x2545_F491_4F6C_DD1D;
        for b in name.bytes() {
            x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let a = std as f32 * 3f32.sqrt();
        let v: Vec<f32> = (0..t.elem_count())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
            })
            .collect();
        var.set(&Tensor::from_vec(v, t.shape(), &dev).unwrap())
            .unwrap();
    }
    vm.save(dir.join("model.safetensors")).unwrap();
}

/// An image (4x4 patches, one merged 2x2 token grid) inside text, ids drawn from the vocab.
pub fn prompt(s: &Shape, text_tokens: usize) -> (Vec<u32>, Vec<ImageInput>) {
    prompt_for(s.vocab as u32 - 3, Some(ids(s.vocab)), text_tokens)
}

/// Text ids below `text_vocab`, with one image when `sp` is given.
pub fn prompt_for(
    text_vocab: u32,
    sp: Option<NeoSpecialIds>,
    text_tokens: usize,
) -> (Vec<u32>, Vec<ImageInput>) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let mut ids = Vec::new();
    for _ in 0..text_tokens / 2 {
        ids.push(next(text_vocab as u64) as u32);
    }
    let mut images = Vec::new();
    if let Some(sp) = sp {
        ids.push(sp.img_start);
        ids.extend([sp.img_context; 4]);
        ids.push(sp.img_end);
        let pixels = (0..16 * 768)
            .map(|_| next(2000) as f32 / 1000.0 - 1.0)
            .collect();
        images.push(ImageInput {
            pixels,
            grid_h: 4,
            grid_w: 4,
        });
    }
    for _ in 0..text_tokens - text_tokens / 2 {
        ids.push(next(text_vocab as u64) as u32);
    }
    (ids, images)
}

/// Logits (n, vocab) for every prompt position.
pub fn all_logits(m: &Model, ids: &[u32], images: &[ImageInput]) -> Tensor {
    let mut cache = KvCache::new();
    m.forward(
        &mut [SeqInput {
            ids,
            images,
            decode: false,
            cache: &mut cache,
            logits: LogitsWanted::All,
        }],
        None,
    )
    .unwrap()
    .pop()
    .unwrap()
    .unwrap()
}

/// Greedy continuation of `ids` for `n` tokens.
pub fn greedy(m: &Model, ids: &[u32], images: &[ImageInput], n: usize) -> Vec<u32> {
    greedy_with_margins(m, ids, images, n).0
}

/// Greedy continuation of `ids` for `n` tokens, with each step's margin between its best and
/// second-best logit (how large an error could flip that step's choice).
pub fn greedy_with_margins(
    m: &Model,
    ids: &[u32],
    images: &[ImageInput],
    n: usize,
) -> (Vec<u32>, Vec<f32>) {
    let mut cache = KvCache::new();
    let mut out = Vec::new();
    let mut margins = Vec::new();
    let mut step: Vec<u32> = ids.to_vec();
    let mut imgs: &[ImageInput] = images;
    let mut decode = false;
    for _ in 0..n {
        let l = m
            .forward(
                &mut [SeqInput {
                    ids: &step,
                    images: imgs,
                    decode,
                    cache: &mut cache,
                    logits: LogitsWanted::Last,
                }],
                None,
            )
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        let row: Vec<f32> = l.squeeze(0).unwrap().to_vec1().unwrap();
        let (mut best, mut second) = ((f32::NEG_INFINITY, 0usize), f32::NEG_INFINITY);
        for (i, &v) in row.iter().enumerate() {
            if v > best.0 {
                second = best.0;
                best = (v, i);
            } else if v > second {
                second = v;
            }
        }
        let next = best.1 as u32;
        out.push(next);
        margins.push(best.0 - second);
        step = vec![next];
        imgs = &[];
        decode = true;
    }
    (out, margins)
}

#[derive(Debug, Clone, Copy)]
pub struct Agreement {
    pub positions: usize,
    pub top1: f64,
    pub max_err: f32,
    pub mean_err: f32,
    /// max |logit| of the reference, for scale.
    pub ref_max: f32,
}

pub fn compare(reference: &Tensor, got: &Tensor) -> Agreement {
    let a = reference.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let b = got.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let d = (reference - got).unwrap().abs().unwrap();
    Agreement {
        positions: a.len(),
        top1: same as f64 / a.len() as f64,
        max_err: d.max_all().unwrap().to_scalar().unwrap(),
        mean_err: d.mean_all().unwrap().to_scalar().unwrap(),
        ref_max: reference
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap(),
    }
}

pub fn texts(config: &str) -> Vec<(String, String)> {
    vec![
        ("pixlm.config_json".into(), config.into()),
        ("pixlm.tokenizer_json".into(), "{}".into()),
        ("pixlm.tokenizer_config_json".into(), "{}".into()),
    ]
}
