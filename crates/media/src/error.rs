//! Error type of the media crate.

use std::path::PathBuf;

/// Everything that can go wrong while decoding or preprocessing an image.
///
/// Every variant carries enough context to be shown to a user as is.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The data looks like a known format but is corrupt or truncated. `message` is the
    /// decoder's own description of the problem.
    #[error("cannot decode {format} image data (corrupt or truncated): {message}")]
    Decode {
        /// Format the data was recognised as (or "unknown").
        format: String,
        /// The decoder's message.
        message: String,
    },

    /// The data is not in one of the supported formats (PNG, JPEG, WebP, BMP, GIF), or uses a
    /// feature of such a format that the decoder does not support.
    #[error("unsupported image format: {detail}")]
    UnsupportedFormat {
        /// What was detected / what is unsupported.
        detail: String,
    },

    /// The image dimensions exceed the configured [`crate::DecodeLimits`].
    #[error(
        "image of {width}x{height} pixels exceeds the decode limit of {max_width}x{max_height}"
    )]
    TooLarge {
        /// Width declared by the image.
        width: u64,
        /// Height declared by the image.
        height: u64,
        /// Configured maximum width.
        max_width: u32,
        /// Configured maximum height.
        max_height: u32,
    },

    /// Decoding would allocate more memory than [`crate::DecodeLimits::max_alloc_bytes`].
    #[error(
        "decoding the image needs {} bytes, more than the limit of {limit} bytes",
        required.map_or_else(|| "too many".to_string(), |r| r.to_string())
    )]
    MemoryLimit {
        /// Bytes the decoder would need, when known.
        required: Option<u64>,
        /// The configured limit in bytes.
        limit: u64,
    },

    /// The aspect ratio is larger than 200 (smart_resize refuses such images, as the
    /// reference implementation does).
    #[error(
        "absurd aspect ratio: image of {width}x{height} pixels has a ratio of {ratio:.1}, \
         the maximum is 200"
    )]
    AspectRatio {
        /// Image width.
        width: usize,
        /// Image height.
        height: usize,
        /// max(w, h) / min(w, h).
        ratio: f64,
    },

    /// The image has zero width or zero height.
    #[error("empty image ({width}x{height} pixels)")]
    EmptyImage {
        /// Image width.
        width: u64,
        /// Image height.
        height: u64,
    },

    /// Reading an image file failed.
    #[error("cannot read image file {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A preprocessing parameter is invalid (zero patch size, zero max_pixels, ...).
    #[error("invalid preprocessing parameter: {0}")]
    InvalidConfig(String),
}
