//! Bit-exact re-implementation of Pillow's `Image.resize` for 8-bit RGB images
//! (`libImaging/Resample.c`, the separable convolution resampler).
//!
//! For each output column (and each output row) the filter weights are computed once in
//! f64, exactly as Pillow's `precompute_coeffs` does (same operation order), normalised to
//! sum 1, and turned into 22-bit fixed point (`normalize_coeffs_8bpc`, rounding half away
//! from zero). Two passes, each writing clamped 8-bit output: normally horizontal first (over
//! only the source rows the vertical pass needs), then vertical; but, as in Pillow >= 13.0
//! (the version the NEO fixtures were made with), when the width does not shrink and the
//! height does, the vertical pass runs first. A pass whose dimension is unchanged is skipped,
//! and when neither is needed the image is copied.
//!
//! Pillow <= 12 always ran the horizontal pass first (except for images more than 100 times
//! taller than wide); for "wider but less tall" resizes its output can differ from Pillow 13
//! by a few levels in some pixels. This module follows Pillow 13.

use image::RgbImage;

/// Pillow's `PRECISION_BITS` = 32 - 8 - 2.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Initial accumulator value: rounding of the final `>> PRECISION_BITS`.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resampling filters of Pillow that this module reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BICUBIC` (a = -0.5, support 2): the default of `Image.resize` for RGB.
    Bicubic,
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    #[inline]
    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = if x < 0.0 { -x } else { x };
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = if x < 0.0 { -x } else { x };
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point filter taps for every output position along one axis.
struct Coeffs {
    /// Taps per output position (row stride of `kk`).
    ksize: usize,
    /// (first source index, number of taps) per output position.
    bounds: Vec<(usize, usize)>,
    /// `out_size * ksize` fixed-point coefficients.
    kk: Vec<i32>,
}

impl Coeffs {
    #[inline]
    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (min, n) = self.bounds[out];
        let start = out * self.ksize;
        (min, &self.kk[start..start + n])
    }
}

/// Pillow's `precompute_coeffs` for the full-image box `[0, in_size)` followed by
/// `normalize_coeffs_8bpc`.
fn precompute_coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // Pillow passes the box edges as C floats; (in1 - in0) is computed in float.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;

    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut weights = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        // C `(int)` conversion truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let xmin = xmin as usize;
        let mut ww = 0.0f64;
        for (x, w) in weights.iter_mut().enumerate().take(n) {
            let v = filter.eval((((x + xmin) as f64) - center + 0.5) * ss);
            *w = v;
            ww += v;
        }
        let row = &mut kk[xx * ksize..xx * ksize + ksize];
        for (k, &w) in row.iter_mut().zip(weights.iter()).take(n) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *k = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, kk }
}

/// Pillow's `clip8`: `in >> PRECISION_BITS` clamped to 0..=255 (arithmetic shift).
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over source rows `row0 .. row0 + rows`.
fn resample_horizontal(
    src: &[u8],
    src_width: usize,
    row0: usize,
    rows: usize,
    coeffs: &Coeffs,
    out_width: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; out_width * rows * 3];
    let src_stride = src_width * 3;
    for (y, out_row) in out.chunks_exact_mut(out_width * 3).enumerate() {
        let src_row = &src[(row0 + y) * src_stride..(row0 + y + 1) * src_stride];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, k) = coeffs.taps(xx);
            let window = &src_row[xmin * 3..(xmin + k.len()) * 3];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (p, &c) in window.chunks_exact(3).zip(k) {
                s0 += i32::from(p[0]) * c;
                s1 += i32::from(p[1]) * c;
                s2 += i32::from(p[2]) * c;
            }
            px[0] = clip8(s0);
            px[1] = clip8(s1);
            px[2] = clip8(s2);
        }
    }
    out
}

