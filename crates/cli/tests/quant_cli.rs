//! `pixlm quantize` writes one GGUF file that `pixlm run --model FILE.gguf` loads with no other
//! file; `--quant` quantizes at load; a GGUF from another tool is refused with a clear message.

mod common;

use common::{fixtures, pixlm, tmpdir};
use std::process::Output;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn quantize_to_gguf_then_run_from_the_single_file() {
    let Some(fx) = fixtures() else { return };
    let model = fx.join("neo-tiny/model");
    let img = fx.join("neo-tiny/cases/single_image/image_1.png");
    let d_guard = tmpdir("roundtrip");
    let d = d_guard.path();
    let out = d.join("neo-tiny-q8_0.gguf");
    let o = pixlm(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--to",
        "q8_0",
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    // hidden 64 / intermediate 128: every weight matrix fits Q8_0's 32-blocks: 36 linears,
    // the tied embedding table and the patch embedding's two convolutions.
    assert!(
        stdout.contains("39 weight matrices quantized (39 Q8_0), 0 weight matrices dense"),
        "{stdout}"
    );
    // The file alone: copied into an empty directory, away from the checkpoint.
    let alone_guard = tmpdir("alone");
    let alone = alone_guard.path();
    let file = alone.join("m.gguf");
    std::fs::copy(&out, &file).unwrap();
    let args = |m: &str, extra: &[&str]| {
        let mut v: Vec<String> = [
            "run",
            "--model",
            m,
            "--image",
            img.to_str().unwrap(),
            "--max-new-tokens",
            "12",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("What color is the shape?".into());
        v
    };
    let run = |v: Vec<String>| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        let o = pixlm(&refs);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stderr}");
        stdout
    };
    let from_file = run(args(file.to_str().unwrap(), &[]));
    let at_load = run(args(model.to_str().unwrap(), &["--quant", "q8_0"]));
    let dense = run(args(model.to_str().unwrap(), &[]));
    assert!(!from_file.trim().is_empty());
    // The GGUF holds exactly the weights that --quant q8_0 makes at load.
    assert_eq!(from_file, at_load);
    // And on this fixture Q8_0's greedy answer is the f32 one.
    assert_eq!(from_file, dense);
}

#[test]
fn foreign_gguf_and_bad_options_are_refused() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let d_guard = tmpdir("foreign");
    let d = d_guard.path();
    let path = d.join("llama.gguf");
    let t = QTensor::quantize(
        &candle_core::Tensor::ones((2, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
        GgmlDType::Q8_0,
    )
    .unwrap();
    let arch = gguf_file::Value::String("llama".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    drop(f);
    let o = pixlm(&["run", "--model", path.to_str().unwrap(), "hi"]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("pixlm.config_json"), "{stderr}");
    let o = pixlm(&[
        "quantize",
        "--model",
        path.to_str().unwrap(),
        "--to",
        "q8_0",
        "-o",
        "x.gguf",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("not a checkpoint directory"));
    let o = pixlm(&["run", "--quant", "q3", "hi"]);
    assert!(!o.status.success());
}

#[test]
fn qwen3_gguf_keeps_chat_template_and_stop_tokens() {
    let Some(fx) = fixtures() else { return };
    let model = fx.join("qwen3-moe-tiny/model");
    let d_guard = tmpdir("qwen3");
    let d = d_guard.path();
    let out = d.join("moe.gguf");
    let o = pixlm(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--to",
        "q8_0",
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    // hidden 16 does not fit Q8_0's 32-blocks: those layers stay dense and are counted.
    assert!(
        stdout.contains("dense: input dim 16 is not a multiple of 32"),
        "{stdout}"
    );
    let run = |m: &str, extra: &[&str]| {
        let mut v = vec!["run", "--model", m, "--max-new-tokens", "10", "-v"];
        v.extend_from_slice(extra);
        v.push("Hello there");
        let o = pixlm(&v);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stderr}");
        stdout
    };
    assert_eq!(
        run(out.to_str().unwrap(), &[]),
        run(model.to_str().unwrap(), &["--quant", "q8_0"])
    );
}
