//! Corrupted and truncated inputs of every supported format must give an error (or an
//! image), never a panic.

use pixlm_media::{decode_image, preprocess, DecodeLimits, MediaError, PreprocessConfig};

#[test]
fn mutated_inputs_never_panic() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let mut state = 0x9e37_79b9u32;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let files = [
        "rgba.png",
        "gray16.png",
        "noise.jpg",
        "noise_420.jpg",
        "first_frame.gif",
        "rgba.webp",
        "noise_lossy.webp",
        "rgb.bmp",
    ];
    let limits = DecodeLimits::default();
    let cfg = PreprocessConfig::default();
    let (mut ok, mut errors) = (0usize, 0usize);
    for file in files {
        let original = std::fs::read(format!("{dir}{file}")).expect("read test image");
        for i in 0..400 {
            let mut bytes = original.clone();
            for _ in 0..1 + rnd() % 8 {
                let pos = rnd() as usize % bytes.len();
                bytes[pos] = rnd() as u8;
            }
            if i % 3 == 0 {
                let cut = rnd() as usize % bytes.len();
                bytes.truncate(cut);
            }
            match decode_image(&bytes, &limits) {
                Ok(img) => {
                    ok += 1;
                    // Whatever decoded must also preprocess or fail cleanly.
                    match preprocess(&img, &cfg) {
                        Ok(p) => assert_eq!(p.data.len(), p.num_patches() * p.row_len()),
                        Err(MediaError::AspectRatio { .. }) => {}
                        Err(e) => panic!("{file}: unexpected preprocess error {e}"),
                    }
                }
                Err(e) => {
                    errors += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
    assert!(ok > 0 && errors > 0, "ok {ok}, errors {errors}");
}
