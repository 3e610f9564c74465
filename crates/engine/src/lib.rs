//! pixlm-engine: from a request (messages, images, options) to streamed text.
//!
//! Stages, each in its own module: `messages` (the request), `prompt` (chat formats, image
//! placeholders), `engine` (tokenizing, preprocessing, prefill and the decode loop),
//! `sampler` (logits to the next token), `stream` (UTF-8-safe incremental detokenizing and
//! stop strings), `check` (parity against reference fixtures).

pub mod batch;
pub mod check;
pub mod engine;
pub mod error;
pub mod messages;
pub mod prompt;
pub mod sampler;
pub mod stream;

pub use engine::{
    short_url, Engine, Family, FinishReason, GenerateOptions, Generation, Prepared, WarmUp,
};
pub use error::{EngineError, Result};
pub use messages::{ChatMessage, Content, ImageUrl, Part};
pub use sampler::SamplingParams;
