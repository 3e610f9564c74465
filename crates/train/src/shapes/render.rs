//! The rasterizer: flat background, supersampled or hard-edged objects, uniform noise, codecs.

use super::{ImageFormat, Object, Scene};
use image::{ImageEncoder, RgbImage};
use rand::Rng;

/// Sub-samples per pixel side for anti-aliased objects (4x4 = 16 coverage levels).
const SUPERSAMPLE: u32 = 4;
/// A pixel whose centre is this far inside (outside) a shape is fully (not at all) covered.
const SURE: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Coverage of pixel `(px, py)` by `obj`, in `[0, 1]`: the fraction of a 4x4 grid of sub-samples
/// inside the shape for anti-aliased objects, 0 or 1 by the pixel centre otherwise.
#[inline]
pub(crate) fn pixel_coverage(obj: &Object, px: u32, py: u32) -> f32 {
    let x = px as f32 + 0.5;
    let y = py as f32 + 0.5;
    let d = obj.sdf(x, y);
    if !obj.antialias {
        return if d < 0.0 { 1.0 } else { 0.0 };
    }
    if d <= -SURE {
        return 1.0;
    }
    if d >= SURE {
        return 0.0;
    }
    let step = 1.0 / SUPERSAMPLE as f32;
    let mut inside = 0u32;
    for j in 0..SUPERSAMPLE {
        let sy = py as f32 + (j as f32 + 0.5) * step;
        for i in 0..SUPERSAMPLE {
            let sx = px as f32 + (i as f32 + 0.5) * step;
            if obj.sdf(sx, sy) < 0.0 {
                inside += 1;
            }
        }
    }
    inside as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32
}

/// The pixel rectangle `[x0, x1) x [y0, y1)` that can be touched by `obj`.
fn pixel_range(obj: &Object, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let [x0, y0, x1, y1] = obj.bbox();
    let clamp = |v: f32, max: u32| (v.max(0.0) as u32).min(max);
    (
        clamp(x0.floor() - 1.0, width),
        clamp(y0.floor() - 1.0, height),
        clamp(x1.ceil() + 1.0, width),
        clamp(y1.ceil() + 1.0, height),
    )
}

/// The coverage of every canvas pixel by `obj` (row-major, `width * height` values in `[0, 1]`),
/// exactly as [`render`] uses it.
pub fn object_coverage(obj: &Object, width: u32, height: u32) -> Vec<f32> {
    let mut cov = vec![0f32; width as usize * height as usize];
    let (x0, y0, x1, y1) = pixel_range(obj, width, height);
    for py in y0..y1 {
        for px in x0..x1 {
            cov[py as usize * width as usize + px as usize] = pixel_coverage(obj, px, py);
        }
    }
    cov
}

/// Rasterizes `scene`: the flat background, each object blended by its coverage
/// (`out = old * (1 - c) + rgb * c`, rounded), then the noise: every channel of every pixel
/// (of the background only, weighted by `1 - coverage`, unless `noise_on_objects`) moves by a
/// uniform integer in `[-noise, noise]`, clamped to 0..=255. `rng` is only used for the noise.
pub fn render<R: Rng + ?Sized>(scene: &Scene, rng: &mut R) -> RgbImage {
    let (w, h) = (scene.width, scene.height);
    let mut img = RgbImage::new(w, h);
    let buf: &mut [u8] = &mut img;
    for px in buf.chunks_exact_mut(3) {
        px.copy_from_slice(&scene.background);
    }
    let weighted_noise = scene.noise > 0 && !scene.noise_on_objects;
    let mut cov_total = if weighted_noise {
        vec![0f32; w as usize * h as usize]
    } else {
        Vec::new()
    };
    for obj in &scene.objects {
        let (x0, y0, x1, y1) = pixel_range(obj, w, h);
        let col = obj.rgb.map(f32::from);
        for py in y0..y1 {
            for px in x0..x1 {
                let c = pixel_coverage(obj, px, py);
                if c <= 0.0 {
                    continue;
                }
                let i = py as usize * w as usize + px as usize;
                let p = &mut buf[3 * i..3 * i + 3];
                if c >= 1.0 {
                    p.copy_from_slice(&obj.rgb);
                } else {
                    for k in 0..3 {
                        let v = f32::from(p[k]) * (1.0 - c) + col[k] * c;
                        p[k] = v.round().clamp(0.0, 255.0) as u8;
                    }
                }
                if weighted_noise {
                    cov_total[i] = (cov_total[i] + c).min(1.0);
                }
            }
        }
    }
    if scene.noise > 0 {
        let a = i32::from(scene.noise);
        let levels = (2 * a + 1) as u32;
        // Three 16-bit uniforms per pixel, drawn in bulk and mapped to [-a, a] by multiply-shift.
        let mut bits = vec![0u8; buf.len() * 2];
        rng.fill_bytes(&mut bits);
        for (i, (p, r)) in buf
            .chunks_exact_mut(3)
            .zip(bits.chunks_exact(6))
            .enumerate()
        {
            let weight = if weighted_noise {
                1.0 - cov_total[i]
            } else {
                1.0
            };
            if weight <= 0.0 {
                continue;
            }
            for (k, v) in p.iter_mut().enumerate() {
                let u = u32::from(u16::from_le_bytes([r[2 * k], r[2 * k + 1]]));
                let n = ((u * levels) >> 16) as i32 - a;
                let n = if weight < 1.0 {
                    (n as f32 * weight).round() as i32
                } else {
                    n
                };
                *v = (i32::from(*v) + n).clamp(0, 255) as u8;
            }
        }
    }
    img
}

/// Encodes `img` as PNG or as JPEG at the format's quality.
pub fn encode_image(img: &RgbImage, format: ImageFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    match format {
        ImageFormat::Png => {
            image::codecs::png::PngEncoder::new(&mut out).write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )?;
        }
        ImageFormat::Jpeg { quality } => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
                .encode_image(img)?;
        }
    }
    Ok(out)
}

/// What a reader of the stored file would see: `img` itself for PNG, the JPEG round trip for
/// JPEG (if the codec fails, which it does not for RGB8 images, `img` is returned unchanged).
pub fn apply_format(img: RgbImage, format: ImageFormat) -> RgbImage {
    match format {
        ImageFormat::Png => img,
        ImageFormat::Jpeg { .. } => {
            let decoded = encode_image(&img, format).and_then(|bytes| {
                image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
            });
            match decoded {
                Ok(d) => d.to_rgb8(),
                Err(_) => img,
            }
        }
    }
}