/// Vertical pass; `row_offset` is subtracted from the coefficient bounds (rows of `src`
/// start at source row `row_offset`). Integer accumulation is associative, so summing row by
/// row gives exactly Pillow's per-pixel sums.
fn resample_vertical(
    src: &[u8],
    width: usize,
    row_offset: usize,
    coeffs: &Coeffs,
    out_height: usize,
) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; stride * out_height];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, k) = coeffs.taps(yy);
        acc.fill(HALF);
        for (dy, &c) in k.iter().enumerate() {
            let y = ymin + dy - row_offset;
            let src_row = &src[y * stride..(y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(src_row) {
                *a += i32::from(p) * c;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Pillow's `Image.resize((width, height), resample=filter)` for an RGB image, bit-exact.
///
/// Zero target dimensions give an empty image.
pub fn resize_pil(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (out_w, out_h) == (in_w, in_h) {
        return img.clone();
    }
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    // Pillow >= 13: "if height is being scaled down, but not width, resize vertically
    // first" (box = full image, so box[2] - box[0] = in_w).
    let horizontal_first = !(out_w >= in_w && out_h < in_h);
    let src = img.as_raw();

    let raw = if !need_vertical {
        let horiz = precompute_coeffs(in_w, out_w, filter);
        resample_horizontal(src, in_w, 0, in_h, &horiz, out_w)
    } else if !need_horizontal {
        let vert = precompute_coeffs(in_h, out_h, filter);
        resample_vertical(src, in_w, 0, &vert, out_h)
    } else if horizontal_first {
        let vert = precompute_coeffs(in_h, out_h, filter);
        let horiz = precompute_coeffs(in_w, out_w, filter);
        // Only the source rows the vertical pass reads go through the horizontal pass.
        let ybox_first = vert.bounds.first().map_or(0, |b| b.0);
        let ybox_last = vert.bounds.last().map_or(in_h, |b| b.0 + b.1);
        let tmp = resample_horizontal(src, in_w, ybox_first, ybox_last - ybox_first, &horiz, out_w);
        resample_vertical(&tmp, out_w, ybox_first, &vert, out_h)
    } else {
        let vert = precompute_coeffs(in_h, out_h, filter);
        let horiz = precompute_coeffs(in_w, out_w, filter);
        let tmp = resample_vertical(src, in_w, 0, &vert, out_h);
        resample_horizontal(&tmp, in_w, 0, out_h, &horiz, out_w)
    };
    RgbImage::from_raw(width, height, raw).unwrap_or_else(|| RgbImage::new(width, height))
}

/// Pillow's `Image.resize((width, height))` with the default `BICUBIC` filter (RGB), bit-exact.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_pil(img, width, height, Filter::Bicubic)
}

/// Pillow's `Image.resize((width, height), Image.BILINEAR)` (RGB), bit-exact. Used by the
/// MMMU 2x upscale of the reference evaluation (spec §3 step 3).
pub fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_pil(img, width, height, Filter::Bilinear)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(resize_bicubic(&img, 5, 4), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 3, 128]));
        for (w, h) in [(64, 32), (10, 7), (37, 50), (80, 23), (1, 1)] {
            let out = resize_bicubic(&img, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| p.0 == [200, 3, 128]), "{w}x{h}");
        }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(200, 352), (120, 224), (4000, 2336), (7, 3), (3, 700)] {
            let c = precompute_coeffs(i, o, Filter::Bicubic);
            for xx in 0..o {
                let (min, k) = c.taps(xx);
                assert!(min + k.len() <= i);
                let s: i64 = k.iter().map(|&v| i64::from(v)).sum();
                assert!(
                    (s - (1 << 22)).abs() <= k.len() as i64,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }

    #[test]
    fn upscale_2x_known_values() {
        // 1-D upscale of [0, 255] to 4 px (horizontal only); Pillow 13 gives 0, 53, 202, 255.
        // out[1]: center 0.75; source pixel centers 0.5 and 1.5 -> distances 0.25, 0.75;
        // f(0.25) = 0.8671875, f(0.75) = 0.2265625, normalised w1 = 0.20714..;
        // k1 = round(w1 * 2^22) = 868820; (255 * k1 + 2^21) >> 22 = 53.
        // out[0]: distances 0.25, 1.25; f(1.25) = -0.0703125 < 0 -> clipped to 0.
        let img = RgbImage::from_raw(2, 1, vec![0, 0, 0, 255, 255, 255]).expect("buf");
        let out = resize_bicubic(&img, 4, 1);
        let row: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        assert_eq!(row, vec![0, 53, 202, 255]);
    }
}
