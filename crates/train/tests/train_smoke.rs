//! Training smoke tests on the tiny preset: the loss falls, the checkpoint loads through the
//! inference path, and a resumed run ends exactly where an uninterrupted one does.

use pixlm_engine::{ChatMessage, Content, Engine, GenerateOptions, ImageUrl, Part};
use pixlm_train::model_spec::ModelSpec;
use pixlm_train::trainer::{TrainConfig, Trainer};
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        spec: ModelSpec::preset("tiny").unwrap(),
        steps,
        batch: 8,
        per_image: 4,
        lr: 3e-3,
        warmup: 2,
        save_every: 1000,
        seed: 7,
        // The training-only object-shape head takes part, so resuming and data parallelism
        // are checked with it too.
        stem_aux_weight: 1.0,
        // So are the training-only binding questions and per-kind answer weights.
        pair_counts: 1,
        pair_positions: 1,
        kind_weights: [("exists".to_string(), 3.0), ("count_pair".to_string(), 2.0)].into(),
        // And the attention targets.
        attn_aux_weight: 0.5,
        attn_aux_layer: 1,
        ..TrainConfig::default()
    }
}

/// A run directory `name`, not yet made, inside a fresh scratch directory that is removed when
/// the returned guard drops.
fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let guard = tempfile::Builder::new()
        .prefix("pixlm-train-")
        .tempdir()
        .expect("a scratch directory");
    let d = guard.path().join(name);
    (guard, d)
}

type Weights = HashMap<String, candle_core::Tensor>;

/// The weights of the checkpoint in `dir`.
fn weights(dir: &Path) -> Weights {
    candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
        .unwrap()
}

