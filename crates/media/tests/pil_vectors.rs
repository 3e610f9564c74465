//! Cross-checks against outputs of Pillow 13.0.0 (tests/data, made by gen_pil_vectors.py):
//! resize in both directions and single-axis, bilinear, and the RGB conversion of
//! RGBA / LA / P / GIF / WebP / BMP / 16-bit gray inputs. JPEG and lossy WebP use different
//! decoders than PIL, so for them only the size is required to match and the max pixel
//! difference is reported.

use std::path::{Path, PathBuf};

use pixlm_media::{decode_image, load_image, resize_pil, DecodeLimits, Filter};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn vectors() -> serde_json::Value {
    let bytes = std::fs::read(data_dir().join("pil_vectors.json")).expect("read vectors");
    serde_json::from_slice(&bytes).expect("parse vectors")
}

#[test]
fn resize_matches_pillow() {
    let v = vectors();
    let mut n = 0;
    let mut failures = Vec::new();
    for case in v["resize"].as_array().expect("resize cases") {
        let src = case["src"].as_str().expect("src");
        let img = load_image(&data_dir().join(src), &DecodeLimits::default()).expect("load");
        let (w, h) = (
            case["w"].as_u64().expect("w") as u32,
            case["h"].as_u64().expect("h") as u32,
        );
        let filter = match case["filter"].as_str() {
            Some("bilinear") => Filter::Bilinear,
            _ => Filter::Bicubic,
        };
        let out = resize_pil(&img, w, h, filter);
        assert_eq!(out.dimensions(), (w, h));
        let ok = fnv1a64(out.as_raw()) == case["fnv1a64"].as_str().expect("hash");
        eprintln!(
            "{src} -> {w}x{h} {filter:?}: {}",
            if ok { "bit-exact" } else { "MISMATCH" }
        );
        if !ok {
            failures.push(format!("{src} -> {w}x{h} {filter:?}"));
        }
        n += 1;
    }
    assert!(n >= 10);
    assert!(failures.is_empty(), "not bit-exact: {failures:?}");
}

#[test]
fn decode_matches_pillow_conversion() {
    let v = vectors();
    for case in v["decode"].as_array().expect("decode cases") {
        let file = case["file"].as_str().expect("file");
        let bytes = std::fs::read(data_dir().join(file)).expect("read image");
        let rgb = decode_image(&bytes, &DecodeLimits::default()).expect("decode");
        let (w, h) = (
            case["w"].as_u64().expect("w") as u32,
            case["h"].as_u64().expect("h") as u32,
        );
        assert_eq!(rgb.dimensions(), (w, h), "{file}");
        let expected = hex_decode(case["rgb_hex"].as_str().expect("hex"));
        let max_diff = rgb
            .as_raw()
            .iter()
            .zip(&expected)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        let differing = rgb
            .as_raw()
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .count();
        eprintln!(
            "{file} (PIL mode {}): max diff {max_diff}, {differing}/{} samples differ",
            case["pil_mode"].as_str().unwrap_or("?"),
            expected.len()
        );
        if case["exact"].as_bool() == Some(true) {
            assert_eq!(rgb.as_raw(), &expected, "{file}");
        } else {
            // Different decoder (zune-jpeg vs libjpeg-turbo): close, not identical.
            assert!(max_diff <= 16, "{file}: max diff {max_diff}");
        }
    }
}
