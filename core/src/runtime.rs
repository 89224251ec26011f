//! The runtime: one entry point for apps. It owns the engines, routes each request, runs the
//! cascade, records the cost, and returns a [`Response`] with route, usage, timings, confidence
//! and cost.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::config::{Config, ContextPolicy};
use crate::cost::{self, CostRecord, Ledger};
use crate::engine::local::{confidence, LocalEngine, LocalOutput, ModelInfo, TokenSignal};
use crate::engine::remote::{RemoteEngine, RemoteOutput};
use crate::error::{ConfigError, Error, LocalError, Result};
use crate::policy::{self, Cascade, Plan, RouteInput};
use crate::types::{
    ChatRequest, Cost, Event, EventSink, FinishReason, PolicyOverride, Response, Route, Tier,
    Timings, TokenUsage, Usage,
};

/// The runtime. `Send + Sync`: share it across threads (for example in an `Arc`).
pub struct Runtime {
    config: Config,
    local: LocalEngine,
    remote: Option<RemoteEngine>,
    cascade: Cascade,
    ledger: Option<Ledger>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// The router's decision, the local overflow (prompt and context tokens) if any, and the
/// request's worst-case remote cost in USD.
type Routed = (policy::Decision, Option<(u32, u32)>, f64);

/// Largest completion assumed when reserving budget for a request without `max_tokens`.
const WORST_CASE_COMPLETION: u32 = 4096;

/// What one request has produced so far, per tier.
#[derive(Default)]
struct Work {
    local: Option<LocalOutput>,
    /// Local tokens generated before a continuation (the cut draft).
    local_extra: Option<LocalOutput>,
    remote: Option<RemoteOutput>,
    first_token: Option<f64>,
}

impl Runtime {
    /// Validates the config, loads the local model and prepares the remote tier.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_progress(config, None)
    }

