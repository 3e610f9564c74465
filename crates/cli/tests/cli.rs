//! End-to-end behaviour of the real `pixlm` binary: answers, parity checks, and every bad
//! input giving a clear message and a non-zero exit without a panic.

mod common;

use common::{fixtures, pixlm, tmpdir};
use std::path::Path;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure: non-zero exit, the message contains `needle`, and nothing panicked.
fn assert_clear_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "message should mention {needle:?}: {err}"
    );
}

/// A copy of the neo-tiny model directory (weights linked) whose config.json is edited by `f`.
fn model_variant(fx: &Path, name: &str, f: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fx.join("neo-tiny/model");
    let dst_guard = tmpdir(name);
    let dst = dst_guard.path();
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::os::unix::fs::symlink(src.join(file).canonicalize().unwrap(), dst.join(file)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst_guard
}

#[test]
fn run_answers_about_an_image_and_streams() {
    let Some(fx) = fixtures() else { return };
    let model = fx.join("neo-tiny/model");
    let img = fx.join("neo-tiny/cases/single_image/image_1.png");
    let o = pixlm(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "-v",
        "What is in this image?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("prompt tokens"), "{}", stderr(&o));
    // The random fixture model is deterministic under greedy decoding.
    let again = pixlm(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "What is in this image?",
    ]);
    assert_eq!(o.stdout, again.stdout);
}

#[test]
fn same_seed_same_text_different_seed_differs() {
    let Some(fx) = fixtures() else { return };
    let model = fx.join("neo-tiny/model");
    let run = |seed: &str| {
        let o = pixlm(&[
            "run",
            "--model",
            model.to_str().unwrap(),
            "--temperature",
            "1.5",
            "--top-k",
            "1000",
            "--seed",
            seed,
            "--max-new-tokens",
            "12",
            "Tell me a story.",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    let a = run("7");
    assert_eq!(a, run("7"));
    assert_ne!(a, run("8"));
}

#[test]
fn check_passes_on_the_neo_fixtures_and_fails_on_a_wrong_expectation() {
    let Some(fx) = fixtures() else { return };
    let o = pixlm(&["check", fx.join("neo-tiny").to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("4 passed, 0 failed"), "{out}");
    // A copied case whose expected first token is changed must fail.
    let d_guard = tmpdir("badcase");
    let d = d_guard.path();
    let set = d.join("set");
    std::fs::create_dir_all(set.join("cases/text_only")).unwrap();
    std::os::unix::fs::symlink(
        fx.join("neo-tiny/model").canonicalize().unwrap(),
        set.join("model"),
    )
    .unwrap();
    let src = fx.join("neo-tiny/cases/text_only");
    std::fs::copy(
        src.join("expected.safetensors"),
        set.join("cases/text_only/expected.safetensors"),
    )
    .unwrap();
    let mut case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("case.json")).unwrap()).unwrap();
    case["expected"]["generated_ids"][0] = serde_json::json!(42);
    std::fs::write(set.join("cases/text_only/case.json"), case.to_string()).unwrap();
    let o = pixlm(&["check", set.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("FAIL") && out.contains("generated_ids"),
        "{out}"
    );
}

#[test]
fn missing_model_and_missing_files() {
    let o = pixlm(&["run", "--model", "/nonexistent/model", "hi"]);
    assert_clear_error(&o, "does not exist");
    let d_guard = tmpdir("empty-model");
    let d = d_guard.path();
    let o = pixlm(&["run", "--model", d.to_str().unwrap(), "hi"]);
    assert_clear_error(&o, "config.json");
    // A file that is neither a directory nor a GGUF model.
    let f = d.join("weights.gguf");
    std::fs::write(&f, b"not a model at all").unwrap();
    let o = pixlm(&["run", "--model", f.to_str().unwrap(), "hi"]);
    assert_clear_error(&o, "not a GGUF model");
    let Some(fx) = fixtures() else { return };
    let d_guard = tmpdir("no-weights");
    let d = d_guard.path();
    std::fs::copy(fx.join("neo-tiny/model/config.json"), d.join("config.json")).unwrap();
    std::fs::copy(
        fx.join("neo-tiny/model/tokenizer.json"),
        d.join("tokenizer.json"),
    )
    .unwrap();
    let o = pixlm(&["run", "--model", d.to_str().unwrap(), "hi"]);
    assert_clear_error(&o, "model.safetensors");
    // A shard index naming a shard that is not there.
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let o = pixlm(&["run", "--model", d.to_str().unwrap(), "hi"]);
    assert_clear_error(&o, "model-00001-of-00002.safetensors");
}

#[test]
fn unknown_model_type_and_truncated_weights() {
    let Some(fx) = fixtures() else { return };
    let d_guard = model_variant(&fx, "llama", |c| {
        c["model_type"] = serde_json::json!("llama")
    });
    let d = d_guard.path();
    let o = pixlm(&["run", "--model", d.to_str().unwrap(), "hi"]);
    assert_clear_error(&o, "llama");
    let d_guard = tmpdir("truncated");
    let d = d_guard.path();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fx.join("neo-tiny/model").join(f), d.join(f)).unwrap();
    }
    let w = std::fs::read(fx.join("neo-tiny/model/model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let o = pixlm(&["run", "--model", d.to_str().unwrap(), "hi"]);
    assert_clear_error(&o, "truncated");
}

#[test]
fn bad_images_are_clear_errors() {
    let Some(fx) = fixtures() else { return };
    let model = fx.join("neo-tiny/model");
    let m = model.to_str().unwrap();
    let d_guard = tmpdir("images");
    let d = d_guard.path();
    // Random bytes.
    let junk = d.join("junk.png");
    std::fs::write(&junk, b"this is not an image at all").unwrap();
    assert_clear_error(
        &pixlm(&["run", "--model", m, "--image", junk.to_str().unwrap(), "hi"]),
        "junk.png",
    );
    // A truncated PNG.
    let png = std::fs::read(fx.join("neo-tiny/cases/single_image/image_1.png")).unwrap();
    let cut = d.join("cut.png");
    std::fs::write(&cut, &png[..png.len() / 3]).unwrap();
    assert_clear_error(
        &pixlm(&["run", "--model", m, "--image", cut.to_str().unwrap(), "hi"]),
        "cut.png",
    );
    // A header claiming 100000 x 100000 pixels.
    let huge = d.join("huge.png");
    let mut h = png[..33].to_vec();
    h[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    h[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    std::fs::write(&huge, &h).unwrap();
    assert_clear_error(
        &pixlm(&["run", "--model", m, "--image", huge.to_str().unwrap(), "hi"]),
        "huge.png",
    );
    // Absurd aspect ratio: 1 x 300.
    let thin = d.join("thin.png");
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, 300, 1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[128u8; 900]).unwrap();
    }
    std::fs::write(&thin, &buf).unwrap();
    assert_clear_error(
        &pixlm(&["run", "--model", m, "--image", thin.to_str().unwrap(), "hi"]),
        "aspect",
    );
    // A missing file.
    assert_clear_error(
        &pixlm(&["run", "--model", m, "--image", "/nonexistent.png", "hi"]),
        "does not exist",
    );
}

#[test]
fn prompt_past_the_context_is_refused() {
    let Some(fx) = fixtures() else { return };
    let d_guard = model_variant(&fx, "short-ctx", |c| {
        c["llm_config"]["max_position_embeddings"] = serde_json::json!(32)
    });
    let d = d_guard.path();
    let long = "word ".repeat(100);
    let o = pixlm(&["run", "--model", d.to_str().unwrap(), &long]);
    assert_clear_error(&o, "context");
}

#[test]
fn bad_flags_are_refused() {
    let Some(fx) = fixtures() else { return };
    let m = fx.join("neo-tiny/model");
    let m = m.to_str().unwrap();
    assert_clear_error(
        &pixlm(&["run", "--model", m, "--temperature", "-1", "hi"]),
        "temperature",
    );
    assert_clear_error(
        &pixlm(&["run", "--model", m, "--top-p", "1.5", "hi"]),
        "top_p",
    );
    assert_clear_error(
        &pixlm(&["run", "--model", m, "--threads", "0", "hi"]),
        "threads",
    );
    assert_clear_error(&pixlm(&["run", "--bogus-flag"]), "bogus");
    // An empty image budget, for the one-shot command and for the server alike.
    for cmd in ["run", "serve"] {
        let mut args = vec![
            cmd,
            "--model",
            m,
            "--min-pixels",
            "300000",
            "--max-pixels",
            "70000",
        ];
        if cmd == "serve" {
            args.extend(["--port", "0"]);
        }
        assert_clear_error(
            &pixlm(&args),
            "--min-pixels (300000) is larger than --max-pixels (70000)",
        );
    }
}

#[test]
fn bad_training_flags_are_refused() {
    let out_guard = tmpdir("badtrain");
    let out = out_guard.path().to_str().unwrap();
    for (flag, value, needle) in [
        ("--aux-weight", "-1", "aux-weight"),
        ("--aux-weight", "nan", "aux-weight"),
        ("--per-image", "0", "per-image"),
        ("--threads", "0", "threads"),
        ("--preset", "huge", "preset"),
        ("--kind-weight", "exists", "KIND=W"),
        ("--kind-weight", "colour=2", "colour"),
        ("--kind-weight", "exists=-1", "non-negative"),
        ("--kind-weight", "exists=x", "not a number"),
        (
            "--attn-aux-kinds",
            "color,shapes",
            "unknown question kind \"shapes\"",
        ),
        ("--attn-aux-until", "1.5", "--attn-aux-until"),
        ("--stop-after", "0", "--stop-after"),
        (
            "--init-from",
            "/nonexistent-pixlm-ckpt",
            "nonexistent-pixlm-ckpt",
        ),
    ] {
        let arg = format!("{flag}={value}");
        assert_clear_error(&pixlm(&["train", "--out", out, &arg]), needle);
    }
}

#[test]
fn stop_strings_end_the_answer() {
    let Some(fx) = fixtures() else { return };
    let m = fx.join("neo-tiny/model");
    let img = fx.join("neo-tiny/cases/two_images/image_1.png");
    let base = pixlm(&[
        "run",
        "--model",
        m.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--max-new-tokens",
        "8",
        "Describe.",
    ]);
    let text = String::from_utf8_lossy(&base.stdout).trim_end().to_string();
    assert!(text.chars().count() >= 2, "{text:?}");
    // Stop at the second character of the greedy answer: only the first is printed.
    let mut chars = text.chars();
    let first = chars.next().unwrap().to_string();
    let second = chars.next().unwrap().to_string();
    if first == second {
        return; // a repeated character would stop at once; nothing more to learn here
    }
    let o = pixlm(&[
        "run",
        "--model",
        m.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--stop",
        &second,
        "Describe.",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).trim_end().to_string();
    assert!(
        !out.contains(&second),
        "{out:?} should stop before {second:?}"
    );
}

#[test]
fn help_explains_every_command() {
    for cmd in ["run", "check", "bench", "train", "eval", "gen-shapes"] {
        let o = pixlm(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}");
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("Usage"), "{cmd}: {s}");
    }
}

#[test]
fn chat_mode_reads_turns_from_stdin() {
    use std::io::Write;
    let Some(fx) = fixtures() else { return };
    let m = fx.join("neo-tiny/model");
    let img = fx.join("neo-tiny/cases/single_image/image_1.png");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixlm"))
        .args([
            "run",
            "--model",
            m.to_str().unwrap(),
            "--chat",
            "-v",
            "--max-new-tokens",
            "3",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!("/image {}\nWhat is this?\nAnd now?\n/exit\n", img.display());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("attached"), "{err}");
    // Two answers; the second turn's prompt holds the first turn (image included).
    let sizes: Vec<usize> = err
        .lines()
        .filter_map(|l| l.strip_prefix('[')?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(sizes.len(), 2, "stderr was: {err:?}");
    assert!(sizes[1] > sizes[0], "{sizes:?}");
}

#[test]
fn bench_vs_llama_cpp_refuses_bad_choices() {
    // Refused before anything is built or written.
    for (args, needle) in [
        (&["--shape", "neo-tiny"][..], "neo-tiny"),
        (&["--format", "f8"][..], "f8"),
        (&["--quant", "q8_0"][..], "--format"),
        (&["--reps", "0"][..], "--reps"),
    ] {
        let mut a = vec!["bench", "--vs-llama-cpp"];
        a.extend_from_slice(args);
        assert_clear_error(&pixlm(&a), needle);
    }
}

#[test]
fn bench_writes_a_random_checkpoint_in_the_real_layout() {
    let Some(fx) = fixtures() else { return };
    let tok = fx.join("neo-tiny/model");
    let d_guard = tmpdir("random-neo-tiny");
    let d = d_guard.path();
    let out = d.join("model");
    let o = pixlm(&[
        "bench",
        "--shape",
        "neo-tiny",
        "--write-model",
        out.to_str().unwrap(),
        "--tokenizer-from",
        tok.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The shard index names exactly the tensors of the reference checkpoint of that shape.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let written: std::collections::BTreeSet<String> = index["weight_map"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let reference = std::fs::read(tok.join("model.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let expected: std::collections::BTreeSet<String> = reference
        .names()
        .into_iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(written, expected);
    for shard in index["weight_map"].as_object().unwrap().values() {
        assert!(out.join(shard.as_str().unwrap()).is_file());
    }
    // It loads and answers through the normal path.
    let image = fx.join("neo-tiny/cases/single_image/image_1.png");
    let o = pixlm(&[
        "run",
        "--model",
        out.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--max-new-tokens",
        "3",
        "What is this?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A tokenizer whose vocabulary does not fit the shape is refused by name.
    let shapes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes-neo");
    let o = pixlm(&[
        "bench",
        "--shape",
        "neo-tiny",
        "--write-model",
        d.join("bad").to_str().unwrap(),
        "--tokenizer-from",
        shapes.to_str().unwrap(),
    ]);
    assert_clear_error(&o, "embedding rows");
}

#[test]
fn bench_reports_speed_against_the_machine_bounds() {
    let o = pixlm(&[
        "bench",
        "--shape",
        "neo-tiny",
        "--image-tokens",
        "16",
        "--decode-tokens",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["image_tokens"], 16);
    for key in [
        "ttft_s",
        "decode_tok_s",
        "read_bandwidth_gb_s",
        "decode_bandwidth_fraction",
        "gemm_gflop_s",
        "prefill_compute_bound_s",
        "ttft_over_compute_bound",
    ] {
        let v = r[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{key}: {}", r[key]);
    }
}
