//! Quantized linear layers at load (`LoadOptions::quant`), the GGUF export and its round trip,
//! and the refusal of a GGUF file that pixlm did not write.

mod quant_common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use pixlm_models::gguf::{self, GgufFile};
use pixlm_models::{LinearChoice, LoadOptions, Model, ModelConfig, QuantFormat};
use quant_common::*;
use std::path::PathBuf;

/// Every linear input dimension (256, 512) fits both Q8_0 (32) and Q4_K (256).
const SHAPE: Shape = Shape {
    hidden: 256,
    inter: 512,
    heads: 4,
    kv: 2,
    head_dim: 64,
    layers: 2,
    vocab: 512,
    vision: 32,
    tied: false,
};

fn load(path: &std::path::Path, quant: Option<QuantFormat>) -> (Model, pixlm_models::LinearReport) {
    let cfg = if gguf::is_gguf(path) {
        GgufFile::open(path).unwrap().config().unwrap()
    } else {
        ModelConfig::from_dir(path).unwrap()
    };
    let opts = LoadOptions {
        quant,
        ..Default::default()
    };
    Model::load_with_report(path, &cfg, Some(ids(SHAPE.vocab)), &opts).unwrap()
}

#[test]
fn quantized_load_and_gguf_round_trip_agree_with_f32() {
    let dir_guard = temp_dir("roundtrip");
    let dir = dir_guard.path();
    write_random_neo(dir, &SHAPE, 7);
    let (ids_, images) = prompt(&SHAPE, 24);
    let (dense, r) = load(dir, None);
    assert!(r.layers.is_empty(), "a dense load installs no loader");
    let reference = all_logits(&dense, &ids_, &images);
    let (ref_greedy, ref_margins) = greedy_with_margins(&dense, &ids_, &images, 6);
    let cfg_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let f32_bytes = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    // (format, mean |error| / mean |logit|, max |error| / max |logit|, top-1 agreement, size ratio)
    for (fmt, tol_mean, tol_max, min_top1, max_ratio) in [
        (QuantFormat::Q8_0, 0.04, 0.06, 0.9, 0.27),
        (QuantFormat::Q4K, 0.2, 0.35, 0.6, 0.16),
    ] {
        // 1. Quantized at load from safetensors.
        let (q, report) = load(dir, Some(fmt));
        // q k v o q_hw k_hw gate up down per layer, then embed_tokens, lm_head, and the patch
        // embedding's two convolutions (input 768 fits both; the 2x2 conv's 128 takes Q4_K's
        // Q4_0 fallback).
        let linears = SHAPE.layers * 9 + 4;
        assert_eq!(
            report.num_quantized(),
            linears,
            "{fmt}: {:?}",
            report.layers
        );
        assert_eq!(report.num_dense(), 0);
        let got = all_logits(&q, &ids_, &images);
        let a = compare(&reference, &got);
        let mean_ref: f32 = reference
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        eprintln!("{fmt} at load: {a:?} mean|ref| {mean_ref}");
        assert!(a.mean_err / mean_ref < tol_mean, "{fmt}: {a:?}");
        assert!(a.max_err / a.ref_max < tol_max, "{fmt}: {a:?}");
        assert!(a.top1 >= min_top1, "{fmt}: {a:?}");

        // 2. Written to GGUF and loaded from that one file: the same quantized weights, so the
        //    same logits as (1), and f32 tensors exactly as in the checkpoint.
        let out = dir.join(format!("model-{fmt}.gguf"));
        let mut events = 0;
        let rep = gguf::export(
            dir,
            &cfg,
            Some(ids(SHAPE.vocab)),
            fmt,
            false,
            &texts(&cfg_text),
            &out,
            &mut |_| events += 1,
        )
        .unwrap();
        assert_eq!(rep.linears.num_quantized(), linears);
        assert_eq!(events, rep.tensors + 2);
        let ratio = rep.file_bytes as f64 / f32_bytes as f64;
        eprintln!(
            "{fmt}: file {} bytes, {ratio:.3}x of f32 safetensors; {:.1}% params quantized",
            rep.file_bytes,
            100.0 * rep.quantized_params as f64 / rep.total_params as f64
        );
        assert!(ratio < max_ratio, "{fmt}: size ratio {ratio}");
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.quantization(), Some(fmt));
        // Texts are stored compacted: the same JSON.
        let stored: serde_json::Value =
            serde_json::from_str(g.text("pixlm.config_json").unwrap()).unwrap();
        assert_eq!(
            stored,
            serde_json::from_str::<serde_json::Value>(&cfg_text).unwrap()
        );
        assert_eq!(g.text("general.architecture"), Some("neo_chat"));
        assert_eq!(
            g.tensor_type("language_model.model.layers.0.mlp.down_proj.weight"),
            Some(fmt.ggml())
        );
        for name in [
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
            "vision_model.embeddings.patch_embedding.weight",
        ] {
            assert_eq!(g.tensor_type(name), Some(fmt.ggml()), "{name}");
        }
        let narrow = match fmt {
            QuantFormat::Q8_0 => GgmlDType::Q8_0,
            QuantFormat::Q4K => pixlm_models::layers::linear::Q4K_FALLBACK,
        };
        assert_eq!(
            g.tensor_type("vision_model.embeddings.dense_embedding.weight"),
            Some(narrow)
        );
        assert_eq!(
            g.tensor_type("language_model.model.norm.weight"),
            Some(GgmlDType::F32)
        );
        // With dense embeddings, only the linear layers are quantized and the file is larger.
        let out_dense = dir.join(format!("model-{fmt}-dense-emb.gguf"));
        let rep_dense = gguf::export(
            dir,
            &cfg,
            Some(ids(SHAPE.vocab)),
            fmt,
            true,
            &texts(&cfg_text),
            &out_dense,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(rep_dense.linears.num_quantized(), linears - 4);
        assert!(rep_dense.file_bytes > rep.file_bytes);
        let gd = GgufFile::open(&out_dense).unwrap();
        assert_eq!(
            gd.tensor_type("language_model.model.embed_tokens.weight"),
            Some(GgmlDType::F32)
        );
        let (_, rd) = load(&out_dense, None);
        assert_eq!(rd.num_quantized(), linears - 4);
        let (from_file, report) = load(&out, None);
        assert_eq!(report.num_quantized(), linears);
        let got2 = all_logits(&from_file, &ids_, &images);
        let d: f32 = pixlm_models::max_abs_diff(&got2, &got).unwrap();
        assert!(
            d < 1e-4,
            "{fmt}: GGUF vs load-time quantization differ by {d}"
        );
        // Greedy decoding runs from the file; with Q8_0 it picks f32's tokens for as long as
        // f32's choice is clear (its top-2 logits further apart than Q8_0's logit error here,
        // about 0.01): random weights make near-ties, where either token is right.
        let gen = greedy(&from_file, &ids_, &images, 6);
        assert_eq!(gen.len(), 6);
        if fmt == QuantFormat::Q8_0 {
            let clear = ref_margins.iter().take_while(|&&m| m > 0.02).count();
            assert!(
                clear >= 3,
                "f32's greedy path is too close to ties: {ref_margins:?}"
            );
            assert_eq!(gen[..clear], ref_greedy[..clear], "margins {ref_margins:?}");
        }
    }
}