    /// Like [`Runtime::new`], reporting model-load progress (0.0 to 1.0).
    pub fn with_progress(
        config: Config,
        progress: Option<Box<dyn FnMut(f32) + Send>>,
    ) -> Result<Self> {
        config.validate()?;
        let cascade = Cascade::new(&config.cascade).map_err(ConfigError::Invalid)?;
        let remote = config.remote.as_ref().map(RemoteEngine::new).transpose()?;
        let local = LocalEngine::load(&config.local, progress)?;
        let ledger = config.ledger.path.clone().map(Ledger::new);
        Ok(Self {
            config,
            local,
            remote,
            cascade,
            ledger,
            next_id: AtomicU64::new(0),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The local model.
    pub fn local_model(&self) -> &ModelInfo {
        self.local.info()
    }

    /// The local engine, for benchmarks and tools.
    pub fn local_engine(&self) -> &LocalEngine {
        &self.local
    }

    /// The remote engine, if configured.
    pub fn remote_engine(&self) -> Option<&RemoteEngine> {
        self.remote.as_ref()
    }

    /// The ledger, if configured.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// Answers `req`, streaming events to `sink`. Blocking: call it from a worker thread.
    pub fn chat(&self, req: &ChatRequest, sink: &dyn EventSink) -> Result<Response> {
        self.chat_cancellable(req, sink, &AtomicBool::new(false))
    }

    /// Like [`Runtime::chat`], stopping within one token once `cancel` is set.
    pub fn chat_cancellable(
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
        let t0 = Instant::now();
        let id = format!(
            "{:x}-{:x}-{}",
            (cost::now_s() * 1e3) as u64,
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );

        let (decision, overflow, worst) = self.decide(req, &id)?;
        log::debug!("request {id}: {:?} ({})", decision.plan, decision.detail);

        let work = Mutex::new(Work::default());
        let emit = |text: &str, tier: Tier| {
            if !text.is_empty() {
                if let Ok(mut w) = work.lock() {
                    w.first_token
                        .get_or_insert(t0.elapsed().as_secs_f64() * 1e3);
                }
                sink.on_event(Event::Token {
                    text: text.to_owned(),
                    tier,
                });
            }
        };

        let (route, reason, detail) = match decision.plan {
            Plan::Local => {
                if let Some((p, n)) = overflow {
                    return Err(LocalError::ContextOverflow {
                        prompt_tokens: p,
                        n_ctx: n,
                    }
                    .into());
                }
                let out = self.local.generate(req, cancel, &mut |t| {
                    emit(t.text, Tier::Local);
                    ControlFlow::Continue(())
                })?;
                work.lock().expect("work").local = Some(out);
                (Route::Local, decision.reason.to_owned(), decision.detail)
            }
            Plan::Remote => {
                let remote = self.remote.as_ref().expect("remote configured");
                if let Err(why) = self.budget_check(&id, worst, false) {
                    return Err(Error::InvalidRequest(format!("remote budget: {why}")));
                }
                let out = remote.generate(req, cancel, &mut |t| emit(t, Tier::Remote))?;
                work.lock().expect("work").remote = Some(out);
                (Route::Remote, decision.reason.to_owned(), decision.detail)
            }
            Plan::Cascade => self.cascade(req, &id, worst, cancel, sink, &emit, &work)?,
        };

        let work = work.into_inner().expect("work");
        let mut response = self.respond(&id, route, reason, detail, work, t0);
        if let Some(ledger) = &self.ledger {
            if let Err(e) = ledger.record(&self.record(&response, req)) {
                log::warn!("answer produced, but its cost record was not written: {e}");
                response.ledger_error = Some(e.to_string());
            }
        }
        sink.on_event(Event::Done(Box::new(response.clone())));
        Ok(response)
    }

    /// Gathers what the router needs and asks it: the decision, the local overflow (prompt and
    /// context tokens) if any, and the worst-case remote cost of the request.
    fn decide(&self, req: &ChatRequest, id: &str) -> Result<Routed> {
        let prompt_tokens = self.local.count_prompt_tokens(&req.messages)?;
        let n_ctx = self.local.n_ctx();
        let overflow = (prompt_tokens >= n_ctx
            && self.config.local.context_policy == ContextPolicy::Error)
            .then_some((prompt_tokens, n_ctx));
        let unavailable = self
            .remote
            .as_ref()
            .and_then(|r| r.check_available().err())
            .map(|e| e.to_string());
        let worst = cost::remote_usd(
            &self.config.prices,
            prompt_tokens,
            req.max_tokens.min(WORST_CASE_COMPLETION),
        );
        let refusal =
            if self.remote.is_some() && !req.private && req.policy != PolicyOverride::ForceLocal {
                self.budget_check(id, worst, true).err()
            } else {
                None
            };
        let decision = policy::route(&RouteInput {
            policy: req.policy,
            private: req.private,
            remote_configured: self.remote.is_some(),
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
        Ok((decision, overflow, worst))
    }

    /// Reserves (or, with `dry_run`, only checks) `usd` of remote budget for request `id`.
    /// The outer error is the ledger failing; the inner one is a refusal, in prose.
    fn budget_check(&self, id: &str, usd: f64, dry_run: bool) -> std::result::Result<(), String> {
        let b = &self.config.budget;
        if b.per_request_usd.is_none() && b.daily_usd.is_none() && b.monthly_usd.is_none() {
            return Ok(());
        }
        let Some(ledger) = &self.ledger else {
            // Without a ledger only the per-request cap can be enforced.
            return match b.per_request_usd {
                Some(limit) if usd > limit => Err(format!(
                    "per_request remote budget of ${limit:.4} is below the worst case ${usd:.4}"
                )),
                _ => Ok(()),
            };
        };
        let result = if dry_run {
            ledger.check(b, usd)
        } else {
            ledger.reserve(b, id, usd)
        };
        match result {
            Ok(r) => r.map_err(|refusal| refusal.to_string()),
            Err(e) => {
                // A ledger we cannot read cannot prove budget is left: stay local.
                log::warn!("{e}");
                Err(format!("budget unknown: {e}"))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn cascade(
        &self,
        req: &ChatRequest,
        id: &str,
        worst: f64,
        cancel: &AtomicBool,
        sink: &dyn EventSink,
        emit: &dyn Fn(&str, Tier),
        work: &Mutex<Work>,
    ) -> Result<(Route, String, String)> {
        let mut signals: Vec<TokenSignal> = Vec::new();
        let mut mid: Option<String> = None;
        let local = self.local.generate(req, cancel, &mut |t| {
            emit(t.text, Tier::Local);
            signals.push(t.signal);
            mid = self.cascade.mid_stream(&signals);
            if mid.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let cut_short = mid.is_some();
        let escalation = if cancel.load(Ordering::Relaxed) {
            None
        } else if let Some(m) = mid {
            Some(("mid_stream_low_confidence", m))
        } else {
            self.cascade
                .after(&policy::Evidence {
                    messages: &req.messages,
                    hint: req.task_hint,
                    prompt_tokens: local.prompt_tokens,
                    signals: &local.signals,
                    text: &local.text,
                    finish: local.finish_reason,
                })
                .map(|d| ("low_confidence", d))
        };
        let draft = local.text.clone();
        let draft_tokens = local.completion_tokens;
        work.lock().expect("work").local = Some(local);
        let Some((reason, detail)) = escalation else {
            return Ok((
                Route::Local,
                "accepted".into(),
                "local confidence is above the threshold".into(),
            ));
        };

        // Escalate: reserve the worst case, then ask the remote tier with the original messages.
        sink.on_event(Event::Escalating {
            reason: reason.to_owned(),
        });
        let remote = self.remote.as_ref().expect("cascade implies a remote tier");
        let result = match self.budget_check(id, worst, false) {
            Err(why) => Err(format!("budget_exhausted: {why}")),
            Ok(()) => remote
                .generate(req, cancel, &mut |t| emit(t, Tier::Remote))
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(out) => {
                work.lock().expect("work").remote = Some(out);
                Ok((
                    Route::Escalated {
                        reason: reason.into(),
                    },
                    reason.into(),
                    detail,
                ))
            }
            Err(remote_error) => {
                // Never lose an answer: finish a cut draft locally, from the KV cache.
                if cut_short && !cancel.load(Ordering::Relaxed) && draft_tokens < req.max_tokens {
                    // The continuation gets what is left of the token budget, not a fresh one.
                    let rest = ChatRequest {
                        max_tokens: req.max_tokens - draft_tokens,
                        ..req.clone()
                    };
                    let more = self
                        .local
                        .continue_answer(&rest, &draft, cancel, &mut |t| {
                            emit(t.text, Tier::Local);
                            ControlFlow::Continue(())
                        })?;
                    work.lock().expect("work").local_extra = Some(more);
                }
                if let Some(why) = remote_error.strip_prefix("budget_exhausted: ") {
                    return Ok((Route::Local, "budget_exhausted".into(), why.to_owned()));
                }
                Ok((
                    Route::DegradedLocal {
                        remote_error: remote_error.clone(),
                    },
                    reason.into(),
                    format!("{detail}; remote failed: {remote_error}"),
                ))
            }
        }
    }

    #[allow(clippy::too_many_lines, clippy::needless_pass_by_value)]
    fn respond(
        &self,
        id: &str,
        route: Route,
        reason: String,
        reason_detail: String,
        w: Work,
        t0: Instant,
    ) -> Response {
        let p = &self.config.prices;
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
        let remote_usage = w.remote.as_ref().map(|r| TokenUsage {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        });
        let answered_remotely = matches!(route, Route::Remote | Route::Escalated { .. });
        let remote_answer = w.remote.as_ref().filter(|_| answered_remotely);
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
                && matches!(route, Route::DegradedLocal { .. });
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
        let all_remote_usd = match (remote_usage, local_usage) {
            (Some(r), _) => cost::remote_usd(p, r.prompt_tokens, r.completion_tokens),
            (None, Some(l)) => cost::remote_usd(p, l.prompt_tokens, l.completion_tokens),
            (None, None) => 0.0,
        };
        let total_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (prefill_tok_s, decode_tok_s) = match (&w.remote, answered_remotely, &w.local) {
            (Some(r), true, _) => {
                let gen_ms = r.total_ms - r.ttft_ms;
                (
                    0.0,
                    if r.completion_tokens > 1 && gen_ms > 0.0 {
                        f64::from(r.completion_tokens - 1) / (gen_ms / 1e3)
                    } else {
                        0.0
                    },
                )
            }
            (_, _, Some(l)) => (
                if l.prefill_ms > 0.0 {
                    f64::from(l.prompt_tokens_evaluated) / (l.prefill_ms / 1e3)
                } else {
                    0.0
                },
                if l.completion_tokens > 1 && l.decode_ms > 0.0 {
                    f64::from(l.completion_tokens - 1) / (l.decode_ms / 1e3)
                } else {
                    0.0
                },
            ),
            _ => (0.0, 0.0),
        };
        let mut signals = w
            .local
            .as_ref()
            .map(|l| l.signals.clone())
            .unwrap_or_default();
        if let Some(e) = &w.local_extra {
            signals.extend_from_slice(&e.signals);
        }
        let sum = |f: fn(&TokenUsage) -> u32| {
            local_usage.as_ref().map_or(0, f) + remote_usage.as_ref().map_or(0, f)
        };
        Response {
            text,
            route,
            reason,
            reason_detail,
            finish_reason,
            usage: Usage {
                prompt_tokens: sum(|u| u.prompt_tokens),
                completion_tokens: sum(|u| u.completion_tokens),
                local: local_usage,
                remote: remote_usage,
                estimated: w.remote.as_ref().is_some_and(|r| r.usage_estimated),
                prompt_tokens_evaluated: w.local.as_ref().map_or(0, |l| l.prompt_tokens_evaluated),
            },
            timings: Timings {
                load_ms: 0.0,
                ttft_ms: w.first_token.unwrap_or(total_ms),
                prefill_tok_s,
                decode_tok_s,
                total_ms,
            },
            confidence: w.local.as_ref().map(|_| confidence::summarize(&signals)),
            cost: Cost {
                local_usd,
                remote_usd,
                total_usd: local_usd + remote_usd,
                all_remote_usd,
            },
            truncated_messages: w.local.as_ref().map_or(0, |l| l.truncated_messages),
            id: id.to_owned(),
            ledger_error: None,
        }
    }

    fn record(&self, r: &Response, req: &ChatRequest) -> CostRecord {
        let pair =
            |u: Option<TokenUsage>| u.map_or([0, 0], |u| [u.prompt_tokens, u.completion_tokens]);
        let store = self.config.ledger.store_prompts;
        CostRecord {
            id: r.id.clone(),
            ts: cost::now_s(),
            route: r.route.name().to_owned(),
            reason: r.reason.clone(),
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
        }
    }

    /// Starts `req` on a new thread; events go to `sink`. The handle cancels on `cancel()` or drop.
    pub fn start_chat(
        self: &Arc<Self>,
        req: ChatRequest,
        sink: Box<dyn EventSink>,
    ) -> GenerationHandle {
        let cancel = Arc::new(AtomicBool::new(false));
        let rt = Arc::clone(self);
        let flag = Arc::clone(&cancel);
        let thread = std::thread::Builder::new()
            .name("edgecascade-chat".into())
            .spawn(move || rt.chat_cancellable(&req, &*sink, &flag))
            .expect("spawn generation thread");
        GenerationHandle {
            cancel,
            thread: Some(thread),
        }
    }
}

/// A running request. `cancel()` stops it within one token; dropping the handle cancels too.
pub struct GenerationHandle {
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Response>>>,
}

impl GenerationHandle {
    /// Asks the request to stop; it finishes with `FinishReason::Cancelled`.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits for the request and returns its result.
    pub fn wait(mut self) -> Result<Response> {
        let thread = self.thread.take().expect("thread present until waited");
        thread
            .join()
            .unwrap_or_else(|_| Err(Error::InvalidRequest("generation thread panicked".into())))
    }
}

impl Drop for GenerationHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.cancel();
        }
    }
}
