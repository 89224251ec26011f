//! The runtime: one entry point for apps. It owns the engines, routes each request, runs the
//! cascade, records the cost, and returns a [`Response`] with route, usage, timings, confidence
//! and cost.
//!
//! One request flows one way: [`Runtime::chat_cancellable`] admits it, the router decides a
//! [`Plan`], one leg function runs it (local, remote, or the cascade) and returns what happened
//! as a value ([`Settled`] or [`Failed`]); [`Runtime::respond`] turns that into the
//! [`Response`] and the ledger record. Every request ends with exactly one terminal event,
//! `Done` or `Failed`, and a panic anywhere in it becomes an `Internal` error.

mod lifecycle;
#[cfg(test)]
mod tests;
mod tiers;

use std::borrow::Cow;
use std::cell::Cell;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::config::{Config, ContextPolicy};
use crate::cost::{self, CostRecord, CostReport, Ledger};
use crate::engine::local::{
    confidence, GenerateOptions, LocalEngine, LocalOutput, ModelInfo, TokenSignal,
};
use crate::engine::remote::{RemoteEngine, RemoteError, RemoteOutput};
use crate::error::{ConfigError, Error, LocalError, Result};
use crate::panics::panic_text;
use crate::policy::{self, Cascade, Plan, RouteInput, Verdict};
use crate::types::{
    ChatRequest, Cost, DeviceState, Event, EventSink, FinishReason, Network, PolicyOverride,
    Reason, Response, ResponseFormat, Route, Tier, Timings, TokenUsage, Usage,
};

pub use lifecycle::GenerationHandle;
use lifecycle::Lifecycle;
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

/// Largest completion asked of the remote tier, and so reserved for, when a request sets no
/// smaller `max_tokens`.
const WORST_CASE_COMPLETION: u32 = 4096;

/// What one request produced, per tier.
#[derive(Default)]
struct Work {
    local: Option<LocalOutput>,
    /// Local tokens generated after a failed escalation, continuing the cut draft.
    local_extra: Option<LocalOutput>,
    remote: Option<RemoteOutput>,
    /// Remote usage of calls that did not give the answer (failed after text had streamed),
    /// estimated from what arrived: billed, and counted against the budget.
    remote_spent: Option<TokenUsage>,
}

impl Work {
    /// The local tier's token signals, draft and continuation.
    fn signals(&self) -> Vec<TokenSignal> {
        let mut signals = self
            .local
            .as_ref()
            .map(|l| l.signals.clone())
            .unwrap_or_default();
        if let Some(e) = &self.local_extra {
            signals.extend_from_slice(&e.signals);
        }
        signals
    }
}

/// A leg that produced an answer.
struct Settled {
    route: Route,
    reason: Reason,
    detail: String,
    remote_error: Option<String>,
    work: Work,
}

/// A leg that failed.
struct Failed {
    error: Box<Error>,
    reason: Reason,
}

impl Failed {
    fn new(error: impl Into<Error>, reason: Reason) -> Self {
        Self {
            error: Box::new(error.into()),
            reason,
        }
    }
}

/// What one admitted request has committed of the remote budget and spent of it, so that its
/// cost record is written however the request ends: with an answer, an error, or a panic
/// (the guard's drop writes it then, while unwinding). A reservation is never left to expire
/// while the ledger waits for a record that will not come.
struct Settlement<'a> {
    rt: &'a Runtime,
    req: &'a ChatRequest,
    id: String,
    t0: Instant,
    /// Budget was reserved for this request: a record must settle it.
    reserved: Cell<bool>,
    /// Remote usage of calls that did not give the answer (see [`Work::remote_spent`]).
    spent: Cell<Option<TokenUsage>>,
    /// Remote usage of every call so far, the answer's included: what a record written after
    /// a panic bills.
    billed: Cell<Option<TokenUsage>>,
    /// The record was written (or its write attempted).
    recorded: Cell<bool>,
}

impl Settlement<'_> {
    /// Adds a remote call's usage to what was billed.
    fn bill(&self, usage: TokenUsage) {
        self.billed.set(Some(add_usage(self.billed.get(), usage)));
    }

    /// Adds the estimated usage of a remote call that failed after `text` had arrived (the
    /// server generated it, so it bills it).
    fn spent_on_failure(&self, prompt_tokens: u32, text: &str) {
        if text.is_empty() {
            return;
        }
        let usage = TokenUsage {
            prompt_tokens,
            completion_tokens: crate::engine::remote::estimate_completion_tokens(text),
        };
        self.spent.set(Some(add_usage(self.spent.get(), usage)));
        self.bill(usage);
    }

    /// Writes the answer's record.
    fn record_answer(&self, response: &mut Response) {
        self.recorded.set(true);
        let Some(ledger) = &self.rt.ledger else {
            return;
        };
        if let Err(e) = ledger.record(&self.rt.record(response, self.req)) {
            log::warn!("answer produced, but its cost record was not written: {e}");
            response.ledger_error = Some(e.to_string());
        }
    }

    /// Writes a failed request's record, if it reserved budget: it settles the reservation
    /// and counts what was spent (route "failed", the error's kind beside it).
    fn record_failure(&self, reason: Reason, kind: crate::error::ErrorKind) {
        self.recorded.set(true);
        let (Some(ledger), true) = (&self.rt.ledger, self.reserved.get()) else {
            return;
        };
        let settled = Settled {
            route: Route::Local,
            reason,
            detail: String::new(),
            remote_error: None,
            work: Work {
                remote_spent: self.billed.get(),
                ..Work::default()
            },
        };
        let mut rec = self
            .rt
            .record(&self.rt.respond(&self.id, settled, self.t0, None), self.req);
        rec.route = cost::RecordRoute::Failed;
        rec.answer = None;
        rec.error = Some(kind);
        if let Err(e) = ledger.record(&rec) {
            log::warn!("the failed request's cost record was not written: {e}");
        }
    }
}

