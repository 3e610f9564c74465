//! The pieces every architecture shares, written once.

pub mod attention;
pub mod embedding;
pub mod linear;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rope;

pub use attention::{attention, block_mask};
pub use embedding::Embedding;
pub use linear::{Linear, LinearGroup};
pub use mlp::GatedMlp;
pub use moe::{MoeBlock, Routing};
pub use norm::RmsNorm;
