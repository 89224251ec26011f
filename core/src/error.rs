//! Errors. One rich enum per layer; llama-cpp-2's types never leak out of `engine::local`.

use std::path::PathBuf;

pub use crate::engine::local::gguf::GgufError;

/// Errors from the local (llama.cpp) tier.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model file failed validation.
    #[error(transparent)]
    InvalidModel(#[from] GgufError),
    /// llama.cpp refused a file that passed validation.
    #[error("llama.cpp could not load model {path}: {detail}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What llama.cpp reported.
        detail: String,
    },
    /// llama.cpp could not create an inference context.
    #[error("could not create a llama.cpp context (n_ctx {n_ctx}): {detail}")]
    Context {
        /// Requested context size.
        n_ctx: u32,
        /// What went wrong.
        detail: String,
    },
    /// The prompt does not fit the context.
    #[error("prompt is {prompt_tokens} tokens but the local context holds {n_ctx} (it needs room for at least one generated token); shorten the conversation or set context_policy = \"truncate_oldest\"")]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// Context size.
        n_ctx: u32,
    },
    /// The chat template could not be applied.
    #[error("chat template failed: {0}")]
    Template(String),
    /// The request is invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// llama.cpp failed while decoding.
    #[error("llama.cpp decode failed at position {pos}: {detail}")]
    Decode {
        /// KV position.
        pos: u32,
        /// What went wrong.
        detail: String,
    },
    /// The llama.cpp backend could not start.
    #[error("llama.cpp backend failed to initialise: {0}")]
    Backend(String),
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for our schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Any error from the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the local tier.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// From the configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A request contradicts itself or the configuration.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// From the remote tier, where no local answer can stand in (forced remote, or a prompt too
    /// long for the local context).
    #[error(transparent)]
    Remote(#[from] crate::engine::remote::RemoteError),
}

impl From<GgufError> for Error {
    fn from(e: GgufError) -> Self {
        Error::Local(LocalError::InvalidModel(e))
    }
}

/// Result with the runtime's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
