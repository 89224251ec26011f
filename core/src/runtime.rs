//! The runtime: one entry point for apps. It owns the engines, routes each request, runs the
//! cascade, records the cost, and returns a [`Response`] with route, usage, timings, confidence
//! and cost.
//!
//! One request flows one way: [`Runtime::chat_cancellable`] admits it, the router decides a
//! [`Plan`](crate::policy::Plan), one leg function runs it (local, remote, or the cascade) and
//! returns what happened as a value ([`Settled`](settle::Settled) or
//! [`Failed`](settle::Failed)); [`Runtime::respond`] turns that into the
//! [`Response`] and the ledger record. Every request ends with exactly one terminal event,
//! `Done` or `Failed`, and a panic anywhere in it becomes an `Internal` error.

mod cascade;
mod legs;
mod lifecycle;
mod route;
mod settle;
mod stream;
#[cfg(test)]
mod tests;
mod tiers;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::cost::{CostReport, Ledger};
use crate::engine::local::{LocalEngine, ModelInfo};
use crate::engine::remote::RemoteEngine;
use crate::error::{ConfigError, Error, Result};
use crate::panics::panic_text;
use crate::policy::Cascade;
use crate::types::{ChatRequest, DeviceState, EventSink, FinishReason, Response};

pub use lifecycle::GenerationHandle;
use lifecycle::Lifecycle;
use settle::deliver;
pub(crate) use tiers::{LocalTier, RemoteTier};

/// The runtime. `Send + Sync`: share it across threads (for example in an `Arc`).
pub struct Runtime {
    config: Config,
    /// The local tier; `None` until a model is loaded (everything routes remote meanwhile).
    /// Requests take a clone of the `Arc`, so swapping the model never disturbs one in flight.
    local: RwLock<Option<Arc<dyn LocalTier>>>,
    remote: Option<Arc<dyn RemoteTier>>,
    /// The cascade's decisions; replaced when a new local model brings its own probe.
    cascade: RwLock<Arc<Cascade>>,
    ledger: Option<Ledger>,
    lifecycle: Arc<Lifecycle>,
    next_id: AtomicU64,
    stats: Stats,
    /// What the app last reported about the device; each request reads it once, at routing.
    device: RwLock<DeviceState>,
}

/// Counts of requests by how they ended.
#[derive(Default)]
struct Stats {
    finished: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
}