/// The names of the tensors whose values differ between two checkpoints of one shape.
fn differing(a: &Weights, b: &Weights) -> Vec<String> {
    assert_eq!(a.len(), b.len());
    let mut names: Vec<String> = a
        .iter()
        .filter(|(k, ta)| pixlm_models::max_abs_diff(ta, &b[k.as_str()]).unwrap() > 0.0)
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn loss_falls_and_checkpoint_runs() {
    let (_out_guard, out) = tmp("smoke");
    // The answers' loss alone (the object-shape head's loss falls more slowly).
    let cfg = TrainConfig {
        stem_aux_weight: 0.0,
        attn_aux_weight: 0.0,
        ..config(30)
    };
    let mut t = Trainer::new(cfg, &out, false).unwrap();
    let mut losses = Vec::new();
    t.run(None, None, &mut |s| losses.push(s.loss)).unwrap();
    assert_eq!(losses.len(), 30);
    let first = losses[..3].iter().sum::<f32>() / 3.0;
    let last = losses[27..].iter().sum::<f32>() / 3.0;
    assert!(last < first * 0.7, "loss did not fall: {first} -> {last}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The checkpoint loads through the same path as a real NEO checkpoint and answers.
    let engine = Engine::load(&out, &Default::default()).unwrap();
    let img = image::RgbImage::from_pixel(96, 64, image::Rgb([250, 250, 250]));
    let path = out.join("probe.png");
    img.save(&path).unwrap();
    let msg = ChatMessage {
        role: "user".into(),
        content: Content::Parts(vec![
            Part::ImageUrl {
                image_url: ImageUrl {
                    url: path.to_string_lossy().into_owned(),
                },
            },
            Part::Text {
                text: "How many objects are there?".into(),
            },
        ]),
    };
    let p = engine.prepare(&[msg], None).unwrap();
    let g = engine
        .generate(
            &p,
            &GenerateOptions {
                max_new_tokens: 4,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
    assert!(!g.ids.is_empty());
}

#[test]
fn attention_targets_pull_the_heads_to_the_named_objects() {
    // With the attention targets weighed heavily, the supervised heads of layer 1 come to put
    // much more of their attention on the image tokens of the objects each question names
    // (measured on a batch the run never trained on).
    let (_out_guard, out) = tmp("attn");
    let cfg = TrainConfig {
        stem_aux_weight: 0.0,
        attn_aux_weight: 4.0,
        ..config(25)
    };
    let mut t = Trainer::new(cfg.clone(), &out, false).unwrap();
    let probe = Trainer::batch_for(&cfg, t.tokenizer(), t.preprocess_config(), 10_000).unwrap();
    assert!(probe.iter().any(|e| !e.attn_targets.is_empty()));
    let before = t.attention_on_targets(&probe, 1).unwrap().unwrap();
    t.run(None, None, &mut |_| {}).unwrap();
    let after = t.attention_on_targets(&probe, 1).unwrap().unwrap();
    assert!(
        after > 2.0 * before && after > 0.3,
        "attention on the named objects: {before:.3} -> {after:.3}"
    );
}

#[test]
fn attention_targets_can_be_limited_to_some_kinds() {
    let (_guard, out) = tmp("kinds");
    let t = Trainer::new(config(1), &out, false).unwrap();
    let kinds = |cfg: &TrainConfig| -> BTreeSet<String> {
        Trainer::batch_for(cfg, t.tokenizer(), t.preprocess_config(), 7)
            .unwrap()
            .iter()
            .flat_map(|ex| ex.attn_targets.iter().map(|a| a.kind.clone()))
            .collect()
    };
    let all = kinds(&config(1));
    assert!(all.len() > 2, "{all:?}");
    let cfg = TrainConfig {
        attn_aux_kinds: vec!["count_shape".into(), "exists".into()],
        ..config(1)
    };
    let some = kinds(&cfg);
    assert!(!some.is_empty() && some.iter().all(|k| cfg.attn_aux_kinds.contains(k)));
}

#[test]
fn resume_continues_exactly() {
    let (_full_guard, full) = tmp("full");
    let mut t = Trainer::new(config(6), &full, false).unwrap();
    t.run(None, None, &mut |_| {}).unwrap();
    let (_split_guard, split) = tmp("split");
    let mut cfg = config(6);
    cfg.save_every = 3;
    let mut a = Trainer::new(cfg.clone(), &split, false).unwrap();
    // Stop after the first step (a time limit of zero), then resume.
    let mut n = 0;
    a.run(Some(std::time::Duration::ZERO), None, &mut |_| n += 1)
        .unwrap();
    assert_eq!(n, 1, "time limit zero stops after one step");
    drop(a);
    let mut b = Trainer::new(cfg, &split, true).unwrap();
    assert_eq!(b.step, 1);
    b.run(None, None, &mut |_| {}).unwrap();
    let wa = weights(&full);
    // The object-shape head is kept beside the model, never in it; resuming reloads it (the
    // weights below would differ otherwise).
    assert!(full.join("stem_head.safetensors").is_file());
    assert!(wa.keys().all(|k| !k.contains("stem_head")));
    let diff = differing(&wa, &weights(&split));
    assert!(diff.is_empty(), "{diff:?} differ after resume");
}

#[test]
fn stop_after_keeps_the_full_schedule() {
    // A 6-step run stopped after step 4 holds the 6-step schedule's step-4 weights: resumed,
    // it ends exactly where the uninterrupted run does, and it is not the 4-step run.
    let (_g1, full) = tmp("full6");
    Trainer::new(config(6), &full, false)
        .unwrap()
        .run(None, None, &mut |_| {})
        .unwrap();
    let (_g2, stopped) = tmp("stopped");
    let mut n = 0;
    let mut a = Trainer::new(config(6), &stopped, false).unwrap();
    a.run(None, Some(4), &mut |_| n += 1).unwrap();
    assert_eq!((n, a.step), (4, 4));
    drop(a);
    let at4 = weights(&stopped);
    let (_g3, short) = tmp("short4");
    Trainer::new(config(4), &short, false)
        .unwrap()
        .run(None, None, &mut |_| {})
        .unwrap();
    assert!(
        !differing(&at4, &weights(&short)).is_empty(),
        "the 4-step schedule is another run"
    );
    let mut b = Trainer::new(config(6), &stopped, true).unwrap();
    assert_eq!(b.step, 4);
    b.run(None, None, &mut |_| {}).unwrap();
    let diff = differing(&weights(&full), &weights(&stopped));
    assert!(
        diff.is_empty(),
        "{diff:?} differ after stopping and resuming"
    );
}

#[test]
fn two_workers_match_one() {
    // Workers take micro-batches (8 sequences: two of 4) from a shared counter and the
    // gradients are summed in batch order, so any worker count gives the same bits.
    let mut runs = Vec::new();
    for workers in [1, 2, 3] {
        let (_out_guard, out) = tmp(&format!("workers{workers}"));
        let mut cfg = config(2);
        cfg.workers = workers;
        let mut t = Trainer::new(cfg, &out, false).unwrap();
        let mut losses = Vec::new();
        t.run(None, None, &mut |s| losses.push(s.loss)).unwrap();
        runs.push((losses, weights(&out)));
    }
    let (l1, w1) = &runs[0];
    for (l, w) in &runs[1..] {
        assert_eq!(l1, l, "losses differ");
        let diff = differing(w1, w);
        assert!(diff.is_empty(), "{diff:?} differ");
    }
}

#[test]
fn init_from_starts_from_the_checkpoint() {
    let (_base_guard, base) = tmp("base");
    let mut t = Trainer::new(config(3), &base, false).unwrap();
    t.run(None, None, &mut |_| {}).unwrap();
    // A fine-tune takes the checkpoint's weights and sizes (here the `small` preset is asked
    // for, the checkpoint is `tiny`), with a fresh optimizer from step 0.
    let (_tuned_guard, tuned) = tmp("tuned");
    let cfg = TrainConfig {
        spec: ModelSpec::preset("small").unwrap(),
        init_from: Some(base.clone()),
        seed: 8,
        ..config(2)
    };
    let t = Trainer::new(cfg, &tuned, false).unwrap();
    assert_eq!(t.step, 0);
    assert_eq!(t.config.spec, ModelSpec::preset("tiny").unwrap());
    t.save().unwrap();
    let wa = weights(&base);
    let diff = differing(&wa, &weights(&tuned));
    assert!(
        diff.is_empty(),
        "{diff:?} were not taken from the checkpoint"
    );
    // A fresh run with the fine-tune's seed starts elsewhere (so the check above can fail).
    let (_fresh_guard, fresh) = tmp("fresh");
    let t = Trainer::new(
        TrainConfig {
            seed: 8,
            ..config(2)
        },
        &fresh,
        false,
    )
    .unwrap();
    t.save().unwrap();
    assert!(!differing(&wa, &weights(&fresh)).is_empty());
    // A directory that is not a pixlm checkpoint is refused by name.
    let cfg = TrainConfig {
        init_from: Some(fresh.join("nowhere")),
        ..config(2)
    };
    let err = Trainer::new(cfg, &tmp("bad").1, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains("config.json"),
        "{err}"
    );
}
