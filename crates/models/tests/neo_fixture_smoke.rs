//! Model-level parity on the neo-tiny fixtures, fed the reference's own ids and pixels (so a
//! failure here is the forward pass, not preprocessing or prompting). The end-to-end check of
//! every stage is `pixlm check` (engine::check).

use candle_core::{DType, Device, Tensor};
use pixlm_models::{
    ImageInput, KvCache, LogitsWanted, Model, ModelConfig, NeoSpecialIds, SeqInput, Trace,
};
use std::path::PathBuf;

fn fixtures() -> Option<PathBuf> {
    let p = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    p.join("neo-tiny").is_dir().then_some(p)
}

/// The neo-tiny fixture model and its special token ids.
fn neo_tiny(fx: &std::path::Path) -> (Model, NeoSpecialIds) {
    let dir = fx.join("neo-tiny/model");
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let sp = NeoSpecialIds {
        img_start: 151670,
        img_end: 151671,
        img_context: 151669,
    };
    let model = Model::load(&dir, &cfg, Some(sp), &Default::default()).unwrap();
    (model, sp)
}

fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
    pixlm_models::max_abs_diff(a, b).unwrap()
}

#[test]
fn neo_tiny_forward_matches_reference() {
    let Some(fx) = fixtures() else {
        eprintln!("fixtures not found; skipping");
        return;
    };
    let (model, _) = neo_tiny(&fx);
    for case in ["text_only", "single_image", "two_images", "multi_turn"] {
        let exp = candle_core::safetensors::load(
            fx.join("neo-tiny/cases")
                .join(case)
                .join("expected.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let (input_ids, images) = case_inputs(&fx, case);
        let mut cache = KvCache::new();
        let mut trace = Trace::default();
        let out = model
            .forward(
                &mut [SeqInput {
                    ids: &input_ids,
                    images: &images,
                    decode: false,
                    cache: &mut cache,
                    logits: LogitsWanted::Last,
                }],
                Some(&mut trace),
            )
            .unwrap();
        let logits = out[0].as_ref().unwrap().squeeze(0).unwrap();
        let d_logits = maxdiff(&logits, &exp["logits_last"]);
        let d_l0 = maxdiff(&trace.hidden_layer0.unwrap(), &exp["hidden_layer0"]);
        let d_fn = maxdiff(&trace.hidden_final_norm.unwrap(), &exp["hidden_final_norm"]);
        let d_vis = exp
            .get("vision_embeds")
            .map(|v| maxdiff(&trace.vision_embeds.clone().unwrap(), v))
            .unwrap_or(0.0);
        eprintln!("{case}: vision {d_vis:.2e} layer0 {d_l0:.2e} final_norm {d_fn:.2e} logits {d_logits:.2e}");
        assert!(
            d_vis <= 2e-4 && d_l0 <= 2e-4 && d_fn <= 5e-4 && d_logits <= 2e-4,
            "{case}"
        );
    }
}

/// The fixture case's ids and images, as the reference fed them.
fn case_inputs(fx: &std::path::Path, case: &str) -> (Vec<u32>, Vec<ImageInput>) {
    let exp = candle_core::safetensors::load(
        fx.join("neo-tiny/cases")
            .join(case)
            .join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids: Vec<u32> = exp["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut images = Vec::new();
    if let Some(g) = exp.get("grid_hw") {
        let grids: Vec<Vec<i64>> = g.to_vec2().unwrap();
        let mut off = 0;
        for g in grids {
            let n = (g[0] * g[1]) as usize;
            images.push(ImageInput {
                pixels: exp["pixel_values"]
                    .narrow(0, off, n)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
                grid_h: g[0] as usize,
                grid_w: g[1] as usize,
            });
            off += n;
        }
    }
    (ids, images)
}

#[test]
fn packed_batch_of_three_equals_each_alone() {
    let Some(fx) = fixtures() else {
        eprintln!("fixtures not found; skipping");
        return;
    };
    let (model, _) = neo_tiny(&fx);
    let cases: Vec<(Vec<u32>, Vec<ImageInput>)> = ["text_only", "two_images", "single_image"]
        .iter()
        .map(|c| case_inputs(&fx, c))
        .collect();
    // Alone: prefill, then one decode step with a fixed token.
    let mut alone = Vec::new();
    for (ids, images) in &cases {
        let mut cache = KvCache::new();
        let p = model
            .forward(
                &mut [SeqInput {
                    ids,
                    images,
                    decode: false,
                    cache: &mut cache,
                    logits: LogitsWanted::Last,
                }],
                None,
            )
            .unwrap();
        let d = model
            .forward(
                &mut [SeqInput {
                    ids: &[198],
                    images: &[],
                    decode: true,
                    cache: &mut cache,
                    logits: LogitsWanted::Last,
                }],
                None,
            )
            .unwrap();
        alone.push((p[0].clone().unwrap(), d[0].clone().unwrap()));
    }
    // Packed: the three prompts in one forward, then their decode steps in one forward.
    let mut caches = [KvCache::new(), KvCache::new(), KvCache::new()];
    let mut batch: Vec<SeqInput> = cases
        .iter()
        .zip(caches.iter_mut())
        .map(|((ids, images), cache)| SeqInput {
            ids,
            images,
            decode: false,
            cache,
            logits: LogitsWanted::Last,
        })
        .collect();
    let p = model.forward(&mut batch, None).unwrap();
    drop(batch);
    let mut batch: Vec<SeqInput> = caches
        .iter_mut()
        .map(|cache| SeqInput {
            ids: &[198],
            images: &[],
            decode: true,
            cache,
            logits: LogitsWanted::Last,
        })
        .collect();
    let d = model.forward(&mut batch, None).unwrap();
    for i in 0..3 {
        let dp = maxdiff(p[i].as_ref().unwrap(), &alone[i].0);
        let dd = maxdiff(d[i].as_ref().unwrap(), &alone[i].1);
        assert!(
            dp < 1e-5 && dd < 1e-5,
            "sequence {i}: prefill {dp}, decode {dd}"
        );
    }
}

/// A cache cut back to a prefix (what the server's prefix cache reuses) and continued with the
/// rest of the prompt gives the logits of the whole prompt prefilled at once, for a cut after
/// an image (the image is not re-encoded) and for a cut that drops tokens the cache holds.
#[test]
fn prefix_of_a_cache_continues_like_a_full_prefill() {
    let Some(fx) = fixtures() else {
        eprintln!("fixtures not found; skipping");
        return;
    };
    let (model, sp) = neo_tiny(&fx);
    let (ids, images) = case_inputs(&fx, "single_image");
    let prefill = |ids: &[u32], images: &[ImageInput], cache: &mut KvCache| {
        model
            .forward(
                &mut [SeqInput {
                    ids,
                    images,
                    decode: false,
                    cache,
                    logits: LogitsWanted::Last,
                }],
                None,
            )
            .unwrap()[0]
            .clone()
            .unwrap()
    };
    let full = prefill(&ids, &images, &mut KvCache::new());
    let end = ids.iter().position(|&i| i == sp.img_end).unwrap() + 1;
    assert!(end + 4 < ids.len(), "the case has text after its image");
    // The first `end + 3` tokens (image included) in a cache, cut back to `end + 1`.
    let mut first = KvCache::new();
    prefill(&ids[..end + 3], &images, &mut first);
    let cut = first.prefix(end + 1, ids[end]).unwrap();
    assert_eq!(cut.len(), end + 1);
    assert_eq!(first.len(), end + 3, "the source cache is left as it was");
    let mut cont = cut.clone();
    let rest = prefill(&ids[end + 1..], &[], &mut cont);
    let d = maxdiff(&rest, &full);
    assert!(d < 1e-4, "continued from a prefix: {d}");
    assert_eq!(cont.len(), ids.len());
    assert!(first.prefix(0, 1).is_err() && first.prefix(end + 4, 1).is_err());
}

/// The fixture stores bf16 weights. Kept as stored under f32 compute (the default) they must
/// give exactly the logits of the same weights widened to f32 at load: a prompt (the GEMM and
/// prefill attention) and decode steps (the matrix-vector kernels).
#[test]
fn bf16_weights_kept_as_stored_give_the_widened_logits() {
    let Some(fx) = fixtures() else {
        eprintln!("fixtures not found; skipping");
        return;
    };
    let (kept, sp) = neo_tiny(&fx);
    let dir = fx.join("neo-tiny/model");
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let opts = pixlm_models::LoadOptions {
        widen_half: true,
        ..Default::default()
    };
    let widened = Model::load(&dir, &cfg, Some(sp), &opts).unwrap();
    let head_dtype = |m: &Model| m.backbone().lm_head().dense_dtype().unwrap();
    assert_eq!(head_dtype(&kept), DType::BF16);
    assert_eq!(head_dtype(&widened), DType::F32);
    let (ids, images) = case_inputs(&fx, "single_image");
    let run = |m: &Model| -> Vec<Vec<f32>> {
        let mut cache = KvCache::new();
        let mut out = Vec::new();
        let mut step_ids = ids.clone();
        let mut imgs = images.clone();
        for step in 0..4 {
            let logits = m
                .forward(
                    &mut [SeqInput {
                        ids: &step_ids,
                        images: &imgs,
                        decode: step > 0,
                        cache: &mut cache,
                        logits: LogitsWanted::All,
                    }],
                    None,
                )
                .unwrap()
                .pop()
                .flatten()
                .unwrap();
            let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
            let next = rows
                .last()
                .unwrap()
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            out.extend(rows);
            step_ids = vec![next];
            imgs.clear();
        }
        out
    };
    let (a, b) = (run(&kept), run(&widened));
    assert_eq!(a.len(), ids.len() + 3);
    assert_eq!(
        a, b,
        "logits differ between kept-bf16 and widened-f32 weights"
    );
}
