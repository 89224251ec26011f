//! EdgeCascade's FFI: UniFFI wrappers over the `edgecascade` core, and the one native library
//! (`cdylib`/`staticlib`) the Kotlin, Swift and Python SDKs load. Thin by rule: the records and
//! enums are the core's own (derived behind its `uniffi` feature); this crate adds newtypes for
//! the stateful objects, the listener, and the one public error, mapped in one place.

// UniFFI hands exported functions owned values.
#![allow(clippy::needless_pass_by_value)]

use std::sync::Arc;

use edgecascade as core;

uniffi::setup_scaffolding!();

/// Every failure, with the human message. The variant is the stable kind (the core's
/// `ErrorKind`); Kotlin sees `EdgeCascadeException.<Kind>`, Swift `EdgeCascadeError.<kind>`.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum EdgeCascadeError {
    /// The model file is not a valid GGUF file (or cannot be read).
    #[error("{0}")]
    InvalidModelFile(String),
    /// llama.cpp could not load a valid-looking model.
    #[error("{0}")]
    ModelLoad(String),
    /// The prompt does not fit the local context.
    #[error("{0}")]
    ContextOverflow(String),
    /// The request contradicts itself or the configuration.
    #[error("{0}")]
    InvalidRequest(String),
    /// The configuration is invalid.
    #[error("{0}")]
    InvalidConfig(String),
    /// The remote tier could not be reached or did not answer in time.
    #[error("{0}")]
    RemoteUnavailable(String),
    /// The remote tier refused the request or answered nonsense.
    #[error("{0}")]
    RemoteRejected(String),
    /// The remote budget refuses a request that can only go remote.
    #[error("{0}")]
    BudgetExhausted(String),
    /// Cancelled, with no partial result.
    #[error("{0}")]
    Cancelled(String),
    /// The runtime is closed.
    #[error("{0}")]
    Closed(String),
    /// The device's state forbids the request now (private work in the background with the
    /// local model on a GPU).
    #[error("{0}")]
    DeviceState(String),
    /// A model download failed (refused, unreachable, wrong sha256); nothing was saved.
    #[error("{0}")]
    Download(String),
    /// Not enough room for a model (quota or disk), or a file could not be written.
    #[error("{0}")]
    Storage(String),
    /// A bug: a panic inside the runtime or a callback.
    #[error("{0}")]
    Internal(String),
    /// The model needs more memory than the device may give it; nothing was loaded.
    #[error("{0}")]
    InsufficientMemory(String),
}

impl From<core::Error> for EdgeCascadeError {
    fn from(e: core::Error) -> Self {
        use core::ErrorKind as K;
        let m = e.to_string();
        match e.kind() {
            K::InvalidModelFile => Self::InvalidModelFile(m),
            K::ModelLoad => Self::ModelLoad(m),
            K::ContextOverflow => Self::ContextOverflow(m),
            K::InvalidRequest => Self::InvalidRequest(m),
            K::InvalidConfig => Self::InvalidConfig(m),
            K::RemoteUnavailable => Self::RemoteUnavailable(m),
            K::RemoteRejected => Self::RemoteRejected(m),
            K::BudgetExhausted => Self::BudgetExhausted(m),
            K::Cancelled => Self::Cancelled(m),
            K::Closed => Self::Closed(m),
            K::DeviceState => Self::DeviceState(m),
            K::Download => Self::Download(m),
            K::Storage => Self::Storage(m),
            K::Internal => Self::Internal(m),
            K::InsufficientMemory => Self::InsufficientMemory(m),
        }
    }
}

impl From<core::ConfigError> for EdgeCascadeError {
    fn from(e: core::ConfigError) -> Self {
        core::Error::from(e).into()
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for EdgeCascadeError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Internal(format!("a listener failed: {}", e.reason))
    }
}

/// Receives a streamed request's events, on any thread: tokens and escalations, then exactly
/// one `on_done` or `on_failed`. An exception thrown here fails the request; it never crashes
/// the app.
#[uniffi::export(with_foreign)]
pub trait ChatListener: Send + Sync {
    /// Text as it is generated, whole characters, from `tier`.
    fn on_token(&self, text: String, tier: core::Tier);
    /// The local draft is being abandoned for the remote tier.
    fn on_escalating(&self, reason: core::Reason);
    /// The escalation gave no answer: drop the text received since `on_escalating`; the local
    /// draft received before it stands again, and its continuation follows.
    fn on_falling_back(&self, detail: String);
    /// The final answer. Terminal.
    fn on_done(&self, response: core::Response);
    /// The request failed. Terminal.
    fn on_failed(&self, error: EdgeCascadeError);
}

