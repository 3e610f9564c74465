//! Image decoding and PIL-compatible conversion to RGB (spec §3 steps 1-2).
//!
//! Decoding uses the `image` crate; the format is guessed from the content. What PIL would do
//! with the decoded pixels depends on the *PIL mode* of the opened image, which is not always
//! the colour type the `image` crate reports (it expands palettes and `tRNS` chunks into an
//! alpha channel), so the PIL mode is reconstructed here:
//!
//! | source | PIL mode | conversion |
//! |---|---|---|
//! | PNG colour type 6 (RGBA), WebP with alpha, BMP with an alpha bit mask | `RGBA` | composite on white if some alpha is 0 and some alpha is > 0, else drop alpha |
//! | PNG colour type 4 (gray + alpha) | `LA` | drop alpha, replicate gray |
//! | PNG palette / RGB / gray with `tRNS`, GIF (first frame) | `P`, `RGB`, `L` | transparency ignored (alpha dropped) |
//! | gray | `L` | replicate gray into R, G, B |
//! | 16-bit RGB(A) / gray+alpha PNG | `RGB`/`RGBA`/`LA` from `;16B` raw modes | high byte of each sample (what PIL's unpacker keeps) |
//! | 16-bit gray PNG | `I;16` | `min(value, 255)` (PIL's `I;16` → `RGB` conversion clamps) |
//!
//! EXIF orientation is not applied (PIL's `Image.open` does not either).
//!
//! Known, documented differences from PIL (not exercised by the reference fixtures):
//! * JPEG is decoded by `zune-jpeg`, PIL uses libjpeg-turbo. Measured against Pillow 13:
//!   4:4:4 JPEGs differ by at most ±2 per sample, chroma-subsampled (4:2:0 / 4:2:2) ones by
//!   up to about ±12 on high-frequency colour content (a few percent of samples; mostly ±1-2
//!   on photographic content). Bit-exact JPEG parity would need a libjpeg-turbo decoder.
//! * Lossy WebP is decoded by `image-webp`, PIL uses libwebp (identical on the test image).
//! * CMYK JPEGs are converted by the `image` crate, not with PIL's `CMYK` → `RGB` formula.
//! * GIF first frames smaller than the logical screen: the uncovered area is transparent
//!   black here (alpha dropped → black); PIL may fill it with the background index.

use std::io::Cursor;
use std::path::Path;

use image::{
    DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage, RgbaImage,
};

use crate::error::MediaError;

/// Limits applied while decoding, so that hostile inputs (decompression bombs, absurd
/// header dimensions) fail fast instead of allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Maximum image width in pixels.
    pub max_width: u32,
    /// Maximum image height in pixels.
    pub max_height: u32,
    /// Maximum number of bytes the decoder may allocate (decoded buffer included); also the
    /// maximum size of a file read by [`load_image`].
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    /// 16384 x 16384 pixels, 512 MiB.
    fn default() -> Self {
        Self {
            max_width: 16384,
            max_height: 16384,
            max_alloc_bytes: 512 * 1024 * 1024,
        }
    }
}

/// How PIL would treat the alpha channel of the decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlphaRule {
    /// PIL mode `RGBA`: composite on white when some alpha is 0 and some is > 0.
    RgbaComposite,
    /// Any other PIL mode: alpha (or transparency) is dropped.
    Drop,
}

/// How PIL would turn a 16-bit gray sample into 8 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gray16Rule {
    /// `LA;16B` raw mode: keep the high byte.
    HighByte,
    /// `I;16` mode: `convert("RGB")` clamps the value to 255.
    Clamp,
}

