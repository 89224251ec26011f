//! Routing: the dispatch of an admitted request, what the router is told, and the remote budget.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::ContextPolicy;
use crate::cost;
use crate::error::{Error, Result};
use crate::policy::{self, Plan, RouteInput};
use crate::types::{
    ChatRequest, DeviceState, EventSink, Network, PolicyOverride, Reason, Response, ResponseFormat,
};

use super::settle::{Failed, Settled, Settlement};
use super::stream::Stream;
use super::{LocalTier, Runtime};

/// Largest completion asked of the remote tier, and so reserved for, when a request sets no
/// smaller `max_tokens`.
pub(super) const WORST_CASE_COMPLETION: u32 = 4096;

/// The budget refused a reservation; the prose says which cap.
pub(super) struct Refusal(pub(super) String);

/// What the router was told and decided for one request.
pub(super) struct Routed {
    pub(super) decision: policy::Decision,
    /// The prompt's tokens (the local tokenizer's count, or an estimate without one).
    pub(super) prompt_tokens: u32,
    /// Prompt and context tokens, when the prompt does not fit the local context.
    pub(super) overflow: Option<(u32, u32)>,
    /// The remote completion cap (`max_tokens`, at most [`WORST_CASE_COMPLETION`]).
    pub(super) remote_max_tokens: u32,
    /// The worst-case remote cost at that cap, in USD: what a reservation holds.
    pub(super) worst_usd: f64,
    /// The device state the request was routed with.
    pub(super) device: DeviceState,
}

impl Runtime {
    /// One request, from validation to the recorded response.
    pub(super) fn answer(
        &self,
        req: &ChatRequest,
        sink: &dyn EventSink,
        cancel: &AtomicBool,
    ) -> Result<Response> {
        let local = self.validate(req)?;
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
        let outcome = self.route_and_run(req, local.as_deref(), &id, &settle, cancel, &stream);
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
                Self::check_output(req, local.as_deref(), stream.tools, &id, &mut response);
                settle.record_answer(&mut response);
                Ok(response)
            }
            Err(failed) => {
                settle.record_failure(failed.reason, failed.error.kind());
                Err(*failed.error)
            }
        }
    }

    /// Refuses a request the tiers cannot serve as it asks; else the local tier it runs with
    /// (`None` without a local model).
    fn validate(&self, req: &ChatRequest) -> Result<Option<Arc<dyn LocalTier>>> {
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
        Ok(local)
    }

    /// Asks the router, then runs the leg it planned.
    fn route_and_run(
        &self,
        req: &ChatRequest,
        local: Option<&dyn LocalTier>,
        id: &str,
        settle: &Settlement<'_>,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
    ) -> Result<Settled, Failed> {
        self.decide(req, local, id).and_then(|routed| {
            log::debug!(
                "request {id}: {:?} ({})",
                routed.decision.plan,
                routed.decision.detail
            );
            match (routed.decision.plan, local) {
                (Plan::Remote, _) | (_, None) => {
                    self.remote_leg(req, &routed, settle, local, cancel, stream)
                }
                (Plan::Local, Some(l)) => Self::local_leg(req, l, &routed, cancel, stream),
                (Plan::Cascade, Some(l)) => self.cascade(req, l, &routed, settle, cancel, stream),
            }
        })
    }

    /// Checks the answer's output: with tools, its calls (see [`Runtime::settle_calls`]);
    /// with a response format, its text against that format (a mismatch is reported in
    /// `format_error`).
    fn check_output(
        req: &ChatRequest,
        local: Option<&dyn LocalTier>,
        tools: bool,
        id: &str,
        response: &mut Response,
    ) {
        if tools {
            Self::settle_calls(req, local, response);
        } else if !matches!(req.response_format, ResponseFormat::Text) {
            let check = match local {
                Some(l) => l.check_format(&req.response_format, &response.text),
                None => crate::engine::local::constraint::check_json(
                    &req.response_format,
                    &response.text,
                ),
            };
            response.format_error = check.err();
            if let Some(why) = &response.format_error {
                log::warn!("request {id}: the answer does not match its response format: {why}");
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

    /// Reserves (with `reserve`; otherwise only checks) `usd` of remote budget for request `id`.
    pub(super) fn budget(&self, id: &str, usd: f64, reserve: bool) -> Result<(), Refusal> {
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
}
