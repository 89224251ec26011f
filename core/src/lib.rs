//! EdgeCascade core: an on-device LLM runtime (llama.cpp through `llama-cpp-2`) that decides per
//! request whether the small local model is good enough or a large remote one is worth paying
//! for, and records what each answer cost.
//!
//! Start with [`Runtime`]: `Runtime::new(config)?.chat(&ChatRequest::user("hi"), &NullSink)`.

#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!();

#[cfg(feature = "uniffi")]
use std::path::PathBuf;

// Paths cross the FFI as strings.
#[cfg(feature = "uniffi")]
uniffi::custom_type!(PathBuf, String, {
    remote,
    lower: |p| p.to_string_lossy().into_owned(),
    try_lift: |s| Ok(std::path::PathBuf::from(s)),
});

pub mod config;
pub mod cost;
pub mod engine;
pub mod error;
#[cfg(feature = "eval")]
pub mod eval;
#[cfg(test)]
mod layers;
pub mod logging;
pub mod models;
pub(crate) mod net;
mod panics;
pub mod policy;
pub mod runtime;
pub mod signal;
mod stats;
#[cfg(test)]
mod surface;
pub mod tools;
pub mod types;

pub use config::Config;
pub use engine::local::{LocalEngine, LocalOutput, ModelInfo, TokenEvent, TokenSignal};
pub use error::{ConfigError, Error, ErrorKind, LocalError, RemoteError, Result};
pub use logging::{clear_log_sink, set_log_sink, LogLevel, LogSink};
pub use runtime::{GenerationHandle, Runtime, RuntimeStats};
pub use types::*;
