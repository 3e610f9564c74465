//! The model shipped in `models/shapes-neo`: the quick start's answer, and an accuracy floor on
//! a fixed held-out set (drawn with a seed training never uses).
//!
//! The floor guards against regressions of the shipped model (measured 94.7% overall on this
//! set, per kind 86-100%); it is below the 95% target, which this model does not quite
//! reach (93.9% on the 1,000-question held-out set of BENCHMARKS.md).

mod common;

use common::pixlm;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn quick_start_answers_correctly() {
    // Uses the default model (no --model), exactly as the README's first command.
    let img = repo().join("examples/shapes.png");
    let o = pixlm(&[
        "run",
        "--image",
        img.to_str().unwrap(),
        "How many triangles are there?",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "2");
}

#[test]
fn held_out_accuracy_floor() {
    let tmp = common::tmpdir("heldout");
    let dir = tmp.path().join("set");
    let o = pixlm(&[
        "gen-shapes",
        dir.to_str().unwrap(),
        "--images",
        "100",
        "--per-image",
        "3",
        "--seed",
        "20261123",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = pixlm(&[
        "eval",
        dir.to_str().unwrap(),
        "--json",
        "--min-accuracy",
        "0.90",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "accuracy below the floor: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["questions"], 300);
    for (kind, acc) in v["per_kind"].as_object().unwrap() {
        assert!(acc.as_f64().unwrap() >= 0.78, "{kind}: {acc}");
    }
}
