//! Parity with the reference `pixel_values` / `grid_hw` of the neo-tiny fixtures.

use std::path::{Path, PathBuf};

use pixlm_media::{load_image, preprocess, DecodeLimits, PreprocessConfig};
use safetensors::{Dtype, SafeTensors};

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("PIXLM_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

fn f32_values(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).expect("tensor present");
    assert_eq!(t.dtype(), Dtype::F32, "{name} dtype");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn i64_values(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<i64>) {
    let t = st.tensor(name).expect("tensor present");
    assert_eq!(t.dtype(), Dtype::I64, "{name} dtype");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn neo_tiny_pixel_values_parity() {
    let cases_dir = fixtures_dir().join("neo-tiny/cases");
    if !cases_dir.is_dir() {
        eprintln!(
            "SKIP neo_tiny_pixel_values_parity: fixtures not found at {} (set PIXLM_FIXTURES)",
            cases_dir.display()
        );
        return;
    }
    let mut case_dirs: Vec<PathBuf> = std::fs::read_dir(&cases_dir)
        .expect("read cases dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    case_dirs.sort();

    let mut checked = 0;
    for dir in case_dirs {
        let case: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("case.json")).expect("read case.json"))
                .expect("parse case.json");
        let images = match case.get("images").and_then(|v| v.as_array()) {
            Some(a) if !a.is_empty() => a.clone(),
            _ => continue,
        };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let pre = &case["preprocessing"];
        let patch_size = pre["patch_size"].as_u64().expect("patch_size") as usize;
        let downsample = pre["downsample_ratio"].as_f64().expect("downsample_ratio");
        let cfg = PreprocessConfig {
            patch_size,
            merge_size: (1.0 / downsample).round() as usize,
            min_pixels: pre["min_pixels"].as_u64().expect("min_pixels"),
            max_pixels: pre["max_pixels"].as_u64().expect("max_pixels"),
            ..PreprocessConfig::default()
        };
        assert_eq!(
            pre["upscale"].as_bool(),
            Some(false),
            "{name}: upscale unsupported here"
        );

        let mut pixel_values: Vec<f32> = Vec::new();
        let mut grid_hw: Vec<i64> = Vec::new();
        for img_meta in &images {
            let file = img_meta["file"].as_str().expect("file");
            let img = load_image(&dir.join(file), &DecodeLimits::default()).expect("load image");
            let orig = &img_meta["original_size_wh"];
            assert_eq!(
                (u64::from(img.width()), u64::from(img.height())),
                (orig[0].as_u64().expect("w"), orig[1].as_u64().expect("h")),
                "{name}/{file}: original size"
            );
            let patches = preprocess(&img, &cfg).expect("preprocess");
            let resized = &img_meta["resized_size_wh"];
            assert_eq!(
                (patches.grid_w * patch_size, patches.grid_h * patch_size),
                (
                    resized[0].as_u64().expect("w") as usize,
                    resized[1].as_u64().expect("h") as usize
                ),
                "{name}/{file}: resized size"
            );
            let g = &img_meta["grid_hw"];
            assert_eq!(
                patches.grid_hw(),
                [g[0].as_i64().expect("gh"), g[1].as_i64().expect("gw")],
                "{name}/{file}: grid_hw in case.json"
            );
            if let Some(n) = img_meta.get("num_image_tokens").and_then(|v| v.as_u64()) {
                assert_eq!(patches.num_tokens() as u64, n, "{name}/{file}: tokens");
            }
            pixel_values.extend_from_slice(&patches.data);
            grid_hw.extend_from_slice(&patches.grid_hw());
        }

        let bytes = std::fs::read(dir.join("expected.safetensors")).expect("read expected");
        let st = SafeTensors::deserialize(&bytes).expect("parse safetensors");
        let (gshape, gexp) = i64_values(&st, "grid_hw");
        assert_eq!(gshape, vec![images.len(), 2], "{name}: grid_hw shape");
        assert_eq!(grid_hw, gexp, "{name}: grid_hw");

        let (pshape, pexp) = f32_values(&st, "pixel_values");
        let rows = pixel_values.len() / (3 * patch_size * patch_size);
        assert_eq!(
            pshape,
            vec![rows, 3 * patch_size * patch_size],
            "{name}: shape"
        );
        assert_eq!(pixel_values.len(), pexp.len(), "{name}: length");
        let mut max_diff = 0f32;
        let mut mismatches = 0usize;
        for (a, b) in pixel_values.iter().zip(&pexp) {
            let d = (a - b).abs();
            if a.to_bits() != b.to_bits() {
                mismatches += 1;
            }
            max_diff = max_diff.max(d);
        }
        eprintln!(
            "{name}: {} images, pixel_values {:?}, max abs diff {max_diff:e}, \
             {mismatches} values not bit-identical",
            images.len(),
            pshape
        );
        assert!(max_diff <= 1e-6, "{name}: max abs diff {max_diff}");
        checked += 1;
    }
    assert!(checked > 0, "no fixture case with images found");
}
