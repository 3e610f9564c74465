use std::path::PathBuf;

/// Errors of the request path. Each names what was wrong with the input or the model files.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] pixlm_models::ModelError),
    #[error("image {source_name}: {source}")]
    Image {
        source_name: String,
        #[source]
        source: pixlm_media::MediaError,
    },
    #[error("{path}: {what}")]
    Tokenizer { path: PathBuf, what: String },
    #[error("invalid request: {0}")]
    Request(String),
    #[error("prompt of {tokens} tokens does not fit the context of {limit} tokens")]
    ContextOverflow { tokens: usize, limit: usize },
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Sampling(#[from] crate::sampler::SamplingError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Check(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;
