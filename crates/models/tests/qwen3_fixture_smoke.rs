//! Model-level parity on the qwen3-tiny and qwen3-moe-tiny fixtures, fed the reference's own
//! ids (so a failure here is the forward pass, not prompting). Both cases of a model run as
//! one packed batch, so the MoE's grouped experts see tokens of two sequences at once.
//! Skipped when `shared/fixtures` is absent.

use candle_core::{DType, Device, Tensor};
use pixlm_models::{KvCache, LogitsWanted, Model, ModelConfig, SeqInput, Trace};
use std::path::PathBuf;

fn fixtures() -> Option<PathBuf> {
    let p = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    p.join("qwen3-moe-tiny").is_dir().then_some(p)
}

fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
    pixlm_models::max_abs_diff(a, b).unwrap()
}

#[test]
fn qwen3_packed_forward_matches_reference() {
    let Some(fx) = fixtures() else {
        eprintln!("fixtures not found; skipping");
        return;
    };
    for set in ["qwen3-tiny", "qwen3-moe-tiny"] {
        let dir = fx.join(set).join("model");
        let cfg = ModelConfig::from_dir(&dir).unwrap();
        let model = Model::load(&dir, &cfg, None, &Default::default()).unwrap();
        let cases = ["chat_short", "long_context"];
        let exp: Vec<_> = cases
            .iter()
            .map(|c| {
                let p = fx
                    .join(set)
                    .join("cases")
                    .join(c)
                    .join("expected.safetensors");
                candle_core::safetensors::load(p, &Device::Cpu).unwrap()
            })
            .collect();
        let ids: Vec<Vec<u32>> = exp
            .iter()
            .map(|e| {
                e["input_ids"]
                    .to_dtype(DType::U32)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        let mut caches = [KvCache::new(), KvCache::new()];
        let mut batch: Vec<SeqInput> = ids
            .iter()
            .zip(caches.iter_mut())
            .map(|(ids, cache)| SeqInput {
                ids,
                images: &[],
                decode: false,
                cache,
                logits: LogitsWanted::Last,
            })
            .collect();
        let mut trace = Trace::default();
        let out = model.forward(&mut batch, Some(&mut trace)).unwrap();
        let mut off = 0;
        for (k, e) in exp.iter().enumerate() {
            let logits = out[k].as_ref().unwrap().squeeze(0).unwrap();
            let d = maxdiff(&logits, &e["logits_last"]);
            assert!(d < 1e-4, "{set}/{}: logits_last {d}", cases[k]);
            let n = ids[k].len();
            if set == "qwen3-moe-tiny" {
                assert_eq!(trace.router.len(), 2, "two sparse layers");
                let sel: Vec<Tensor> = trace
                    .router
                    .iter()
                    .map(|(i, _)| i.narrow(0, off, n).unwrap().to_dtype(DType::I64).unwrap())
                    .collect();
                let w: Vec<Tensor> = trace
                    .router
                    .iter()
                    .map(|(_, w)| w.narrow(0, off, n).unwrap())
                    .collect();
                let sel = Tensor::stack(&sel, 0).unwrap();
                let want: Vec<i64> = e["router_selected_experts"]
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(sel.flatten_all().unwrap().to_vec1::<i64>().unwrap(), want);
                let d = maxdiff(&Tensor::stack(&w, 0).unwrap(), &e["router_weights"]);
                assert!(d < 1e-5, "{set}/{}: router_weights {d}", cases[k]);
            } else {
                assert!(trace.router.is_empty());
            }
            off += n;
        }
    }
}

#[test]
fn moe_model_refusal_is_gone() {
    let Some(fx) = fixtures() else {
        return;
    };
    let dir = fx.join("qwen3-moe-tiny/model");
    let ModelConfig::Qwen3(c) = ModelConfig::from_dir(&dir).unwrap() else {
        panic!("qwen3_moe parses as a Qwen3 text config")
    };
    assert_eq!((c.num_experts, c.num_experts_per_tok), (8, 2));
    assert!(c.is_moe_layer(0) && !c.is_moe_layer(1) && c.is_moe_layer(2));
}
