//! `smart_resize`, normalisation and patch layout (spec §3 steps 4-9).

use std::borrow::Cow;

use image::RgbImage;

use crate::error::MediaError;
use crate::resize::resize_bicubic;

/// Largest aspect ratio `smart_resize` accepts.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// Target size of the reference `smart_resize(height, width, factor, min_pixels, max_pixels)`,
/// returned as `(height, width)`, both multiples of `factor`.
///
/// All arithmetic is f64 in the reference's exact operation order; `round` is Python's
/// round-half-to-even. Note that the result can exceed `max_pixels` when the min-pixels
/// branch is taken (the reference does not re-check it).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), MediaError> {
    if height == 0 || width == 0 {
        return Err(MediaError::EmptyImage {
            width: width as u64,
            height: height as u64,
        });
    }
    if factor == 0 {
        return Err(MediaError::InvalidConfig(
            "smart_resize factor must be > 0".to_string(),
        ));
    }
    if max_pixels == 0 {
        return Err(MediaError::InvalidConfig(
            "max_pixels must be > 0".to_string(),
        ));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(MediaError::AspectRatio {
            width,
            height,
            ratio,
        });
    }
    // Python ints times factor; f64 -> usize conversions saturate, which only matters for
    // absurd inputs.
    let by_factor = |q: f64| (q as usize).saturating_mul(factor);
    let mut h_bar = factor.max(by_factor((h / f).round_ties_even()));
    let mut w_bar = factor.max(by_factor((w / f).round_ties_even()));
    let area = (h_bar as u128) * (w_bar as u128);
    if area > u128::from(max_pixels) {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = factor.max(by_factor((h / beta / f).floor()));
        w_bar = factor.max(by_factor((w / beta / f).floor()));
    } else if area < u128::from(min_pixels) {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = by_factor((h * beta / f).ceil());
        w_bar = by_factor((w * beta / f).ceil());
    }
    Ok((h_bar, w_bar))
}

/// Preprocessing parameters (NEO defaults: patch 16, merge 2, ImageNet mean/std).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Side of a square patch in pixels (16).
    pub patch_size: usize,
    /// Patches merged per side by the dense 2x2 conv: `1 / downsample_ratio` (2).
    pub merge_size: usize,
    /// Lower pixel budget of `smart_resize`.
    pub min_pixels: u64,
    /// Upper pixel budget of `smart_resize`.
    pub max_pixels: u64,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel std the result is divided by.
    pub std: [f32; 3],
}

/// ImageNet mean, as torchvision turns the Python floats into f32.
pub const IMAGENET_MEAN: [f32; 3] = [0.485f64 as f32, 0.456f64 as f32, 0.406f64 as f32];
/// ImageNet std, as torchvision turns the Python floats into f32.
pub const IMAGENET_STD: [f32; 3] = [0.229f64 as f32, 0.224f64 as f32, 0.225f64 as f32];

impl Default for PreprocessConfig {
    /// Patch 16, merge 2, min 65,536 / max 4,194,304 pixels (the `NEOChat` class defaults),
    /// ImageNet normalisation.
    fn default() -> Self {
        Self {
            patch_size: 16,
            merge_size: 2,
            min_pixels: 65_536,
            max_pixels: 4_194_304,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

impl PreprocessConfig {
    /// `smart_resize` factor: `patch_size * merge_size` (32 for NEO).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Size `(height, width)` an image of `height x width` is resized to.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize), MediaError> {
        self.validate()?;
        smart_resize(
            height,
            width,
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )
    }

    fn validate(&self) -> Result<(), MediaError> {
        if self.patch_size == 0 || self.merge_size == 0 {
            return Err(MediaError::InvalidConfig(format!(
                "patch_size ({}) and merge_size ({}) must be > 0",
                self.patch_size, self.merge_size
            )));
        }
        if self.std.contains(&0.0) {
            return Err(MediaError::InvalidConfig(
                "normalisation std must be non-zero".to_string(),
            ));
        }
        Ok(())
    }
}

/// Patchified, normalised pixels of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Patches {
    /// Row-major `(grid_h * grid_w, 3 * patch * patch)`: row `n = py * grid_w + px`, feature
    /// `c * patch * patch + ky * patch + kx`.
    pub data: Vec<f32>,
    /// Patch rows (resized height / patch_size).
    pub grid_h: usize,
    /// Patch columns (resized width / patch_size).
    pub grid_w: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Merge size (patches per side of one LLM token).
    pub merge_size: usize,
}

impl Patches {
    /// Number of patch rows (`grid_h * grid_w`).
    pub fn num_patches(&self) -> usize {
        self.grid_h * self.grid_w
    }

