//! Timing of the whole pipeline on a large image. Ignored by default (timing on shared CI
//! machines is noisy); run with `cargo test --release -p pixlm-media --test perf -- --ignored
//! --nocapture`. Uses PIXLM_PERF_IMAGE if set, else a synthetic 4000x3000 image.

use std::time::Instant;

use pixlm_media::{decode_image, preprocess, DecodeLimits, PreprocessConfig};

#[test]
#[ignore]
fn preprocess_4000x3000() {
    let bytes = match std::env::var_os("PIXLM_PERF_IMAGE") {
        Some(p) => std::fs::read(p).expect("read PIXLM_PERF_IMAGE"),
        None => {
            let img = image::RgbImage::from_fn(4000, 3000, |x, y| {
                image::Rgb([(x / 16) as u8, (y / 12) as u8, ((x ^ y) & 0xff) as u8])
            });
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, image::ImageFormat::Jpeg)
                .expect("encode");
            buf.into_inner()
        }
    };
    let cfg = PreprocessConfig {
        min_pixels: 1_310_720,
        ..PreprocessConfig::default()
    };
    for _ in 0..3 {
        let t0 = Instant::now();
        let img = decode_image(&bytes, &DecodeLimits::default()).expect("decode");
        let t1 = Instant::now();
        let p = preprocess(&img, &cfg).expect("preprocess");
        let t2 = Instant::now();
        eprintln!(
            "{}x{} -> grid {}x{}: decode {:?}, preprocess {:?}",
            img.width(),
            img.height(),
            p.grid_h,
            p.grid_w,
            t1 - t0,
            t2 - t1
        );
    }
}
