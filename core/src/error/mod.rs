//! Errors. One rich enum per layer ([`LocalError`], [`ConfigError`], [`RemoteError`]); one
//! public [`Error`] for the whole runtime, whose [`Error::kind`] is the stable, machine-readable
//! [`ErrorKind`] the SDKs expose. The mapping from rich errors to kinds lives in one place,
//! [`Error::kind`]. llama-cpp-2's types never leak out of `engine::local`.

//!
//! Every error type of the crate is defined here, below every other module, so that any layer
//! can name any error without depending on the layer that raises it.

use std::path::PathBuf;

mod gguf;
mod ledger;
mod pull;
mod remote;

pub use gguf::GgufError;
pub use ledger::LedgerError;
pub use pull::PullError;
pub use remote::{RemoteError, TimeoutPhase};

/// Errors from the local (llama.cpp) tier.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The caller cancelled an operation that has no partial result.
    #[error("cancelled")]
    Cancelled,
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
    /// The model, its KV cache and compute buffers need more memory than may be used; checked
    /// before llama.cpp sees the file, so an app gets this error instead of being killed.
    #[error("{path}: needs about {need_mb} MB ({weights_mb} MB of weights, {kv_mb} MB of KV cache for {kv_tokens} tokens, {compute_mb} MB of compute buffers) but {limit_mb} MB may be used ({limit_from}); use a smaller model, a smaller n_ctx or parallel, or raise [local] memory_limit_mb")]
    InsufficientMemory {
        /// The model file.
        path: PathBuf,
        /// The whole estimate, MB.
        need_mb: u64,
        /// Tensor data, MB.
        weights_mb: u64,
        /// KV cache, MB.
        kv_mb: u64,
        /// KV cells (context times sequences).
        kv_tokens: u64,
        /// Compute buffers, MB.
        compute_mb: u64,
        /// What may be used, MB.
        limit_mb: u64,
        /// Where the limit comes from (`[local] memory_limit_mb`, or the system's available memory).
        limit_from: &'static str,
    },
}

/// Errors reading the configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::sync::Arc<std::io::Error>,
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

/// A value refused by a check: a fitted model or probe that does not fit this build, plan
/// inputs out of range, an answer that does not match its format or tools. The message says
/// what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(s: String) -> Self {
        Invalid(s)
    }
}

impl From<&str> for Invalid {
    fn from(s: &str) -> Self {
        Invalid(s.to_owned())
    }
}

impl From<Invalid> for ConfigError {
    fn from(e: Invalid) -> Self {
        ConfigError::Invalid(e.0)
    }
}

/// The stable kind of an [`Error`]: what an app branches on. Its string form
/// ([`ErrorKind::as_str`], and its serde form) never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The model file is not a valid GGUF file (or cannot be read).
    InvalidModelFile,
    /// llama.cpp could not load a valid-looking model, or create a context for it.
    ModelLoad,
    /// The prompt does not fit the local context.
    ContextOverflow,
    /// The request contradicts itself or the configuration.
    InvalidRequest,
    /// The configuration is invalid.
    InvalidConfig,
    /// The remote tier could not be reached or did not answer in time (retrying later may work).
    RemoteUnavailable,
    /// The remote tier answered, but refused the request or answered nonsense.
    RemoteRejected,
    /// The remote budget refuses a request that can only go remote.
    BudgetExhausted,
    /// The caller cancelled an operation that has no partial result.
    Cancelled,
    /// The runtime is closed.
    Closed,
    /// A model download failed: refused (404, 401), unreachable until its deadline, or the
    /// file's sha256 was wrong. Nothing was saved at the destination.
    Download,
    /// Not enough room for a model: the models quota or the disk, or a file could not be
    /// written.
    Storage,
    /// The device's state forbids the request now: private work in the background with the
    /// local model on a GPU. Retry when the app is in the foreground.
    DeviceState,
    /// A bug: a panic inside the runtime or a callback, or llama.cpp failing mid-decode.
    Internal,
    /// The model needs more memory than the device may give it (checked before loading).
    InsufficientMemory,
}