    /// Features per patch row (`3 * patch * patch`, 768 for NEO).
    pub fn row_len(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    /// Number of image tokens after the dense merge: `(grid_h / merge) * (grid_w / merge)`.
    pub fn num_tokens(&self) -> usize {
        if self.merge_size == 0 {
            return 0;
        }
        (self.grid_h / self.merge_size) * (self.grid_w / self.merge_size)
    }

    /// `[grid_h, grid_w]` as the reference's int64 `grid_hw` row.
    pub fn grid_hw(&self) -> [i64; 2] {
        [self.grid_h as i64, self.grid_w as i64]
    }

    /// The values rounded to bf16 (round to nearest even), as the reference casts
    /// `pixel_values` before the model.
    pub fn to_bf16(&self) -> Vec<half::bf16> {
        self.data.iter().map(|&v| half::bf16::from_f32(v)).collect()
    }
}

/// Preprocesses one RGB image as the NEO reference (`load_image_native`) does: smart_resize
/// with factor `patch * merge`, Pillow bicubic resize (skipped when the size is unchanged),
/// `x = u8 / 255` then `(x - mean) / std` in f32, then patchify.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Patches, MediaError> {
    cfg.validate()?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (rh, rw) = cfg.target_size(h, w)?;
    let (rh32, rw32) = match (u32::try_from(rh), u32::try_from(rw)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            return Err(MediaError::InvalidConfig(format!(
                "resized size {rw}x{rh} is out of range"
            )))
        }
    };
    let resized: Cow<'_, RgbImage> = if (rw, rh) == (w, h) {
        Cow::Borrowed(img)
    } else {
        Cow::Owned(resize_bicubic(img, rw32, rh32))
    };
    Ok(patchify(&resized, cfg))
}

