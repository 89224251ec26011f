//! Settling a request: what its legs produced, the priced response, the record, the last event.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use crate::cost::{self, CostRecord};
use crate::engine::local::{confidence, LocalOutput, TokenSignal};
use crate::engine::remote::RemoteOutput;
use crate::error::{Error, Result};
use crate::panics::panic_text;
use crate::types::{
    ChatRequest, Cost, Event, EventSink, FinishReason, Reason, Response, Route, Timings,
    TokenUsage, Usage,
};

use super::{LocalTier, Runtime};

/// What one request produced, per tier.
#[derive(Default)]
pub(super) struct Work {
    pub(super) local: Option<LocalOutput>,
    /// Local tokens generated after a failed escalation, continuing the cut draft.
    pub(super) local_extra: Option<LocalOutput>,
    pub(super) remote: Option<RemoteOutput>,
    /// Remote usage of calls that did not give the answer (failed after text had streamed),
    /// estimated from what arrived: billed, and counted against the budget.
    pub(super) remote_spent: Option<TokenUsage>,
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
pub(super) struct Settled {
    pub(super) route: Route,
    pub(super) reason: Reason,
    pub(super) detail: String,
    pub(super) remote_error: Option<String>,
    pub(super) work: Work,
}

/// A leg that failed.
pub(super) struct Failed {
    pub(super) error: Box<Error>,
    pub(super) reason: Reason,
}

impl Failed {
    pub(super) fn new(error: impl Into<Error>, reason: Reason) -> Self {
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
pub(super) struct Settlement<'a> {
    pub(super) rt: &'a Runtime,
    pub(super) req: &'a ChatRequest,
    pub(super) id: String,
    pub(super) t0: Instant,
    /// Budget was reserved for this request: a record must settle it.
    pub(super) reserved: Cell<bool>,
    /// Remote usage of calls that did not give the answer (see [`Work::remote_spent`]).
    pub(super) spent: Cell<Option<TokenUsage>>,
    /// Remote usage of every call so far, the answer's included: what a record written after
    /// a panic bills.
    pub(super) billed: Cell<Option<TokenUsage>>,
    /// The record was written (or its write attempted).
    pub(super) recorded: Cell<bool>,
}

impl Settlement<'_> {
    /// Adds a remote call's usage to what was billed.
    pub(super) fn bill(&self, usage: TokenUsage) {
        self.billed.set(Some(add_usage(self.billed.get(), usage)));
    }

    /// Adds the estimated usage of a remote call that failed after `text` had arrived (the
    /// server generated it, so it bills it).
    pub(super) fn spent_on_failure(&self, prompt_tokens: u32, text: &str) {
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
    pub(super) fn record_answer(&self, response: &mut Response) {
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
    pub(super) fn record_failure(&self, reason: Reason, kind: crate::error::ErrorKind) {
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

impl Runtime {
    /// A request with tools: a local answer's calls are read out of its text; every answer's
    /// calls are checked against the tools (a bad one is reported in `format_error`, never
    /// passed off as valid); calls make the finish reason `tool_calls`.
    pub(super) fn settle_calls(
        req: &ChatRequest,
        local: Option<&dyn LocalTier>,
        response: &mut Response,
    ) {
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

    pub(super) fn respond(
        &self,
        id: &str,
        settled: Settled,
        t0: Instant,
        ttft: Option<f64>,
    ) -> Response {
        let Settled {
            route,
            reason,
            detail,
            remote_error,
            work,
        } = settled;
        let w = &work;
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
        let (text, finish_reason) = answer_text(w, remote_answer, reason);
        let cost = self.price(w, local_usage, answer_usage, remote_usage);
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
            cost,
            truncated_messages: w.local.as_ref().map_or(0, |l| l.truncated_messages),
            id: id.to_owned(),
            ledger_error: None,
            format_error: None,
            tool_calls,
        }
    }

    /// What the request cost on each tier, and what it would have cost all-remote.
    fn price(
        &self,
        w: &Work,
        local_usage: Option<TokenUsage>,
        answer_usage: Option<TokenUsage>,
        remote_usage: Option<TokenUsage>,
    ) -> Cost {
        let p = &self.config.prices;
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
        Cost {
            local_usd,
            remote_usd,
            total_usd: local_usd + remote_usd,
            all_remote_usd,
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

/// The answer's text and finish reason: the remote answer's, else the local text (draft and
/// continuation).
fn answer_text(
    w: &Work,
    remote_answer: Option<&RemoteOutput>,
    reason: Reason,
) -> (String, FinishReason) {
    let local_text = match (&w.local, &w.local_extra) {
        (Some(a), Some(b)) => format!("{}{}", a.text, b.text),
        (Some(a), None) => a.text.clone(),
        _ => String::new(),
    };
    if let Some(r) = remote_answer {
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
    }
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
pub(super) fn deliver(sink: &dyn EventSink, result: Result<Response>) -> Result<Response> {
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
