//! pixlm-media: image decoding and reference-exact preprocessing.
//!
//! Reproduces the NEO reference image pipeline (VLMEvalKit `load_image_native`, spec §3):
//!
//! 1. [`decode_image`] / [`load_image`]: decode (PNG, JPEG, WebP, BMP, GIF first frame; format
//!    from content; EXIF orientation not applied) under [`DecodeLimits`], then convert to RGB
//!    as PIL does (RGBA composited on white with PIL's integer `paste` arithmetic when some
//!    alpha is 0 and some is > 0, otherwise alpha dropped; gray replicated; 16-bit samples
//!    reduced as PIL does: high byte, except 16-bit gray which PIL clamps to 255). JPEG and
//!    lossy WebP are decoded by pure-Rust decoders, not libjpeg-turbo/libwebp: see
//!    [`decode_image`] for the known differences.
//! 2. [`smart_resize`]: target size, f64 arithmetic, round-half-to-even.
//! 3. [`resize_bicubic`]: bit-exact Pillow `Image.resize` (BICUBIC, 22-bit fixed point,
//!    two passes with an 8-bit intermediate; pass order as in Pillow 13.0, the version the
//!    reference fixtures were made with: vertical first when the width does not shrink and
//!    the height does, horizontal first otherwise).
//! 4. [`preprocess()`]: the above plus `(u8 / 255 - mean) / std` in f32 and the patch layout
//!    `(grid_h * grid_w, 3 * p * p)`, row `py * grid_w + px`, feature `c*p*p + ky*p + kx`.
//!
//! ```no_run
//! use pixlm_media::{load_image, preprocess, DecodeLimits, PreprocessConfig};
//! let img = load_image("cat.png".as_ref(), &DecodeLimits::default())?;
//! let patches = preprocess(&img, &PreprocessConfig::default())?;
//! println!("{} patches, {} tokens", patches.num_patches(), patches.num_tokens());
//! # Ok::<(), pixlm_media::MediaError>(())
//! ```

pub mod decode;
mod error;
pub mod preprocess;
pub mod resize;

pub use decode::{decode_image, load_image, rgba_to_rgb_pil, DecodeLimits};
pub use error::MediaError;
pub use preprocess::{
    preprocess, smart_resize, Patches, PreprocessConfig, IMAGENET_MEAN, IMAGENET_STD,
    MAX_ASPECT_RATIO,
};
pub use resize::{resize_bicubic, resize_bilinear, resize_pil, Filter};

/// Re-export of the `image` crate, so callers can name [`image::RgbImage`] without adding
/// the dependency themselves.
pub use image;