#[test]
fn layers_that_do_not_fit_stay_dense_and_are_reported() {
    let dir_guard = temp_dir("narrow");
    let dir = dir_guard.path();
    // hidden 48 fits no block: q k v q_hw k_hw gate up and the tied embedding stay dense; o
    // (input 64) and down (96) fit Q8_0's 32 and, under Q4_K, its Q4_0 fallback; the patch
    // embedding (768) fits both, the 2x2 conv (128) takes the fallback under Q4_K.
    let s = Shape {
        hidden: 48,
        inter: 96,
        heads: 4,
        kv: 2,
        head_dim: 16,
        layers: 1,
        vocab: 128,
        vision: 32,
        tied: true,
    };
    write_random_neo(dir, &s, 3);
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let fallback = pixlm_models::layers::linear::Q4K_FALLBACK;
    for (fmt, want) in [
        (
            QuantFormat::Q8_0,
            [
                GgmlDType::Q8_0,
                GgmlDType::Q8_0,
                GgmlDType::Q8_0,
                GgmlDType::Q8_0,
            ],
        ),
        (
            QuantFormat::Q4K,
            [fallback, fallback, GgmlDType::Q4K, fallback],
        ),
    ] {
        let opts = LoadOptions {
            quant: Some(fmt),
            ..Default::default()
        };
        let (m, r) = Model::load_with_report(dir, &cfg, Some(ids(s.vocab)), &opts).unwrap();
        let quantized: Vec<(&str, GgmlDType)> = r.quantized_types().collect();
        assert_eq!(quantized.len(), 4, "{fmt}: {quantized:?}");
        let ty = |suffix: &str| {
            quantized
                .iter()
                .find(|(n, _)| n.ends_with(suffix))
                .map(|(_, t)| *t)
        };
        assert_eq!(
            [
                ty("o_proj.weight"),
                ty("down_proj.weight"),
                ty("patch_embedding.weight"),
                ty("dense_embedding.weight")
            ],
            want.map(Some),
            "{fmt}"
        );
        assert_eq!(r.num_dense(), 8, "{fmt}: {:?}", r.layers);
        for (name, c) in &r.layers {
            if let LinearChoice::Dense(why) = c {
                assert!(
                    why.contains("input dim 48 is not a multiple of 32"),
                    "{name}: {why}"
                );
            }
        }
        // The mixed model runs.
        let (ids_, images) = prompt(&s, 8);
        let l = all_logits(&m, &ids_, &images);
        assert_eq!(l.dims(), &[ids_.len(), s.vocab]);
    }
}