impl ErrorKind {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidModelFile => "invalid_model_file",
            ErrorKind::ModelLoad => "model_load",
            ErrorKind::ContextOverflow => "context_overflow",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::RemoteUnavailable => "remote_unavailable",
            ErrorKind::RemoteRejected => "remote_rejected",
            ErrorKind::BudgetExhausted => "budget_exhausted",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Closed => "closed",
            ErrorKind::DeviceState => "device_state",
            ErrorKind::Download => "download",
            ErrorKind::Storage => "storage",
            ErrorKind::Internal => "internal",
            ErrorKind::InsufficientMemory => "insufficient_memory",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any error from the runtime: the rich cause, with a stable [`ErrorKind`] from [`Error::kind`].
#[derive(Debug, Clone, thiserror::Error)]
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
    /// From the remote tier, where no local answer can stand in (forced remote, no local model,
    /// or a prompt too long for the local context).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The budget refuses a request that can only go remote.
    #[error("remote budget exhausted: {0}")]
    BudgetExhausted(String),
    /// The runtime was closed.
    #[error("the runtime is closed")]
    Closed,
    /// The request needs the remote tier and the app reported the device offline.
    #[error("the device is offline and the request needs the remote tier")]
    Offline,
    /// The device's state forbids the request now.
    #[error("{0}")]
    DeviceState(String),
    /// From the model manager.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// The cost ledger could not be read or written.
    #[error("cost ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// A panic inside the runtime or a callback, caught before it could cross into the caller.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable kind. Every rich error maps to a kind here, and only here.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Local(l) => match l {
                LocalError::InvalidModel(_) => ErrorKind::InvalidModelFile,
                LocalError::Load { .. }
                | LocalError::Context { .. }
                | LocalError::Template(_)
                | LocalError::Backend(_) => ErrorKind::ModelLoad,
                LocalError::ContextOverflow { .. } => ErrorKind::ContextOverflow,
                LocalError::InvalidRequest(_) => ErrorKind::InvalidRequest,
                LocalError::Cancelled => ErrorKind::Cancelled,
                LocalError::Decode { .. } => ErrorKind::Internal,
                LocalError::InsufficientMemory { .. } => ErrorKind::InsufficientMemory,
            },
            Error::Config(_) => ErrorKind::InvalidConfig,
            Error::InvalidRequest(_) => ErrorKind::InvalidRequest,
            Error::Remote(r) => match r {
                RemoteError::Config(_) => ErrorKind::InvalidConfig,
                RemoteError::Cancelled => ErrorKind::Cancelled,
                RemoteError::Malformed { .. } => ErrorKind::RemoteRejected,
                RemoteError::Status { status, .. } if *status != 429 && *status < 500 => {
                    ErrorKind::RemoteRejected
                }
                RemoteError::Status { .. }
                | RemoteError::Connect { .. }
                | RemoteError::Timeout { .. }
                | RemoteError::Cut { .. }
                | RemoteError::CircuitOpen { .. } => ErrorKind::RemoteUnavailable,
            },
            Error::BudgetExhausted(_) => ErrorKind::BudgetExhausted,
            Error::Closed => ErrorKind::Closed,
            Error::Offline => ErrorKind::RemoteUnavailable,
            Error::DeviceState(_) => ErrorKind::DeviceState,
            Error::Pull(p) => {
                use PullError as P;
                match p {
                    P::Invalid(_) => ErrorKind::InvalidRequest,
                    P::Status { .. }
                    | P::Unreachable { .. }
                    | P::Refused { .. }
                    | P::InProgress(_)
                    | P::Mismatch { .. } => ErrorKind::Download,
                    P::Storage(_) | P::Io { .. } => ErrorKind::Storage,
                    P::Cancelled => ErrorKind::Cancelled,
                    P::Panicked(_) => ErrorKind::Internal,
                }
            }
            Error::Ledger(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<GgufError> for Error {
    fn from(e: GgufError) -> Self {
        Error::Local(LocalError::InvalidModel(e))
    }
}

/// Result with the runtime's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A key or name as it appears in an error message: one line, at most 80 characters, control
/// characters escaped.
pub(crate) fn clip(s: &str) -> String {
    let shown: String = s
        .chars()
        .take(80)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if s.chars().count() > 80 {
        format!("{shown}...")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind's stable string, each reached from a real error of the layer that makes
    /// it (apps and the ledger match on these strings).
    #[test]
    fn kinds_are_stable() {
        let path = || std::path::PathBuf::from("m.gguf");
        let remote = |status| RemoteError::Status {
            url: "u".into(),
            status,
            body: String::new(),
        };
        let table: Vec<(Error, &str)> = vec![
            (
                GgufError::Empty { path: path() }.into(),
                "invalid_model_file",
            ),
            (
                LocalError::Load {
                    path: path(),
                    detail: String::new(),
                }
                .into(),
                "model_load",
            ),
            (
                LocalError::ContextOverflow {
                    prompt_tokens: 10,
                    n_ctx: 8,
                }
                .into(),
                "context_overflow",
            ),
            (Error::InvalidRequest("x".into()), "invalid_request"),
            (ConfigError::Invalid("x".into()).into(), "invalid_config"),
            (remote(503).into(), "remote_unavailable"),
            (remote(429).into(), "remote_unavailable"),
            (Error::Offline, "remote_unavailable"),
            (remote(401).into(), "remote_rejected"),
            (remote(400).into(), "remote_rejected"),
            (Error::BudgetExhausted("x".into()), "budget_exhausted"),
            (LocalError::Cancelled.into(), "cancelled"),
            (PullError::Cancelled.into(), "cancelled"),
            (Error::Closed, "closed"),
            (
                PullError::Status {
                    url: "u".into(),
                    status: 404,
                }
                .into(),
                "download",
            ),
            (PullError::InProgress(path()).into(), "download"),
            (PullError::Storage("full".into()).into(), "storage"),
            (Error::DeviceState("x".into()), "device_state"),
            (Error::Internal("x".into()), "internal"),
            (PullError::Panicked("x".into()).into(), "internal"),
            (
                LocalError::InsufficientMemory {
                    path: path(),
                    need_mb: 2,
                    weights_mb: 1,
                    kv_mb: 1,
                    kv_tokens: 8,
                    compute_mb: 0,
                    limit_mb: 1,
                    limit_from: "test",
                }
                .into(),
                "insufficient_memory",
            ),
        ];
        for (e, want) in &table {
            assert_eq!(e.kind().as_str(), *want, "{e:?}");
        }
        // Every kind is reached (an exhaustive match: a new kind fails to compile here until
        // the table has it).
        let covered = |k: ErrorKind| table.iter().any(|(e, _)| e.kind() == k);
        for k in [
            ErrorKind::InvalidModelFile,
            ErrorKind::ModelLoad,
            ErrorKind::ContextOverflow,
            ErrorKind::InvalidRequest,
            ErrorKind::InvalidConfig,
            ErrorKind::RemoteUnavailable,
            ErrorKind::RemoteRejected,
            ErrorKind::BudgetExhausted,
            ErrorKind::Cancelled,
            ErrorKind::Closed,
            ErrorKind::Download,
            ErrorKind::Storage,
            ErrorKind::DeviceState,
            ErrorKind::Internal,
            ErrorKind::InsufficientMemory,
        ] {
            match k {
                ErrorKind::InvalidModelFile
                | ErrorKind::ModelLoad
                | ErrorKind::ContextOverflow
                | ErrorKind::InvalidRequest
                | ErrorKind::InvalidConfig
                | ErrorKind::RemoteUnavailable
                | ErrorKind::RemoteRejected
                | ErrorKind::BudgetExhausted
                | ErrorKind::Cancelled
                | ErrorKind::Closed
                | ErrorKind::Download
                | ErrorKind::Storage
                | ErrorKind::DeviceState
                | ErrorKind::Internal
                | ErrorKind::InsufficientMemory => assert!(covered(k), "{k:?} is never produced"),
            }
        }
        assert_eq!(
            Error::BudgetExhausted("x".into()).to_string(),
            "remote budget exhausted: x"
        );
    }

    /// The ledger writes kinds through serde: the same strings as `as_str`, both ways.
    #[test]
    fn kinds_serialise_as_their_codes() {
        use ErrorKind as K;
        for k in [
            K::InvalidModelFile,
            K::ModelLoad,
            K::ContextOverflow,
            K::InvalidRequest,
            K::InvalidConfig,
            K::RemoteUnavailable,
            K::RemoteRejected,
            K::BudgetExhausted,
            K::Cancelled,
            K::Closed,
            K::Download,
            K::Storage,
            K::DeviceState,
            K::Internal,
            K::InsufficientMemory,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(serde_json::from_value::<K>(k.as_str().into()).unwrap(), k);
        }
    }

    #[test]
    fn timeout_phases_read_as_before() {
        for (p, s) in [
            (TimeoutPhase::FirstByte, "first byte"),
            (TimeoutPhase::ChunkGap, "chunk gap"),
            (TimeoutPhase::Total, "total"),
        ] {
            assert_eq!(p.to_string(), s);
            let e = RemoteError::Timeout {
                url: "u".into(),
                phase: p,
                seconds: 2.0,
            };
            assert_eq!(e.to_string(), format!("u: {s} timeout after 2.0 s"));
        }
    }
}