impl Drop for Settlement<'_> {
    fn drop(&mut self) {
        if self.recorded.get() {
            return;
        }
        // Only a panic leaves a request unrecorded. A second panic here would abort the
        // process: catch it too.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            self.record_failure(Reason::Rule, crate::error::ErrorKind::Internal);
        }));
    }
}

/// The budget refused a reservation; the prose says which cap.
struct Refusal(String);

/// Why and how the cascade escalated.
struct Escalation {
    reason: Reason,
    detail: String,
    /// The draft was cut mid-stream (so a fallback finishes it).
    cut_short: bool,
}

/// Why an escalation fell back to the local answer.
enum Fallback {
    /// The remote tier failed.
    RemoteFailed(String),
    /// The budget refused the escalation.
    Refused(String),
}

/// What the router was told and decided for one request.
struct Routed {
    decision: policy::Decision,
    /// The prompt's tokens (the local tokenizer's count, or an estimate without one).
    prompt_tokens: u32,
    /// Prompt and context tokens, when the prompt does not fit the local context.
    overflow: Option<(u32, u32)>,
    /// The remote completion cap (`max_tokens`, at most [`WORST_CASE_COMPLETION`]).
    remote_max_tokens: u32,
    /// The worst-case remote cost at that cap, in USD: what a reservation holds.
    worst_usd: f64,
    /// The device state the request was routed with.
    device: DeviceState,
}

/// Streams text to the sink and notes when the first token arrived. With a held draft
/// (`ChatRequest::hold_draft`, in the cascade) local text waits in `held` until the route is
/// settled.
struct Stream<'a> {
    sink: &'a dyn EventSink,
    t0: Instant,
    first_token: Cell<Option<f64>>,
    held: std::cell::RefCell<Option<String>>,
    /// With a held draft, an escalation's remote text waits here until the remote answer is
    /// complete: if the call fails, the local answer is sent instead and the caller never saw
    /// a remote beginning it cannot take back.
    held_remote: std::cell::RefCell<Option<String>>,
    /// The request offers tools: local text is held until settled, and only its content (not
    /// the call markup) is sent; the calls arrive in the response.
    tools: bool,
}