/// Adapts a foreign listener to the core's event sink.
struct Listener(Arc<dyn ChatListener>);

impl core::EventSink for Listener {
    fn on_event(&self, event: core::Event) {
        match event {
            core::Event::Token { text, tier } => self.0.on_token(text, tier),
            core::Event::Escalating { reason } => self.0.on_escalating(reason),
            core::Event::FallingBack { detail } => self.0.on_falling_back(detail),
            core::Event::Done(r) => self.0.on_done(*r),
            core::Event::Failed(e) => self.0.on_failed(e.into()),
        }
    }
}

/// The runtime: load once, share across threads, `shutdown()` then drop when done.
#[derive(uniffi::Object)]
pub struct Runtime(Arc<core::Runtime>);

#[uniffi::export]
impl Runtime {
    /// Validates `config`, loads the local model (if one is set) and prepares the remote tier.
    /// Blocking (it loads the model): call it off the main thread.
    #[uniffi::constructor]
    pub fn new(config: core::Config) -> Result<Arc<Self>, EdgeCascadeError> {
        Ok(Arc::new(Self(Arc::new(core::Runtime::new(config)?))))
    }

    /// Answers `request`. Blocking: call it from a background thread.
    pub fn chat(&self, request: core::ChatRequest) -> Result<core::Response, EdgeCascadeError> {
        Ok(self.0.chat(&request, &core::NullSink)?)
    }

    /// Starts `request` on a Rust thread; `listener` sees its events. Cancel with the handle.
    pub fn start_chat(
        &self,
        request: core::ChatRequest,
        listener: Arc<dyn ChatListener>,
    ) -> Arc<GenerationHandle> {
        Arc::new(GenerationHandle(
            self.0.start_chat(request, Box::new(Listener(listener))),
        ))
    }

    /// Loads the model at `path` and swaps it in; requests in flight finish on the old one.
    pub fn set_local_model(&self, path: String) -> Result<core::ModelInfo, EdgeCascadeError> {
        Ok(self.0.set_local_model(std::path::Path::new(&path))?)
    }

    /// Facts about the local model, if one is loaded.
    pub fn local_model(&self) -> Option<core::ModelInfo> {
        self.0.local_model()
    }

    /// Cancels requests in flight, refuses new ones (`Closed`), waits for them, frees the model.
    pub fn shutdown(&self) {
        self.0.close();
    }

    /// Requests ended so far, by outcome, and those in flight.
    pub fn stats(&self) -> core::RuntimeStats {
        self.0.stats()
    }

    /// Tells the router about the device (heat, battery, network, background).
    pub fn set_device_state(&self, state: core::DeviceState) {
        self.0.set_device_state(state);
    }

    /// The device state last reported.
    pub fn device_state(&self) -> core::DeviceState {
        self.0.device_state()
    }

    /// Frees KV caches and idle contexts (the model stays mapped): for memory warnings.
    pub fn trim_memory(&self) {
        self.0.trim_memory();
    }

    /// Totals from the ledger since `since_unix_s` (all time if `None`).
    pub fn cost_report(
        &self,
        since_unix_s: Option<f64>,
    ) -> Result<core::cost::CostReport, EdgeCascadeError> {
        Ok(self.0.cost_report(since_unix_s)?)
    }
}

/// A started request. Dropping it (or `cancel()`) stops the generation within a token.
#[derive(uniffi::Object)]
pub struct GenerationHandle(core::GenerationHandle);

#[uniffi::export]
impl GenerationHandle {
    /// Stops the generation; the request still ends with its terminal event.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether the request has ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Blocks until the request ends; its result.
    pub fn wait(&self) -> Result<core::Response, EdgeCascadeError> {
        Ok(self.0.wait()?)
    }
}

/// The default configuration: every section with defaults that work, no model, no remote tier.
#[uniffi::export]
pub fn default_config() -> core::Config {
    core::Config::default()
}

/// A request for one user question, with the default settings (greedy, 256 tokens, the
/// router and cascade deciding).
#[uniffi::export]
pub fn user_request(prompt: String) -> core::ChatRequest {
    core::ChatRequest::user(prompt)
}

/// The `[remote]` section's defaults for the endpoint `base_url` serving `model`.
#[uniffi::export]
pub fn default_remote_config(base_url: String, model: String) -> core::config::RemoteConfig {
    core::config::RemoteConfig {
        base_url,
        model,
        ..core::config::RemoteConfig::default()
    }
}

