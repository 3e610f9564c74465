//! The KV cache's storage type (`LoadOptions::kv_dtype`, `Model::set_kv_dtype`): keys and
//! values stored in f16 or bf16 take half the bytes and give the f32 cache's answers within
//! their rounding, through the prompt (prefill attention) and the decode steps after it.

mod quant_common;

use candle_core::DType;
use pixlm_models::{KvCache, LoadOptions, LogitsWanted, Model, ModelConfig, SeqInput};
use quant_common::*;

const SHAPE: Shape = Shape {
    hidden: 64,
    inter: 128,
    heads: 4,
    kv: 2,
    head_dim: 32,
    layers: 2,
    vocab: 512,
    vision: 32,
    tied: false,
};

/// Logits of a prompt (an image and text) and of 70 decode steps after it (past a cache
/// block), feeding back fixed ids, with the cache's bytes at the end.
fn run(m: &Model) -> (Vec<f32>, usize) {
    let (ids_, images) = prompt(&SHAPE, 20);
    let mut cache = KvCache::new();
    let mut out = Vec::new();
    let mut step = |ids: &[u32], images, decode, cache: &mut KvCache| {
        let l = m
            .forward(
                &mut [SeqInput {
                    ids,
                    images,
                    decode,
                    cache,
                    logits: LogitsWanted::Last,
                }],
                None,
            )
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        out.extend(l.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    };
    step(&ids_, &images[..], false, &mut cache);
    for i in 0..70u32 {
        step(&[7 + i % 50], &[], true, &mut cache);
    }
    (out, cache.bytes())
}

#[test]
fn a_half_cache_takes_half_the_bytes_and_gives_the_same_answers_within_its_rounding() {
    let dir_guard = temp_dir("kv_dtype");
    let dir = dir_guard.path();
    write_random_neo(dir, &SHAPE, 11);
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let load = |kv_dtype| {
        let opts = LoadOptions {
            kv_dtype,
            ..Default::default()
        };
        Model::load(dir, &cfg, Some(ids(SHAPE.vocab)), &opts).unwrap()
    };
    let (want, f32_bytes) = run(&load(None));
    let (same, same_bytes) = run(&load(Some(DType::F32)));
    assert_eq!(
        (&same, same_bytes),
        (&want, f32_bytes),
        "f32 is the default"
    );
    let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
    for (dtype, tol) in [(DType::F16, 2e-3), (DType::BF16, 2e-2)] {
        let (got, bytes) = run(&load(Some(dtype)));
        assert_eq!(bytes * 2, f32_bytes, "{dtype:?}");
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        eprintln!("{dtype:?} cache: max error {err:.2e} against logits up to {scale:.2e}");
        // Rounded once per key and value: off, but by far less than a misread cache would be.
        assert!(
            err > 0.0,
            "{dtype:?}: no rounding at all, so not stored in {dtype:?}"
        );
        assert!(
            err / scale < tol,
            "{dtype:?}: {err} against logits up to {scale}"
        );
    }
    let mut m = load(None);
    assert!(m.set_kv_dtype(Some(DType::U8)).is_err());
}