/// How many requests the runtime has seen end, and how many are in flight: for apps' metrics,
/// and to prove cancellation by counts rather than clocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct RuntimeStats {
    /// Requests that ended with `Done` (cancelled ones included).
    pub finished: u64,
    /// Of those, the ones that ended with `FinishReason::Cancelled`.
    pub cancelled: u64,
    /// Requests that ended with `Failed`.
    pub failed: u64,
    /// Requests admitted and not yet ended.
    pub in_flight: u64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("local", &self.local_model().map(|m| m.name))
            .field("remote", &self.remote.is_some())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Validates the config, loads the local model (if one is configured) and prepares the
    /// remote tier. A runtime without a local model is valid when a remote tier is configured:
    /// it answers remotely until [`Runtime::set_local_model`] loads one.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_progress(config, None)
    }

    /// Like [`Runtime::new`], reporting model-load progress (0.0 to 1.0).
    pub fn with_progress(
        config: Config,
        progress: Option<Box<dyn FnMut(f32) + Send>>,
    ) -> Result<Self> {
        config.validate()?;
        let remote = config
            .remote
            .as_ref()
            .map(RemoteEngine::new)
            .transpose()?
            .map(|r| Arc::new(r) as Arc<dyn RemoteTier>);
        let local = match &config.local.model {
            Some(_) => Some(Arc::new(LocalEngine::load(&config.local, progress)?) as _),
            None if remote.is_some() => None,
            None => {
                return Err(ConfigError::Invalid(
                    "nothing to answer with: set [local] model, or configure [remote]".into(),
                )
                .into())
            }
        };
        Self::with_tiers(config, local, remote)
    }

    /// A runtime over given tiers (the real engines, or scripted ones in tests).
    pub(crate) fn with_tiers(
        config: Config,
        local: Option<Arc<dyn LocalTier>>,
        remote: Option<Arc<dyn RemoteTier>>,
    ) -> Result<Self> {
        let mut cascade = Cascade::new(&config.cascade).map_err(ConfigError::from)?;
        if let Some(engine) = local.clone().and_then(LocalTier::engine) {
            if let Some(p) = Self::load_probe(&config, &engine)? {
                cascade = cascade.with_probe(p);
            }
        }
        let cascade = RwLock::new(Arc::new(cascade));
        let ledger = config.ledger.path.clone().map(Ledger::new);
        Ok(Self {
            config,
            local: RwLock::new(local),
            remote,
            cascade,
            ledger,
            lifecycle: Arc::new(Lifecycle::default()),
            next_id: AtomicU64::new(0),
            stats: Stats::default(),
            device: RwLock::new(DeviceState::default()),
        })
    }

    /// The configuration in force (as given; [`Runtime::local_model`] names the model loaded).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Facts about the local model, if one is loaded.
    pub fn local_model(&self) -> Option<ModelInfo> {
        self.local_tier().and_then(|l| l.info().cloned())
    }

    /// The local engine, for benchmarks and tools; `None` without a local model.
    pub fn local_engine(&self) -> Option<Arc<LocalEngine>> {
        self.local_tier().and_then(LocalTier::engine)
    }

    /// Requests ended so far, by outcome, and those in flight.
    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            finished: self.stats.finished.load(Ordering::SeqCst),
            cancelled: self.stats.cancelled.load(Ordering::SeqCst),
            failed: self.stats.failed.load(Ordering::SeqCst),
            in_flight: self.lifecycle.in_flight(),
        }
    }

    /// Whether a remote tier is configured.
    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The ledger, if configured.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// Totals from the ledger since `since` (Unix seconds; `None` for all time). Without a
    /// ledger the report is empty.
    pub fn cost_report(&self, since: Option<f64>) -> Result<CostReport> {
        match &self.ledger {
            Some(l) => l.report(since).map_err(Error::from),
            None => Ok(CostReport::default()),
        }
    }

    /// Loads, validates and swaps in the local model at `path`, with the `[local]` settings.
    /// Requests in flight finish on the model they started with; later ones use the new one.
    pub fn set_local_model(&self, path: &Path) -> Result<ModelInfo> {
        self.lifecycle.check_open()?;
        let mut cfg = self.config.local.clone();
        cfg.model = Some(path.to_owned());
        let engine = LocalEngine::load(&cfg, None)?;
        // A probe fitted on another model refuses the swap: the old model stays.
        let probe = Self::load_probe(&self.config, &engine)?;
        let info = engine.info().clone();
        let mut slot = self
            .local
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // `close()` may have run while the model loaded: checked under the slot's lock, which
        // `close()` takes after marking the runtime closed, so a closed runtime stays empty.
        self.lifecycle.check_open()?;
        *slot = Some(Arc::new(engine));
        if let Some(p) = probe {
            let policy = Cascade::new(&self.config.cascade)
                .map_err(ConfigError::from)?
                .with_probe(p);
            *self
                .cascade
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
        }
        Ok(info)
    }

    /// The `[cascade] probe` for `engine`'s model, when `signal = "probe"`: checked against the
    /// model file's sha256 and hidden width.
    fn load_probe(
        config: &Config,
        engine: &LocalEngine,
    ) -> Result<Option<crate::policy::probe::Probe>> {
        if config.cascade.signal != crate::signal::Signal::Probe {
            return Ok(None);
        }
        let Some(path) = config.cascade.probe.as_deref() else {
            return Ok(None);
        };
        let model = &engine.info().path;
        // The hash the model manager recorded, while the file is unchanged; else hash it.
        let sha = match crate::models::Store::known_sha256(model) {
            Some(h) => h,
            None => crate::models::pull::sha256_file(model)
                .map_err(|e| ConfigError::Invalid(format!("model {}: {e}", model.display())))?
                .map(|(h, _)| h)
                .unwrap_or_default(),
        };
        crate::policy::probe::Probe::load(
            path,
            &sha,
            model,
            engine.n_embd(),
            engine.hidden_tensor(),
        )
        .map(Some)
        .map_err(|e| ConfigError::Invalid(e.to_string()).into())
    }

    /// The cascade's decisions in force.
    fn policy(&self) -> Arc<Cascade> {
        Arc::clone(
            &self
                .cascade
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Tells the router about the device: offline keeps everything local, the background sends
    /// work to the remote tier (and refuses private work when the local model runs on a GPU),
    /// heat and low power escalate more readily, a metered network less (`[device]`). Requests
    /// already routed keep the state they started with.
    pub fn set_device_state(&self, state: DeviceState) {
        *self
            .device
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// The device state last reported (the default until an app reports one).
    pub fn device_state(&self) -> DeviceState {
        *self
            .device
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the local tier's KV caches and idle contexts (the model stays mapped), for the
    /// memory warnings phones send. The next request rebuilds what it needs.
    pub fn trim_memory(&self) {
        if let Some(l) = self.local_tier() {
            l.trim();
        }
    }

    /// Cancels every request in flight, refuses new ones with [`ErrorKind::Closed`], waits for
    /// those in flight to finish (each ends with its terminal event), then frees the local
    /// model. Idempotent. Do not call it from inside an event sink: it would wait for itself.
    ///
    /// [`ErrorKind::Closed`]: crate::error::ErrorKind::Closed
    pub fn close(&self) {
        self.lifecycle.close();
        let mut slot = self
            .local
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = None;
    }

    /// Answers `req`, streaming events to `sink`. Blocking: call it from a worker thread.
    pub fn chat(&self, req: &ChatRequest, sink: &dyn EventSink) -> Result<Response> {
        self.chat_cancellable(req, sink, &Arc::new(AtomicBool::new(false)))
    }

    /// Like [`Runtime::chat`], stopping within one token once `cancel` is set. The sink sees
    /// exactly one terminal event, `Done` or `Failed`, matching the result.
    pub fn chat_cancellable(
        &self,
        req: &ChatRequest,
        sink: &dyn EventSink,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Response> {
        match self.lifecycle.admit(cancel) {
            Err(e) => {
                self.count(Err(&e));
                deliver(sink, Err(e))
            }
            Ok(ticket) => self.run_admitted(req, sink, cancel, ticket),
        }
    }

    /// Runs an admitted request to its terminal event; the ticket is released after it.
    fn run_admitted(
        &self,
        req: &ChatRequest,
        sink: &dyn EventSink,
        cancel: &AtomicBool,
        ticket: lifecycle::Ticket,
    ) -> Result<Response> {
        let result = catch_unwind(AssertUnwindSafe(|| self.answer(req, sink, cancel)))
            .unwrap_or_else(|panic| Err(Error::Internal(panic_text(&*panic))));
        // Counted before the terminal event, so whoever sees it sees the count.
        self.count(result.as_ref().map(|r| r.finish_reason));
        let answered = result.is_ok();
        let delivered = deliver(sink, result);
        if answered && delivered.is_err() {
            // A sink that panicked on Done turned an answer into a failure.
            self.stats.finished.fetch_sub(1, Ordering::SeqCst);
            self.stats.failed.fetch_add(1, Ordering::SeqCst);
        }
        // The ticket outlives the terminal event: `close()` returns after it.
        drop(ticket);
        delivered
    }

    fn count(&self, outcome: std::result::Result<FinishReason, &Error>) {
        let s = &self.stats;
        match outcome {
            Ok(finish) => {
                s.finished.fetch_add(1, Ordering::SeqCst);
                if finish == FinishReason::Cancelled {
                    s.cancelled.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(_) => {
                s.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Starts `req` on a new thread; events go to `sink`, ending with exactly one `Done` or
    /// `Failed`. The handle cancels on `cancel()` or drop, and `wait()` gives the result.
    pub fn start_chat(
        self: &Arc<Self>,
        req: ChatRequest,
        sink: Box<dyn EventSink>,
    ) -> GenerationHandle {
        let sink: Arc<dyn EventSink> = Arc::from(sink);
        let handle = GenerationHandle::new();
        let flag = handle.cancel_flag();
        // Admitted here, on the caller's thread: once start_chat returns, close() waits for
        // this request.
        let ticket = match self.lifecycle.admit(&flag) {
            Ok(t) => t,
            Err(e) => {
                self.count(Err(&e));
                handle.outcome().set(deliver(&*sink, Err(e)));
                return handle;
            }
        };
        let (rt, outcome, s) = (Arc::clone(self), handle.outcome(), Arc::clone(&sink));
        let spawned = std::thread::Builder::new()
            .name("edgecascade-chat".into())
            .spawn(move || {
                let result = rt.run_admitted(&req, &*s, &flag, ticket);
                // Release the sink (an app's listener, perhaps a foreign object) before the
                // result is published: once `wait()` returns, this thread touches no foreign
                // code, even if the app then exits (seen: Python aborting at shutdown when a
                // listener was freed after its interpreter had begun finalising).
                drop(s);
                outcome.set(result);
            });
        if let Err(e) = spawned {
            // The closure, and the ticket in it, were dropped with the failed spawn.
            let error = Error::Internal(format!("cannot start a generation thread: {e}"));
            self.count(Err(&error));
            handle.outcome().set(deliver(&*sink, Err(error)));
        }
        handle
    }

    fn local_tier(&self) -> Option<Arc<dyn LocalTier>> {
        self.local
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