impl Stream<'_> {
    fn text(&self, text: &str, tier: Tier) {
        if text.is_empty() {
            return;
        }
        let slot = match tier {
            Tier::Local => &self.held,
            Tier::Remote => &self.held_remote,
        };
        if let Some(held) = slot.borrow_mut().as_mut() {
            held.push_str(text);
            return;
        }
        self.emit(text, tier);
    }

    /// Holds remote text from now on.
    fn hold_remote(&self) {
        *self.held_remote.borrow_mut() = Some(String::new());
    }

    /// The remote answer stands: send its held text.
    fn release_remote(&self) {
        let held = self.held_remote.borrow_mut().take();
        if let Some(text) = held.filter(|t| !t.is_empty()) {
            self.emit(&text, Tier::Remote);
        }
    }

    /// The escalation gave no answer: its held remote text is dropped, and a caller that saw
    /// remote text (or the local draft abandoned at `Escalating`) is told that the local
    /// answer stands again.
    fn fall_back(&self, detail: &str) {
        self.held_remote.borrow_mut().take();
        self.sink.on_event(Event::FallingBack {
            detail: detail.to_owned(),
        });
    }

    /// Holds local text from now on.
    fn hold(&self) {
        *self.held.borrow_mut() = Some(String::new());
    }

    /// The route settled on the local answer: send what was held, and stop holding.
    fn release(&self) {
        let held = self.held.borrow_mut().take();
        let held = if self.tools {
            held.map(|t| crate::tools::parse(&t, "").content)
        } else {
            held
        };
        if let Some(text) = held.filter(|t| !t.is_empty()) {
            self.emit(&text, Tier::Local);
        }
    }

    /// The remote tier answered: the held draft is never sent, the held remote text is.
    fn discard(&self) {
        self.held.borrow_mut().take();
        self.release_remote();
    }

    fn emit(&self, text: &str, tier: Tier) {
        if self.first_token.get().is_none() {
            self.first_token
                .set(Some(self.t0.elapsed().as_secs_f64() * 1e3));
        }
        self.sink.on_event(Event::Token {
            text: text.to_owned(),
            tier,
        });
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

    /// One request, from validation to the recorded response.
    fn answer(
        &self,
        req: &ChatRequest,
        sink: &dyn EventSink,
        cancel: &AtomicBool,
    ) -> Result<Response> {
        if req.private && req.policy == PolicyOverride::ForceRemote {
            return Err(Error::InvalidRequest(
                "a private request cannot be forced to the remote tier".into(),
            ));
        }
        if req.policy == PolicyOverride::ForceRemote && self.remote.is_none() {
            return Err(Error::InvalidRequest(
                "the request forces the remote tier, but none is configured".into(),
            ));
        }
        crate::engine::local::validate_request(req)?;
        let local = self.local_tier();
        if local.is_none() && (req.private || req.policy == PolicyOverride::ForceLocal) {
            return Err(Error::InvalidRequest(
                "no local model is loaded, and this request may not leave the device".into(),
            ));
        }
        let t0 = Instant::now();
        let id = format!(
            "{:x}-{:x}-{}",
            (cost::now_s() * 1e3) as u64,
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let settle = Settlement {
            rt: self,
            req,
            id: id.clone(),
            t0,
            reserved: Cell::new(false),
            spent: Cell::new(None),
            billed: Cell::new(None),
            recorded: Cell::new(false),
        };
        let stream = Stream {
            sink,
            t0,
            first_token: Cell::new(None),
            held: std::cell::RefCell::new(None),
            held_remote: std::cell::RefCell::new(None),
            tools: !crate::tools::offered(req).is_empty(),
        };
        if stream.tools {
            stream.hold();
        }
        let outcome = self.decide(req, local.as_deref(), &id).and_then(|routed| {
            log::debug!(
                "request {id}: {:?} ({})",
                routed.decision.plan,
                routed.decision.detail
            );
            match (routed.decision.plan, local.as_deref()) {
                (Plan::Remote, _) | (_, None) => {
                    self.remote_leg(req, &routed, &settle, local.as_deref(), cancel, &stream)
                }
                (Plan::Local, Some(l)) => Self::local_leg(req, l, &routed, cancel, &stream),
                (Plan::Cascade, Some(l)) => self.cascade(req, l, &routed, &settle, cancel, &stream),
            }
        });
        if let Some(l) = &local {
            // The render cache must not keep this conversation once the request is over.
            l.forget_rendered(&req.messages);
        }
        let ttft = stream.first_token.get();
        match outcome {
            Ok(mut settled) => {
                settled.work.remote_spent = settle.spent.get();
                // Whatever local text is still held belongs to the answer.
                stream.release();
                let ttft = ttft.or(stream.first_token.get());
                let mut response = self.respond(&id, settled, t0, ttft);
                if stream.tools {
                    Self::settle_calls(req, local.as_deref(), &mut response);
                } else if !matches!(req.response_format, ResponseFormat::Text) {
                    let check = match local.as_deref() {
                        Some(l) => l.check_format(&req.response_format, &response.text),
                        None => crate::engine::local::constraint::check_json(
                            &req.response_format,
                            &response.text,
                        ),
                    };
                    response.format_error = check.err();
                    if let Some(why) = &response.format_error {
                        log::warn!(
                            "request {id}: the answer does not match its response format: {why}"
                        );
                    }
                }
                settle.record_answer(&mut response);
                Ok(response)
            }
            Err(failed) => {
                settle.record_failure(failed.reason, failed.error.kind());
                Err(*failed.error)
            }
        }
    }

    /// Gathers what the router needs and asks it.
    fn decide(
        &self,
        req: &ChatRequest,
        local: Option<&dyn LocalTier>,
        id: &str,
    ) -> Result<Routed, Failed> {
        let prompt_tokens = match local {
            Some(l) => l
                .count_request_tokens(req)
                .map_err(|e| Failed::new(e, Reason::Rule))?,
            None => crate::engine::remote::estimate_prompt_tokens(&req.messages),
        };
        let overflow = local.and_then(|l| {
            let n_ctx = l.n_ctx();
            (prompt_tokens >= n_ctx && self.config.local.context_policy == ContextPolicy::Error)
                .then_some((prompt_tokens, n_ctx))
        });
        let unavailable = self
            .remote
            .as_ref()
            .and_then(|r| r.check_available().err())
            .map(|e| e.to_string());
        let remote_max_tokens = req.max_tokens.min(WORST_CASE_COMPLETION);
        let worst_usd = cost::remote_usd(&self.config.prices, prompt_tokens, remote_max_tokens);
        let refusal =
            if self.remote.is_some() && !req.private && req.policy != PolicyOverride::ForceLocal {
                self.budget(id, worst_usd, false).err().map(|r| r.0)
            } else {
                None
            };
        let device = self.device_state();
        let decision = policy::route(&RouteInput {
            policy: req.policy,
            private: req.private,
            remote_configured: self.remote.is_some(),
            local_available: local.is_some(),
            offline: device.network == Network::None,
            background: device.background,
            remote_unavailable: unavailable.as_deref(),
            budget_refusal: refusal.as_deref(),
            overflow,
            prompt_tokens,
            last_user: req
                .messages
                .iter()
                .rev()
                .find(|m| m.role == crate::types::Role::User)
                .map_or("", |m| m.content.as_str()),
            rules: &self.config.router,
        });
        // No GPU work in the background (iOS kills an app for it): what must stay local is
        // refused when the local model runs on a GPU.
        if device.background
            && decision.plan != Plan::Remote
            && local.is_some_and(LocalTier::uses_gpu)
        {
            return Err(Failed::new(
                Error::DeviceState(format!(
                    "the app is in the background and the local model runs on the GPU, which the background forbids; the request stays on the device ({}), so it cannot run now",
                    decision.reason
                )),
                decision.reason,
            ));
        }
        Ok(Routed {
            decision,
            prompt_tokens,
            overflow,
            remote_max_tokens,
            worst_usd,
            device,
        })
    }

    /// Reserves (or, with `dry_run`, only checks) `usd` of remote budget for request `id`.
    fn budget(&self, id: &str, usd: f64, reserve: bool) -> Result<(), Refusal> {
        let b = &self.config.budget;
        if b.per_request_usd.is_none() && b.daily_usd.is_none() && b.monthly_usd.is_none() {
            return Ok(());
        }
        let Some(ledger) = &self.ledger else {
            // Without a ledger only the per-request cap can be enforced.
            return match b.per_request_usd {
                Some(limit) if usd > limit => Err(Refusal(format!(
                    "per_request remote budget of ${limit:.4} is below the worst case ${usd:.4}"
                ))),
                _ => Ok(()),
            };
        };
        let result = if reserve {
            ledger.reserve(b, id, usd)
        } else {
            ledger.check(b, usd)
        };
        match result {
            Ok(r) => r.map_err(|refusal| Refusal(refusal.to_string())),
            Err(e) => {
                // A ledger we cannot read cannot prove budget is left: stay local.
                log::warn!("{e}");
                Err(Refusal(format!("budget unknown: {e}")))
            }
        }
    }

    /// Why a remote answer is not a valid one for `req` (its tool calls, or its JSON format).
    fn remote_invalid(
        req: &ChatRequest,
        local: Option<&dyn LocalTier>,
        out: &RemoteOutput,
    ) -> Option<String> {
        if !crate::tools::offered(req).is_empty() {
            return match local {
                Some(l) => l.check_calls(req, &out.tool_calls),
                None => crate::tools::check(req, &out.tool_calls),
            }
            .err();
        }
        if matches!(req.response_format, ResponseFormat::Text) {
            return None;
        }
        match local {
            Some(l) => l.check_format(&req.response_format, &out.text),
            None => crate::engine::local::constraint::check_json(&req.response_format, &out.text),
        }
        .err()
    }

    /// Asks the remote tier. An answer whose tool calls or JSON are not valid is asked for
    /// once more where that is cheap: none of it reached the caller (no text was streamed, as
    /// with an answer that only calls tools) and the budget holds a second call. Both calls'
    /// usage counts. If the second call fails, the first answer stands (its fault is reported
    /// in `format_error`).
    #[allow(clippy::too_many_arguments)]
    fn remote_call(
        &self,
        req: &ChatRequest,
        sent: &ChatRequest,
        settle: &Settlement<'_>,
        routed: &Routed,
        local: Option<&dyn LocalTier>,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
    ) -> std::result::Result<RemoteOutput, RemoteError> {
        let id = &settle.id;
        let first = self.call_remote(sent, settle, routed, cancel, stream)?;
        let Some(why) = Self::remote_invalid(req, local, &first) else {
            return Ok(first);
        };
        let streamed = !first.text.is_empty();
        if streamed
            || first.finish_reason == FinishReason::Cancelled
            || cancel.load(Ordering::Relaxed)
            || self.reserve(settle, 2.0 * routed.worst_usd).is_err()
        {
            return Ok(first);
        }
        log::info!("request {id}: the remote answer is not valid ({why}); asking once more");
        match self.call_remote(sent, settle, routed, cancel, stream) {
            Ok(mut second) => {
                second.prompt_tokens += first.prompt_tokens;
                second.completion_tokens += first.completion_tokens;
                second.usage_estimated |= first.usage_estimated;
                second.total_ms += first.total_ms;
                second.attempts += first.attempts;
                Ok(second)
            }
            Err(e) => {
                log::warn!(
                    "request {id}: the second remote call failed ({e}); keeping the first answer"
                );
                Ok(first)
            }
        }
    }

    /// One call to the remote tier, its usage billed to the request: what the server reports,
    /// or, for a call that fails after text had arrived, an estimate from that text.
    fn call_remote(
        &self,
        sent: &ChatRequest,
        settle: &Settlement<'_>,
        routed: &Routed,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
    ) -> std::result::Result<RemoteOutput, RemoteError> {
        let remote = self
            .remote
            .as_ref()
            .expect("a remote call is planned only with a remote tier");
        let mut arrived = String::new();
        let result = remote.generate(sent, cancel, &mut |t| {
            arrived.push_str(t);
            stream.text(t, Tier::Remote);
        });
        match &result {
            Ok(out) => settle.bill(TokenUsage {
                prompt_tokens: out.prompt_tokens,
                completion_tokens: out.completion_tokens,
            }),
            Err(_) => settle.spent_on_failure(routed.prompt_tokens, &arrived),
        }
        result
    }

    /// Reserves `usd` of remote budget for the request (see [`Runtime::budget`]).
    fn reserve(&self, settle: &Settlement<'_>, usd: f64) -> Result<(), Refusal> {
        self.budget(&settle.id, usd, true)?;
        settle.reserved.set(true);
        Ok(())
    }

    /// The request as sent to the remote tier: `max_tokens` capped to what was reserved.
    fn remote_request<'r>(req: &'r ChatRequest, routed: &Routed) -> Cow<'r, ChatRequest> {
        if req.max_tokens <= routed.remote_max_tokens {
            Cow::Borrowed(req)
        } else {
            Cow::Owned(ChatRequest {
                max_tokens: routed.remote_max_tokens,
                ..req.clone()
            })
        }
    }

    /// The local tier alone.
    fn local_leg(
        req: &ChatRequest,
        local: &dyn LocalTier,
        routed: &Routed,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
    ) -> Result<Settled, Failed> {
        let reason = routed.decision.reason;
        if let Some((p, n)) = routed.overflow {
            let overflow = LocalError::ContextOverflow {
                prompt_tokens: p,
                n_ctx: n,
            };
            return Err(Failed::new(overflow, reason));
        }
        let out = local
            .generate(req, cancel, &mut |t| {
                stream.text(t.text, Tier::Local);
                ControlFlow::Continue(())
            })
            .map_err(|e| Failed::new(e, reason))?;
        Ok(Settled {
            route: Route::Local,
            reason,
            detail: routed.decision.detail.clone(),
            remote_error: None,
            work: Work {
                local: Some(out),
                ..Work::default()
            },
        })
    }

    /// The remote tier alone: forced, a rule, a prompt too long for the local context, or no
    /// local model. There is no local answer to fall back on, so an unavailable tier or a
    /// refused budget is an error.
    fn remote_leg(
        &self,
        req: &ChatRequest,
        routed: &Routed,
        settle: &Settlement<'_>,
        local: Option<&dyn LocalTier>,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
    ) -> Result<Settled, Failed> {
        let reason = routed.decision.reason;
        let Some(remote) = &self.remote else {
            return Err(Failed::new(
                Error::InvalidRequest(
                    "no local model is loaded and no remote tier is configured".into(),
                ),
                reason,
            ));
        };
        if routed.device.network == Network::None {
            return Err(Failed::new(Error::Offline, reason));
        }
        remote
            .check_available()
            .map_err(|e| Failed::new(e, reason))?;
        if let Err(Refusal(why)) = self.reserve(settle, routed.worst_usd) {
            return Err(Failed::new(Error::BudgetExhausted(why), reason));
        }
        let sent = Self::remote_request(req, routed);
        match self.remote_call(req, &sent, settle, routed, local, cancel, stream) {
            Ok(out) => Ok(Settled {
                route: Route::Remote,
                reason,
                detail: routed.decision.detail.clone(),
                remote_error: None,
                work: Work {
                    remote: Some(out),
                    ..Work::default()
                },
            }),
            Err(e) => Err(Failed::new(e, reason)),
        }
    }

    /// Local first; escalate after the answer (low confidence) or during it (mid-stream), and
    /// fall back to the local answer, finished if it was cut, when the remote tier fails.
    fn cascade(
        &self,
        req: &ChatRequest,
        local: &dyn LocalTier,
        routed: &Routed,
        settlement: &Settlement<'_>,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
    ) -> Result<Settled, Failed> {
        if req.hold_draft {
            stream.hold();
        }
        let mut signals: Vec<TokenSignal> = Vec::new();
        let mut mid: Option<String> = None;
        let policy = self.policy();
        // With the probe: the hidden states, and (with its pre-generation threshold) a gate
        // that sends the request remote before any local token is decoded.
        let mut predicted: Option<String> = None;
        let mut gate = |h: &[f32], prompt_tokens: u32| {
            predicted = policy.pre_gate(
                &req.messages,
                req.task_hint,
                req.task.as_deref(),
                prompt_tokens,
                h,
            );
            predicted.is_some()
        };
        let opts = GenerateOptions {
            hidden: policy.wants_hidden(),
            gate: policy
                .pre_router()
                .is_some()
                .then_some(&mut gate as crate::engine::local::Gate<'_>),
        };
        let generated = local.generate_with(req, opts, cancel, &mut |t| {
            stream.text(t.text, Tier::Local);
            signals.push(t.signal);
            mid = policy.mid_stream(&signals);
            if mid.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let draft = match generated {
            Ok(draft) => draft,
            Err(e) if rescuable(&e) && self.remote.is_some() && !cancel.load(Ordering::Relaxed) => {
                return self.rescue(req, routed, settlement, cancel, stream, e);
            }
            Err(e) => return Err(Failed::new(e, Reason::Rule)),
        };
        let settle = |route, reason, detail: String, work| Settled {
            route,
            reason,
            detail,
            remote_error: None,
            work,
        };
        let with_draft = |draft| Work {
            local: Some(draft),
            ..Work::default()
        };
        if cancel.load(Ordering::Relaxed) {
            stream.release();
            let detail = "cancelled during the local answer".into();
            return Ok(settle(
                Route::Local,
                Reason::Cancelled,
                detail,
                with_draft(draft),
            ));
        }
        // A gated request has an empty draft: if the escalation fails, the local model answers
        // in full (the continuation of nothing).
        let gated = draft.gated.then(|| predicted.take()).flatten();
        let cut_short = mid.is_some() || draft.gated;
        // A structured answer the token budget closed early parses, but its last value was cut.
        let budget = || format!("cut short by max_tokens ({})", req.max_tokens);
        let at_budget = draft.finish_reason == FinishReason::Length;
        let malformed = if draft.gated {
            None
        } else if stream.tools {
            let parsed = crate::tools::parse(&draft.text, &settlement.id);
            match parsed.error {
                Some(e) => Some(e),
                None if at_budget && !parsed.calls.is_empty() => Some(budget()),
                None => local.check_calls(req, &parsed.calls).err(),
            }
        } else if matches!(req.response_format, ResponseFormat::Text) {
            None
        } else if at_budget {
            Some(budget())
        } else {
            local.check_format(&req.response_format, &draft.text).err()
        };
        let verdict = if let Some(g) = gated {
            Verdict::Escalate(Reason::PredictedLowGain, g)
        } else if let Some(m) = mid {
            Verdict::Escalate(Reason::MidStreamLowConfidence, m)
        } else if let Some(why) = malformed {
            let what = if stream.tools {
                "the local tool call is not valid"
            } else {
                "the local answer does not match the response format"
            };
            Verdict::Escalate(Reason::InvalidOutput, format!("{what}: {why}"))
        } else {
            let shift = policy::Shift::of(&routed.device, &self.config.device);
            let evidence = policy::Evidence {
                messages: &req.messages,
                hint: req.task_hint,
                prompt_tokens: draft.prompt_tokens,
                signals: &draft.signals,
                text: &draft.text,
                finish: draft.finish_reason,
                hidden: draft.hidden.as_ref(),
                task: req.task.as_deref(),
            };
            // Under a grammar the answer is valid by construction; what tells is whether the
            // grammar had to force tokens the model did not want.
            if crate::tools::constrained(req) {
                policy.decide_structured(&evidence, &shift)
            } else {
                policy.decide(&evidence, &shift)
            }
        };
        let (reason, detail) = match verdict {
            Verdict::Escalate(reason, detail) => (reason, detail),
            Verdict::Accept(reason, detail) => {
                stream.release();
                return Ok(settle(Route::Local, reason, detail, with_draft(draft)));
            }
        };
        let escalation = Escalation {
            reason,
            detail,
            cut_short,
        };

        stream.sink.on_event(Event::Escalating { reason });
        if req.hold_draft {
            stream.hold_remote();
        }
        let sent = Self::remote_request(req, routed);
        let mut work = with_draft(draft);
        let fallback = match self.reserve(settlement, routed.worst_usd) {
            Err(Refusal(why)) => Fallback::Refused(why),
            Ok(()) => {
                match self.remote_call(req, &sent, settlement, routed, Some(local), cancel, stream)
                {
                    Ok(out) => {
                        stream.discard();
                        work.remote = Some(out);
                        let Escalation { reason, detail, .. } = escalation;
                        return Ok(settle(Route::Escalated, reason, detail, work));
                    }
                    Err(e) => Fallback::RemoteFailed(e.to_string()),
                }
            }
        };
        Self::fall_back(req, local, cancel, stream, work, &escalation, fallback)
    }

    /// The local model failed while it answered and a remote tier may take the request: the
    /// cascade escalates rather than fail it (there is no draft to fall back on, so a failed
    /// escalation fails the request with the local error).
    fn rescue(
        &self,
        req: &ChatRequest,
        routed: &Routed,
        settlement: &Settlement<'_>,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
        error: LocalError,
    ) -> Result<Settled, Failed> {
        let reason = Reason::LocalFailed;
        let detail = format!("the local model failed: {error}");
        log::warn!("request {}: {detail}; escalating", settlement.id);
        stream.sink.on_event(Event::Escalating { reason });
        if req.hold_draft {
            stream.hold_remote();
        }
        let failed = |why: String| {
            log::warn!("request {}: the rescue failed too: {why}", settlement.id);
            stream.fall_back(&why);
            Err(Failed::new(error.clone(), reason))
        };
        if let Err(Refusal(why)) = self.reserve(settlement, routed.worst_usd) {
            return failed(why);
        }
        let sent = Self::remote_request(req, routed);
        match self.remote_call(req, &sent, settlement, routed, None, cancel, stream) {
            Ok(out) => {
                stream.discard();
                Ok(Settled {
                    route: Route::Escalated,
                    reason,
                    detail,
                    remote_error: None,
                    work: Work {
                        remote: Some(out),
                        ..Work::default()
                    },
                })
            }
            Err(e) => failed(e.to_string()),
        }
    }

    /// After a failed or refused escalation: the local answer, finished from the KV cache if
    /// the draft was cut mid-stream. Never lose an answer.
    fn fall_back(
        req: &ChatRequest,
        local: &dyn LocalTier,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
        mut work: Work,
        escalation: &Escalation,
        fallback: Fallback,
    ) -> Result<Settled, Failed> {
        let Escalation {
            reason,
            ref detail,
            cut_short,
        } = *escalation;
        let why = match &fallback {
            Fallback::RemoteFailed(e) => format!("remote failed: {e}"),
            Fallback::Refused(why) => format!("the remote budget refused the escalation: {why}"),
        };
        stream.fall_back(&why);
        let mut detail = format!("{detail}; {why}");
        let draft = work.local.as_ref().expect("the draft is kept");
        if cut_short && !cancel.load(Ordering::Relaxed) && draft.completion_tokens < req.max_tokens
        {
            // The continuation gets what is left of the token budget, not a fresh one.
            let rest = ChatRequest {
                max_tokens: req.max_tokens - draft.completion_tokens,
                ..req.clone()
            };
            let more = local.continue_answer(&rest, &draft.text, cancel, &mut |t| {
                stream.text(t.text, Tier::Local);
                ControlFlow::Continue(())
            });
            match more {
                Ok(more) => work.local_extra = Some(more),
                // The cut draft is still an answer: keep it rather than lose everything (an
                // empty one, from a gated request, is none).
                Err(e) if !draft.text.is_empty() => {
                    log::warn!("finishing the cut draft failed ({e}); keeping the draft");
                    detail = format!("{detail}; finishing the cut draft failed: {e}");
                }
                Err(e) => return Err(Failed::new(e, reason)),
            }
        }
        stream.release();
        Ok(match fallback {
            Fallback::RemoteFailed(e) => Settled {
                route: Route::DegradedLocal,
                reason,
                detail,
                remote_error: Some(e),
                work,
            },
            Fallback::Refused(_) => Settled {
                route: Route::Local,
                reason: Reason::BudgetExhausted,
                detail,
                remote_error: None,
                work,
            },
        })
    }

    /// A request with tools: a local answer's calls are read out of its text; every answer's
    /// calls are checked against the tools (a bad one is reported in `format_error`, never
    /// passed off as valid); calls make the finish reason `tool_calls`.
    fn settle_calls(req: &ChatRequest, local: Option<&dyn LocalTier>, response: &mut Response) {
        if !matches!(response.route, Route::Remote | Route::Escalated) {
            let parsed = crate::tools::parse(&response.text, &response.id);
            response.text = parsed.content;
            response.tool_calls = parsed.calls;
            response.format_error = parsed.error;
        }
        if response.finish_reason == FinishReason::Cancelled {
            return;
        }
        if response.format_error.is_none() {
            let check = match local {
                Some(l) => l.check_calls(req, &response.tool_calls),
                None => crate::tools::check(req, &response.tool_calls),
            };
            response.format_error = check.err();
        }
        if let Some(why) = &response.format_error {
            log::warn!(
                "request {}: the tool calls are not valid: {why}",
                response.id
            );
        }
        if !response.tool_calls.is_empty() && response.finish_reason == FinishReason::Stop {
            response.finish_reason = FinishReason::ToolCalls;
        }
    }

    fn respond(&self, id: &str, settled: Settled, t0: Instant, ttft: Option<f64>) -> Response {
        let p = &self.config.prices;
        let Settled {
            route,
            reason,
            detail,
            remote_error,
            work,
        } = settled;
        let w = &work;
        let local_text = match (&w.local, &w.local_extra) {
            (Some(a), Some(b)) => format!("{}{}", a.text, b.text),
            (Some(a), None) => a.text.clone(),
            _ => String::new(),
        };
        let local_usage = w.local.as_ref().map(|l| TokenUsage {
            prompt_tokens: l.prompt_tokens,
            completion_tokens: l.completion_tokens
                + w.local_extra.as_ref().map_or(0, |e| e.completion_tokens),
        });
        let answer_usage = w.remote.as_ref().map(|r| TokenUsage {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        });
        // What the remote tier billed: the answer's call and any that failed after text had
        // arrived.
        let remote_usage = match (answer_usage, w.remote_spent) {
            (a, None) => a,
            (a, Some(spent)) => Some(add_usage(a, spent)),
        };
        let answered_remotely = matches!(route, Route::Remote | Route::Escalated);
        let remote_answer = w.remote.as_ref().filter(|_| answered_remotely);
        let tool_calls = remote_answer.map_or_else(Vec::new, |r| r.tool_calls.clone());
        let (text, finish_reason) = if let Some(r) = remote_answer {
            (r.text.clone(), r.finish_reason)
        } else {
            let finish = w
                .local_extra
                .as_ref()
                .or(w.local.as_ref())
                .map_or(FinishReason::Stop, |l| l.finish_reason);
            // A draft cut for escalation is not "cancelled" from the caller's point of view.
            let cut = finish == FinishReason::Cancelled
                && w.local_extra.is_none()
                && reason == Reason::MidStreamLowConfidence;
            (local_text, if cut { FinishReason::Length } else { finish })
        };
        let local_seconds = w.local.as_ref().map_or(0.0, |l| l.total_ms)
            + w.local_extra.as_ref().map_or(0.0, |l| l.total_ms);
        let local_usd = local_usage.map_or(0.0, |u| {
            cost::local_usd(
                p,
                u.prompt_tokens + u.completion_tokens,
                local_seconds / 1e3,
            )
        });
        let remote_usd = remote_usage.map_or(0.0, |u| {
            cost::remote_usd(p, u.prompt_tokens, u.completion_tokens)
        });
        // All-remote: the remote answer's own cost, else the local answer's tokens at remote
        // prices (never a failed call's partial usage).
        let all_remote_usd = match (answer_usage, local_usage, remote_usage) {
            (Some(r), _, _) | (None, None, Some(r)) => {
                cost::remote_usd(p, r.prompt_tokens, r.completion_tokens)
            }
            (None, Some(l), _) => cost::remote_usd(p, l.prompt_tokens, l.completion_tokens),
            (None, None, None) => 0.0,
        };
        let total_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (prefill_tok_s, decode_tok_s) = rates(remote_answer, w.local.as_ref());
        let sum = |f: fn(&TokenUsage) -> u32| {
            local_usage.as_ref().map_or(0, f) + remote_usage.as_ref().map_or(0, f)
        };
        Response {
            text,
            route,
            reason,
            reason_detail: detail,
            remote_error,
            finish_reason,
            usage: Usage {
                prompt_tokens: sum(|u| u.prompt_tokens),
                completion_tokens: sum(|u| u.completion_tokens),
                local: local_usage,
                remote: remote_usage,
                estimated: w.remote.as_ref().is_some_and(|r| r.usage_estimated)
                    || w.remote_spent.is_some(),
                prompt_tokens_evaluated: w.local.as_ref().map_or(0, |l| l.prompt_tokens_evaluated),
            },
            timings: Timings {
                load_ms: 0.0,
                ttft_ms: ttft.unwrap_or(total_ms),
                prefill_tok_s,
                decode_tok_s,
                total_ms,
            },
            confidence: w
                .local
                .as_ref()
                .map(|_| confidence::summarize(&w.signals())),
            cost: Cost {
                local_usd,
                remote_usd,
                total_usd: local_usd + remote_usd,
                all_remote_usd,
            },
            truncated_messages: w.local.as_ref().map_or(0, |l| l.truncated_messages),
            id: id.to_owned(),
            ledger_error: None,
            format_error: None,
            tool_calls,
        }
    }

    fn record(&self, r: &Response, req: &ChatRequest) -> CostRecord {
        let pair =
            |u: Option<TokenUsage>| u.map_or([0, 0], |u| [u.prompt_tokens, u.completion_tokens]);
        let store = self.config.ledger.store_prompts;
        CostRecord {
            id: r.id.clone(),
            ts: cost::now_s(),
            route: r.route.into(),
            reason: r.reason,
            local_tokens: pair(r.usage.local),
            remote_tokens: pair(r.usage.remote),
            local_usd: r.cost.local_usd,
            remote_usd: r.cost.remote_usd,
            all_remote_usd: r.cost.all_remote_usd,
            ttft_ms: r.timings.ttft_ms,
            total_ms: r.timings.total_ms,
            prompt: store.then(|| {
                req.messages
                    .last()
                    .map(|m| m.content.clone())
                    .unwrap_or_default()
            }),
            answer: store.then(|| r.text.clone()),
            error: None,
        }
    }
}

fn add_usage(a: Option<TokenUsage>, b: TokenUsage) -> TokenUsage {
    let a = a.unwrap_or_default();
    TokenUsage {
        prompt_tokens: a.prompt_tokens + b.prompt_tokens,
        completion_tokens: a.completion_tokens + b.completion_tokens,
    }
}

/// Whether a local failure is one the remote tier can stand in for: the model broke while
/// answering (decode, context, backend), not the request itself.
fn rescuable(e: &LocalError) -> bool {
    matches!(
        e,
        LocalError::Decode { .. }
            | LocalError::Context { .. }
            | LocalError::Backend(_)
            | LocalError::Template(_)
    )
}

/// Prefill and decode rates (tokens per second) of the tier that answered.
fn rates(remote_answer: Option<&RemoteOutput>, local: Option<&LocalOutput>) -> (f64, f64) {
    match (remote_answer, local) {
        (Some(r), _) => {
            let gen_ms = r.total_ms - r.ttft_ms;
            (0.0, per_second(r.completion_tokens, gen_ms))
        }
        (None, Some(l)) => (
            if l.prefill_ms > 0.0 {
                f64::from(l.prompt_tokens_evaluated) / (l.prefill_ms / 1e3)
            } else {
                0.0
            },
            per_second(l.completion_tokens, l.decode_ms),
        ),
        _ => (0.0, 0.0),
    }
}

fn per_second(tokens: u32, ms: f64) -> f64 {
    if tokens > 1 && ms > 0.0 {
        f64::from(tokens - 1) / (ms / 1e3)
    } else {
        0.0
    }
}

/// Sends the terminal event for `result` and returns it. A sink that panics on `Done` turns
/// the result into an `Internal` error; a panic on `Failed` is swallowed (the error stands).
fn deliver(sink: &dyn EventSink, result: Result<Response>) -> Result<Response> {
    let event = match &result {
        Ok(r) => Event::Done(Box::new(r.clone())),
        Err(e) => Event::Failed(e.clone()),
    };
    match catch_unwind(AssertUnwindSafe(|| sink.on_event(event))) {
        Ok(()) => result,
        Err(panic) => result.and_then(|_| {
            Err(Error::Internal(format!(
                "the event sink panicked on Done: {}",
                panic_text(&*panic)
            )))
        }),
    }
}