/// Fields of a PNG IHDR chunk that matter here.
#[derive(Debug, Clone, Copy)]
struct PngHeader {
    width: u32,
    height: u32,
    color_type: u8,
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

fn peek_png_header(bytes: &[u8]) -> Option<PngHeader> {
    if bytes.len() < 26 || bytes[..8] != PNG_SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be32 = |o: usize| u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    Some(PngHeader {
        width: be32(16),
        height: be32(20),
        color_type: bytes[25],
    })
}

fn format_name(format: Option<ImageFormat>) -> String {
    match format {
        Some(f) => format!("{f:?}").to_uppercase(),
        None => "unknown".to_string(),
    }
}

/// Maps an `image` error to a [`MediaError`].
fn map_image_error(
    err: ImageError,
    format: Option<ImageFormat>,
    dims: Option<(u32, u32)>,
    limits: &DecodeLimits,
) -> MediaError {
    use image::error::{LimitErrorKind, UnsupportedErrorKind};
    match err {
        ImageError::Limits(e) => match e.kind() {
            LimitErrorKind::DimensionError => MediaError::TooLarge {
                // Dimensions are checked before the decoder sees the limits, so this is
                // only reached if a decoder finds a larger size later (0 when unknown).
                width: dims.map_or(0, |d| u64::from(d.0)),
                height: dims.map_or(0, |d| u64::from(d.1)),
                max_width: limits.max_width,
                max_height: limits.max_height,
            },
            _ => MediaError::MemoryLimit {
                required: None,
                limit: limits.max_alloc_bytes,
            },
        },
        ImageError::Unsupported(e) => match e.kind() {
            UnsupportedErrorKind::Format(_) => MediaError::UnsupportedFormat {
                detail: e.to_string(),
            },
            _ => MediaError::UnsupportedFormat {
                detail: format!("{} feature not supported: {e}", format_name(format)),
            },
        },
        other => MediaError::Decode {
            format: format_name(format),
            message: other.to_string(),
        },
    }
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), MediaError> {
    if width > limits.max_width || height > limits.max_height {
        return Err(MediaError::TooLarge {
            width: u64::from(width),
            height: u64::from(height),
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    if width == 0 || height == 0 {
        return Err(MediaError::EmptyImage {
            width: u64::from(width),
            height: u64::from(height),
        });
    }
    Ok(())
}

/// Decodes an image held in memory and converts it to RGB exactly as the NEO reference
/// (`load_image_native`, spec §3 steps 1-2) does with PIL (see the [module documentation](self) for
/// the mode rules and the known JPEG decoder differences).
///
/// The format (PNG, JPEG, WebP, BMP, GIF — first frame) is guessed from the content. The
/// dimensions are checked against `limits` from the header, before any pixel buffer is
/// allocated.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, MediaError> {
    if bytes.is_empty() {
        return Err(MediaError::Decode {
            format: "unknown".to_string(),
            message: "no data (0 bytes)".to_string(),
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| MediaError::Decode {
            format: "unknown".to_string(),
            message: e.to_string(),
        })?;
    let format = reader.format();
    let format = match format {
        Some(
            f @ (ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::WebP
            | ImageFormat::Bmp
            | ImageFormat::Gif),
        ) => f,
        Some(other) => {
            return Err(MediaError::UnsupportedFormat {
                detail: format!(
                    "{} (supported: PNG, JPEG, WebP, BMP, GIF)",
                    format_name(Some(other))
                ),
            })
        }
        None => {
            return Err(MediaError::UnsupportedFormat {
                detail: "data is not a recognised image (supported: PNG, JPEG, WebP, BMP, GIF)"
                    .to_string(),
            })
        }
    };

    // For PNG the header is checked before the decoder is built: the PNG decoder reads up
    // to the first IDAT chunk on construction, and the IHDR colour type decides PIL's mode.
    let png_header = if format == ImageFormat::Png {
        let h = peek_png_header(bytes).ok_or_else(|| MediaError::Decode {
            format: "PNG".to_string(),
            message: "missing or truncated IHDR chunk".to_string(),
        })?;
        check_dimensions(h.width, h.height, limits)?;
        Some(h)
    } else {
        None
    };

    // The allocation limit is given to the reader (the PNG decoder uses it while it is being
    // constructed); the dimension limits are checked here with the real dimensions, so the
    // error can name them, then handed to the decoder as well.
    let mut alloc_only = image::Limits::default();
    alloc_only.max_image_width = None;
    alloc_only.max_image_height = None;
    alloc_only.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(alloc_only);
    let png_dims = png_header.map(|h| (h.width, h.height));
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(e, Some(format), png_dims, limits))?;

    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;

    let mut full = image::Limits::default();
    full.max_image_width = Some(limits.max_width);
    full.max_image_height = Some(limits.max_height);
    full.max_alloc = Some(limits.max_alloc_bytes);
    decoder
        .set_limits(full)
        .map_err(|e| map_image_error(e, Some(format), Some((width, height)), limits))?;
    let required = decoder.total_bytes();
    if required > limits.max_alloc_bytes {
        return Err(MediaError::MemoryLimit {
            required: Some(required),
            limit: limits.max_alloc_bytes,
        });
    }

    let decoded = DynamicImage::from_decoder(decoder)
        .map_err(|e| map_image_error(e, Some(format), Some((width, height)), limits))?;

    let (alpha_rule, gray16_rule) = match (format, png_header) {
        (ImageFormat::Png, Some(h)) => (
            if h.color_type == 6 {
                AlphaRule::RgbaComposite
            } else {
                AlphaRule::Drop
            },
            if h.color_type == 4 {
                Gray16Rule::HighByte
            } else {
                Gray16Rule::Clamp
            },
        ),
        (ImageFormat::WebP | ImageFormat::Bmp, _) => (AlphaRule::RgbaComposite, Gray16Rule::Clamp),
        _ => (AlphaRule::Drop, Gray16Rule::Clamp),
    };
    let rgb = to_rgb_pil(decoded, alpha_rule, gray16_rule);
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(MediaError::EmptyImage {
            width: u64::from(rgb.width()),
            height: u64::from(rgb.height()),
        });
    }
    Ok(rgb)
}

/// Reads an image file and decodes it with [`decode_image`].
///
/// Files larger than `limits.max_alloc_bytes` are refused before being read.
pub fn load_image(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, MediaError> {
    let io_err = |source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.len() > limits.max_alloc_bytes {
        return Err(MediaError::MemoryLimit {
            required: Some(meta.len()),
            limit: limits.max_alloc_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    decode_image(&bytes, limits)
}

/// PIL's `BLEND(mask, in1, in2)` = `DIV255(in1 * (255 - mask) + in2 * mask)` with
/// `DIV255(a) = ((a + 128) >> 8 + (a + 128)) >> 8`, used by `Image.paste(im, mask=...)`.
#[inline]
fn pil_blend(mask: u8, background: u8, foreground: u8) -> u8 {
    let m = u32::from(mask);
    let t = u32::from(background) * (255 - m) + u32::from(foreground) * m + 128;
    // t <= 255 * 255 + 128, so the result is <= 255.
    (((t >> 8) + t) >> 8) as u8
}

/// Converts a PIL-mode `RGBA` image to RGB the way the NEO reference does: if at least one
/// pixel has alpha == 0 and at least one has alpha > 0, the image is pasted onto a white
/// background with its alpha as mask, in PIL's integer arithmetic (per channel
/// `t = 255 * (255 - a) + c * a + 128; ((t >> 8) + t) >> 8`); otherwise the alpha channel is
/// simply dropped (`convert("RGB")`).
pub fn rgba_to_rgb_pil(img: &RgbaImage) -> RgbImage {
    let raw = img.as_raw();
    let mut any_zero = false;
    let mut any_positive = false;
    for px in raw.chunks_exact(4) {
        if px[3] == 0 {
            any_zero = true;
        } else {
            any_positive = true;
        }
        if any_zero && any_positive {
            break;
        }
    }
    if !(any_zero && any_positive) {
        return drop_alpha(img);
    }
    let out: Vec<u8> = raw
        .chunks_exact(4)
        .flat_map(|p| {
            [
                pil_blend(p[3], 255, p[0]),
                pil_blend(p[3], 255, p[1]),
                pil_blend(p[3], 255, p[2]),
            ]
        })
        .collect();
    rgb_from_raw(img.width(), img.height(), out)
}

/// `convert("RGB")` of an RGBA / P-with-transparency image: the alpha channel is ignored.
fn drop_alpha(img: &RgbaImage) -> RgbImage {
    let raw: Vec<u8> = img
        .as_raw()
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    rgb_from_raw(img.width(), img.height(), raw)
}

fn rgb_from_raw(width: u32, height: u32, raw: Vec<u8>) -> RgbImage {
    // The length always matches (built from a buffer of the same dimensions).
    RgbImage::from_raw(width, height, raw).unwrap_or_else(|| RgbImage::new(width, height))
}

fn gray_to_rgb(width: u32, height: u32, samples: impl Iterator<Item = u8>) -> RgbImage {
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for v in samples {
        out.extend_from_slice(&[v, v, v]);
    }
    rgb_from_raw(width, height, out)
}

fn gray16_to_u8(v: u16, rule: Gray16Rule) -> u8 {
    match rule {
        Gray16Rule::HighByte => (v >> 8) as u8,
        Gray16Rule::Clamp => v.min(255) as u8,
    }
}

fn to_rgb_pil(img: DynamicImage, alpha: AlphaRule, gray16: Gray16Rule) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => match alpha {
            AlphaRule::RgbaComposite => rgba_to_rgb_pil(&rgba),
            AlphaRule::Drop => drop_alpha(&rgba),
        },
        DynamicImage::ImageLuma8(l) => gray_to_rgb(w, h, l.into_raw().into_iter()),
        DynamicImage::ImageLumaA8(la) => {
            gray_to_rgb(w, h, la.as_raw().chunks_exact(2).map(|p| p[0]))
        }
        DynamicImage::ImageLuma16(l) => {
            gray_to_rgb(w, h, l.as_raw().iter().map(|&v| gray16_to_u8(v, gray16)))
        }
        DynamicImage::ImageLumaA16(la) => gray_to_rgb(
            w,
            h,
            la.as_raw()
                .chunks_exact(2)
                .map(|p| gray16_to_u8(p[0], gray16)),
        ),
        DynamicImage::ImageRgb16(rgb) => {
            let raw: Vec<u8> = rgb.as_raw().iter().map(|&v| (v >> 8) as u8).collect();
            rgb_from_raw(w, h, raw)
        }
        DynamicImage::ImageRgba16(rgba) => {
            let raw: Vec<u8> = rgba.as_raw().iter().map(|&v| (v >> 8) as u8).collect();
            let rgba8 = RgbaImage::from_raw(w, h, raw).unwrap_or_else(|| RgbaImage::new(w, h));
            match alpha {
                AlphaRule::RgbaComposite => rgba_to_rgb_pil(&rgba8),
                AlphaRule::Drop => drop_alpha(&rgba8),
            }
        }
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn encode_png(
        width: u32,
        height: u32,
        data: &[u8],
        color: image::ExtendedColorType,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(data, width, height, color)
            .expect("png encoding");
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG consisting only of the signature and an IHDR chunk (valid CRC), and optionally
    /// a tiny IDAT + IEND.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        let mut v = PNG_SIGNATURE.to_vec();
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        chunk.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        v.extend_from_slice(&13u32.to_be_bytes());
        v.extend_from_slice(&chunk);
        v.extend_from_slice(&crc32(&chunk).to_be_bytes());
        v
    }

    #[test]
    fn crc_matches_known_value() {
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }

    #[test]
    fn pil_blend_formula() {
        // Hand-computed with DIV255(255*(255-a) + s*a): t = ... + 128, ((t>>8)+t)>>8.
        // a=128, s=10: 255*127 + 1280 + 128 = 33793; 33793>>8 = 132; (132+33793)>>8 = 132.
        assert_eq!(pil_blend(128, 255, 10), 132);
        // a=1, s=0: 64770 + 128 = 64898; 253; (253+64898)>>8 = 254.
        assert_eq!(pil_blend(1, 255, 0), 254);
        // a=255: foreground unchanged; a=0: white.
        assert_eq!(pil_blend(255, 255, 37), 37);
        assert_eq!(pil_blend(0, 255, 37), 255);
        // a=200, s=100: 255*55 + 20000 + 128 = 34153; 133; (133+34153)>>8 = 133.
        assert_eq!(pil_blend(200, 255, 100), 133);
        // a=77, s=254: 255*178 + 19558 + 128 = 65076; 254; (254+65076)>>8 = 255.
        assert_eq!(pil_blend(77, 255, 254), 255);
        // a=51, s=0: 255*204 + 0 + 128 = 52148; 203; (203+52148)>>8 = 204.
        assert_eq!(pil_blend(51, 255, 0), 204);
    }

    #[test]
    fn rgba_composited_on_white_when_some_alpha_is_zero() {
        let data: Vec<u8> = vec![
            10, 200, 0, 128, // half transparent
            1, 2, 3, 0, // fully transparent -> white
            100, 50, 254, 255, // opaque -> unchanged
            0, 100, 254, 51, //
        ];
        let png = encode_png(2, 2, &data, image::ExtendedColorType::Rgba8);
        let rgb = decode_image(&png, &DecodeLimits::default()).expect("decode");
        let expected: Vec<u8> = vec![
            132, 227,
            127, // 10->132; 200: 32385+25600+128=58113 ->227 ->227; 0: 32513->127->127
            255, 255, 255, //
            100, 50, 254, //
            204, 224, 255, // s=100,a=51: 52020+5100+128=57248 ->223 -> (223+57248)>>8=224
        ];
        assert_eq!(rgb.as_raw(), &expected);
    }

    #[test]
    fn rgba_alpha_dropped_when_no_alpha_is_zero() {
        let data: Vec<u8> = vec![10, 200, 0, 128, 1, 2, 3, 1];
        let png = encode_png(2, 1, &data, image::ExtendedColorType::Rgba8);
        let rgb = decode_image(&png, &DecodeLimits::default()).expect("decode");
        assert_eq!(rgb.as_raw(), &vec![10, 200, 0, 1, 2, 3]);
        // All fully transparent: no pixel with alpha > 0 -> dropped too.
        let data: Vec<u8> = vec![10, 200, 0, 0, 1, 2, 3, 0];
        let png = encode_png(2, 1, &data, image::ExtendedColorType::Rgba8);
        let rgb = decode_image(&png, &DecodeLimits::default()).expect("decode");
        assert_eq!(rgb.as_raw(), &vec![10, 200, 0, 1, 2, 3]);
    }

    #[test]
    fn gray_and_gray_alpha_replicated() {
        let png = encode_png(2, 1, &[7, 250], image::ExtendedColorType::L8);
        let rgb = decode_image(&png, &DecodeLimits::default()).expect("decode");
        assert_eq!(rgb.as_raw(), &vec![7, 7, 7, 250, 250, 250]);
        // LA: alpha dropped even if some alpha is 0 (PIL mode LA is not composited).
        let png = encode_png(2, 1, &[7, 0, 250, 128], image::ExtendedColorType::La8);
        let rgb = decode_image(&png, &DecodeLimits::default()).expect("decode");
        assert_eq!(rgb.as_raw(), &vec![7, 7, 7, 250, 250, 250]);
    }

    #[test]
    fn sixteen_bit_png_like_pil() {
        // RGB16 -> high byte.
        let samples: [u16; 3] = [0x1234, 0xff01, 0x00ff];
        let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let png = encode_png(1, 1, &bytes, image::ExtendedColorType::Rgb16);
        let rgb = decode_image(&png, &DecodeLimits::default()).expect("decode");
        assert_eq!(rgb.as_raw(), &vec![0x12, 0xff, 0x00]);
        // L16 -> PIL I;16 -> RGB clamps.
        let samples: [u16; 2] = [200, 300];
        let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let png = encode_png(2, 1, &bytes, image::ExtendedColorType::L16);
        let rgb = decode_image(&png, &DecodeLimits::default()).expect("decode");
        assert_eq!(rgb.as_raw(), &vec![200, 200, 200, 255, 255, 255]);
    }

    #[test]
    fn truncated_png_is_a_decode_error() {
        let data: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let png = encode_png(64, 64, &data, image::ExtendedColorType::Rgb8);
        for cut in [png.len() / 2, png.len() - 13, 40, 20] {
            let err = decode_image(&png[..cut], &DecodeLimits::default()).unwrap_err();
            assert!(
                matches!(err, MediaError::Decode { .. }),
                "cut {cut}: unexpected {err:?}"
            );
        }
    }

    #[test]
    fn random_bytes_are_unsupported() {
        let mut x = 0x1234_5678u32;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        let err = decode_image(&bytes, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, MediaError::UnsupportedFormat { .. }),
            "{err:?}"
        );
        // Random bytes behind a valid signature: corrupt data.
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend_from_slice(&bytes);
        let err = decode_image(&png, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, MediaError::Decode { .. }), "{err:?}");
        let err = decode_image(&[], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, MediaError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn huge_header_is_refused_before_allocating() {
        let png = png_header_only(100_000, 100_000);
        let err = decode_image(&png, &DecodeLimits::default()).unwrap_err();
        match err {
            MediaError::TooLarge {
                width,
                height,
                max_width,
                max_height,
            } => {
                assert_eq!((width, height), (100_000, 100_000));
                assert_eq!((max_width, max_height), (16384, 16384));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Within the dimension limits but over the memory limit.
        let limits = DecodeLimits {
            max_alloc_bytes: 1 << 20,
            ..DecodeLimits::default()
        };
        let data = vec![0u8; 1024 * 1024 * 3];
        let png = encode_png(1024, 1024, &data, image::ExtendedColorType::Rgb8);
        let err = decode_image(&png, &limits).unwrap_err();
        assert!(matches!(err, MediaError::MemoryLimit { .. }), "{err:?}");
    }

    #[test]
    fn zero_size_image_is_empty() {
        let png = png_header_only(0, 10);
        let err = decode_image(&png, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                MediaError::EmptyImage {
                    width: 0,
                    height: 10
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_file_is_io_error_with_path() {
        let p = Path::new("/nonexistent/dir/image.png");
        let err = load_image(p, &DecodeLimits::default()).unwrap_err();
        match &err {
            MediaError::Io { path, .. } => assert_eq!(path, p),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("/nonexistent/dir/image.png"));
    }

    #[test]
    fn other_formats_decode() {
        let data: Vec<u8> = (0..8 * 6 * 3).map(|i| (i * 5 % 256) as u8).collect();
        let img = RgbImage::from_raw(8, 6, data.clone()).expect("buffer");
        for fmt in [ImageFormat::Bmp, ImageFormat::Gif, ImageFormat::Jpeg] {
            let mut buf = Cursor::new(Vec::new());
            img.write_to(&mut buf, fmt).expect("encode");
            let rgb = decode_image(buf.get_ref(), &DecodeLimits::default()).expect("decode");
            assert_eq!(rgb.dimensions(), (8, 6), "{fmt:?}");
            if fmt == ImageFormat::Bmp {
                assert_eq!(rgb.as_raw(), &data);
            }
        }
    }
}