#[test]
fn foreign_gguf_is_refused_naming_the_missing_key() {
    let dir_guard = temp_dir("foreign");
    let dir = dir_guard.path();
    let path = dir.join("other.gguf");
    let t = QTensor::quantize(
        &Tensor::ones((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::Q8_0,
    )
    .unwrap();
    let arch = gguf_file::Value::String("llama".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("blk.0.attn_q.weight", &t)],
    )
    .unwrap();
    drop(f);
    assert!(gguf::is_gguf(&path));
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains("pixlm.config_json"), "{err}");
    assert!(err.contains("pixlm quantize"), "{err}");
    // Model::load on the path says the same.
    let cfg = ModelConfig::from_json_str(&config_json(&SHAPE), &PathBuf::from("c")).unwrap();
    let err = Model::load(&path, &cfg, Some(ids(SHAPE.vocab)), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("pixlm.config_json"), "{err}");
    // A file that is not GGUF at all is not taken for one.
    std::fs::write(dir.join("x.gguf"), b"nope").unwrap();
    assert!(!gguf::is_gguf(&dir.join("x.gguf")));
}

#[test]
fn training_path_stays_dense_and_differentiable() {
    // `from_var_builder` without a loader (what training uses) builds dense layers whose
    // gradients reach the linear weights.
    let dev = Device::Cpu;
    let cfg = ModelConfig::from_json_str(&config_json(&SHAPE), &PathBuf::from("c")).unwrap();
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
    let m = Model::from_var_builder(&vb, &cfg, Some(ids(SHAPE.vocab))).unwrap();
    let (ids_, images) = prompt(&SHAPE, 6);
    let l = all_logits(&m, &ids_, &images);
    let g = l.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let data = vm.data().lock().unwrap();
    let w = &data["language_model.model.layers.1.mlp.down_proj.weight"];
    let n: f32 = g
        .get(w.as_tensor())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(n > 0.0);
}

#[test]
fn quantized_models_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Model>();
    send_sync::<pixlm_models::layers::Linear>();
    send_sync::<GgufFile>();
}

#[test]
fn truncated_gguf_is_an_error_not_a_crash() {
    let dir_guard = temp_dir("truncated");
    let dir = dir_guard.path();
    let s = Shape {
        hidden: 64,
        inter: 128,
        heads: 4,
        kv: 2,
        head_dim: 16,
        layers: 1,
        vocab: 128,
        vision: 32,
        tied: true,
    };
    write_random_neo(dir, &s, 5);
    let cfg_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let out = dir.join("m.gguf");
    gguf::export(
        dir,
        &cfg,
        Some(ids(s.vocab)),
        QuantFormat::Q8_0,
        false,
        &texts(&cfg_text),
        &out,
        &mut |_| {},
    )
    .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&out, &bytes[..bytes.len() - 1000]).unwrap();
    let err = match GgufFile::open(&out) {
        Err(e) => e.to_string(),
        Ok(_) => Model::load(&out, &cfg, Some(ids(s.vocab)), &Default::default())
            .err()
            .unwrap()
            .to_string(),
    };
    assert!(err.contains("truncated") || err.contains("GGUF"), "{err}");
}
