//! The legs: the local tier alone, the remote tier alone, and the remote calls they make.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::remote::{RemoteError, RemoteOutput};
use crate::error::{Error, LocalError, Result};
use crate::types::{ChatRequest, FinishReason, Network, ResponseFormat, Route, Tier, TokenUsage};

use super::route::{Refusal, Routed};
use super::settle::{Failed, Settled, Settlement, Work};
use super::stream::Stream;
use super::{LocalTier, Runtime};

impl Runtime {
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
    pub(super) fn remote_call(
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
    pub(super) fn reserve(&self, settle: &Settlement<'_>, usd: f64) -> Result<(), Refusal> {
        self.budget(&settle.id, usd, true)?;
        settle.reserved.set(true);
        Ok(())
    }

    /// The request as sent to the remote tier: `max_tokens` capped to what was reserved.
    pub(super) fn remote_request<'r>(
        req: &'r ChatRequest,
        routed: &Routed,
    ) -> Cow<'r, ChatRequest> {
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
    pub(super) fn local_leg(
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
    pub(super) fn remote_leg(
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
}