/// A configuration from TOML text (the desktop binary's format).
#[uniffi::export]
pub fn config_from_toml(toml: String) -> Result<core::Config, EdgeCascadeError> {
    Ok(core::Config::from_toml(&toml)?)
}

/// Checks a model file without loading it.
#[uniffi::export]
pub fn verify_model(path: String) -> Result<core::engine::local::GgufInfo, EdgeCascadeError> {
    core::engine::local::verify_model(std::path::Path::new(&path))
        .map_err(|e| core::Error::from(e).into())
}

/// Receives the runtime's log lines (llama.cpp's own under the target `llama.cpp`), on any
/// thread. An exception thrown here loses that line, nothing else (it is returned as an error
/// and dropped, so a broken logger costs no panic per line).
#[uniffi::export(with_foreign)]
pub trait LogListener: Send + Sync {
    /// One line: its level, its target and the message.
    fn on_log(
        &self,
        level: core::LogLevel,
        target: String,
        message: String,
    ) -> Result<(), EdgeCascadeError>;
}

struct LogForward(Arc<dyn LogListener>);

impl core::LogSink for LogForward {
    fn log(&self, level: core::LogLevel, target: &str, message: &str) {
        // Nowhere to report a logger's own failure: the line is lost, as documented.
        let _ = self.0.on_log(level, target.to_owned(), message.to_owned());
    }
}

/// Sends log lines at `level` and above to `listener`, replacing the one installed before.
#[uniffi::export]
pub fn set_log_listener(
    listener: Arc<dyn LogListener>,
    level: core::LogLevel,
) -> Result<(), EdgeCascadeError> {
    core::set_log_sink(Arc::new(LogForward(listener)), level)
        .map_err(|e| EdgeCascadeError::InvalidConfig(e.to_string()))
}

/// Stops sending log lines to the listener.
#[uniffi::export]
pub fn clear_log_listener() {
    core::clear_log_sink();
}

/// The version of the native library.
#[uniffi::export]
pub fn edgecascade_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// Receives a model download's events, on the download's thread: progress about ten times a
/// second and each retry, then exactly one `on_done` or `on_failed`.
#[uniffi::export(with_foreign)]
pub trait PullListener: Send + Sync {
    /// Bytes so far, the total once known, the current rate.
    fn on_progress(&self, progress: core::models::PullProgress);
    /// An attempt failed (which, and why) and the next follows after `retry.wait_s`.
    fn on_retry(&self, retry: core::models::PullRetry);
    /// The file is at its destination, verified. Terminal.
    fn on_done(&self, outcome: core::models::PullOutcome);
    /// The download failed (`Download`, `Storage`, `Cancelled`, `InvalidRequest`). Terminal.
    fn on_failed(&self, error: EdgeCascadeError);
}

/// A download in progress. Dropping it (or `close()` in Kotlin) cancels the download.
#[derive(uniffi::Object)]
pub struct PullHandle(core::models::pull::PullHandle);

#[uniffi::export]
impl PullHandle {
    /// Stops the download, a blocked read included; the partial file stays for a later
    /// resume. It ends with `on_failed(Cancelled)`.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether the download has ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// The foreign listener behind core's.
struct ForeignPullListener(Arc<dyn PullListener>);

impl core::models::pull::PullListener for ForeignPullListener {
    fn on_progress(&self, progress: &core::models::PullProgress) {
        self.0.on_progress(*progress);
    }
    fn on_retry(&self, retry: &core::models::PullRetry) {
        self.0.on_retry(retry.clone());
    }
    fn on_done(&self, outcome: core::models::PullOutcome) {
        self.0.on_done(outcome);
    }
    fn on_failed(&self, error: core::models::PullError) {
        self.0.on_failed(core::Error::from(error).into());
    }
}

/// The built-in catalog of known models (name, URL, size, sha256, licence, context length).
#[uniffi::export]
pub fn model_catalog() -> Vec<core::models::catalog::CatalogModel> {
    core::models::catalog::models()
}

/// Downloads a model on its own thread: resumable, verified by sha256 before it appears at
/// `request.dest` (see `PullRequest`).
#[uniffi::export]
pub fn pull_model(
    request: core::models::PullRequest,
    listener: Arc<dyn PullListener>,
) -> Arc<PullHandle> {
    Arc::new(PullHandle(core::models::pull::start_pull(
        request,
        Arc::new(ForeignPullListener(listener)),
    )))
}