/// Normalises and patchifies an image whose sides are multiples of `cfg.patch_size`
/// (callers go through [`preprocess`]).
fn patchify(img: &RgbImage, cfg: &PreprocessConfig) -> Patches {
    let p = cfg.patch_size;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (grid_h, grid_w) = (h / p, w / p);
    let pp = p * p;
    let row_len = 3 * pp;

    // Per-channel lookup table: exactly the f32 ops of ToTensor + Normalize.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let x = v as f32 / 255.0f32;
            *out = (x - cfg.mean[c]) / cfg.std[c];
        }
    }

    let mut data = vec![0f32; grid_h * grid_w * row_len];
    let raw = img.as_raw();
    let stride = w * 3;
    for y in 0..grid_h * p {
        let (py, ky) = (y / p, y % p);
        let src_row = &raw[y * stride..y * stride + grid_w * p * 3];
        for (px, src_patch) in src_row.chunks_exact(p * 3).enumerate() {
            let n = py * grid_w + px;
            let dst = &mut data[n * row_len..(n + 1) * row_len];
            for (kx, rgb) in src_patch.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    dst[c * pp + ky * p + kx] = lut[c][usize::from(rgb[c])];
                }
            }
        }
    }
    Patches {
        data,
        grid_h,
        grid_w,
        patch_size: p,
        merge_size: cfg.merge_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_spec_vectors() {
        type Case = (usize, usize, u64, u64, (usize, usize));
        let cases: [Case; 8] = [
            (480, 640, 1_310_720, 4_194_304, (992, 1344)),
            (480, 640, 65_536, 4_194_304, (480, 640)),
            (1080, 1920, 1_310_720, 4_194_304, (1088, 1920)),
            (48, 80, 65_536, 4_194_304, (224, 352)),
            (336, 335, 65_536, 4_194_304, (320, 320)),
            (3000, 4000, 1_310_720, 4_194_304, (1760, 2336)),
            (720, 1280, 4096, 230_400, (352, 640)),
            // Addendum 5: the min-pixels branch may exceed max_pixels.
            (720, 960, 691_200, 691_200, (736, 960)),
        ];
        for (h, w, min, max, expected) in cases {
            assert_eq!(
                smart_resize(h, w, 32, min, max).expect("valid"),
                expected,
                "{h}x{w} min {min} max {max}"
            );
        }
    }

    #[test]
    fn smart_resize_fixture_sizes() {
        // (h, w) -> (H, W) from the neo-tiny fixtures (min 65536, max 262144).
        for ((h, w), expected) in [
            ((120, 200), (224, 352)),
            ((160, 256), (224, 352)),
            ((192, 96), (384, 192)),
            ((144, 176), (256, 288)),
        ] {
            assert_eq!(
                smart_resize(h, w, 32, 65_536, 262_144).expect("ok"),
                expected
            );
        }
    }

    #[test]
    fn smart_resize_rejects_bad_input() {
        assert!(matches!(
            smart_resize(1, 300, 32, 65_536, 4_194_304),
            Err(MediaError::AspectRatio {
                width: 300,
                height: 1,
                ..
            })
        ));
        assert!(matches!(
            smart_resize(1001, 5, 32, 65_536, 4_194_304),
            Err(MediaError::AspectRatio { .. })
        ));
        // Exactly 200 is allowed.
        assert!(smart_resize(1, 200, 32, 65_536, 4_194_304).is_ok());
        assert!(matches!(
            smart_resize(0, 10, 32, 1, 2),
            Err(MediaError::EmptyImage { .. })
        ));
        assert!(matches!(
            smart_resize(10, 10, 0, 1, 2),
            Err(MediaError::InvalidConfig(_))
        ));
        assert!(matches!(
            smart_resize(10, 10, 32, 1, 0),
            Err(MediaError::InvalidConfig(_))
        ));
    }

    #[test]
    fn preprocess_rejects_bad_images() {
        let cfg = PreprocessConfig::default();
        let img = RgbImage::new(300, 1);
        assert!(matches!(
            preprocess(&img, &cfg),
            Err(MediaError::AspectRatio { .. })
        ));
        let img = RgbImage::new(0, 0);
        assert!(matches!(
            preprocess(&img, &cfg),
            Err(MediaError::EmptyImage { .. })
        ));
    }

    #[test]
    fn patch_order() {
        // 96 wide, 64 high: with these budgets no resize happens; grid 4 x 6.
        let cfg = PreprocessConfig {
            min_pixels: 0,
            max_pixels: 1 << 20,
            ..PreprocessConfig::default()
        };
        let mut img = RgbImage::new(96, 64);
        img.put_pixel(37, 21, image::Rgb([255, 0, 10]));
        let p = preprocess(&img, &cfg).expect("preprocess");
        assert_eq!((p.grid_h, p.grid_w), (4, 6));
        assert_eq!(p.num_patches(), 24);
        assert_eq!(p.num_tokens(), 6);
        assert_eq!(p.row_len(), 768);
        assert_eq!(p.data.len(), 24 * 768);
        // Pixel (x=37, y=21): px = 2, py = 1 -> row 1*6+2 = 8; kx = 5, ky = 5.
        let row = &p.data[8 * 768..9 * 768];
        let norm = |v: u8, c: usize| (f32::from(v) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert_eq!(row[5 * 16 + 5], norm(255, 0));
        assert_eq!(row[256 + 5 * 16 + 5], norm(0, 1));
        assert_eq!(row[512 + 5 * 16 + 5], norm(10, 2));
        // Every other value is the normalised 0 of its channel.
        let mut special = 0;
        for (i, &v) in p.data.iter().enumerate() {
            let c = (i % 768) / 256;
            if v != norm(0, c) {
                special += 1;
                assert!(i == 8 * 768 + 85 || i == 8 * 768 + 512 + 85, "index {i}");
            }
        }
        assert_eq!(special, 2);
    }

    #[test]
    fn normalisation_is_divide_not_reciprocal() {
        // (1.0 - mean) / std for u8 255, channel 0, in f32.
        let x = 255f32 / 255.0;
        let expected = (x - 0.485f32) / 0.229f32;
        let cfg = PreprocessConfig {
            min_pixels: 0,
            ..PreprocessConfig::default()
        };
        let img = RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]));
        let p = preprocess(&img, &cfg).expect("ok");
        assert_eq!(p.data[0], expected);
        assert_eq!(p.to_bf16()[0], half::bf16::from_f32(expected));
    }
}
