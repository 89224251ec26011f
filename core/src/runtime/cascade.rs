//! The cascade: local first, then escalation, the rescue of a failed local model, the fallback.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::local::{GenerateOptions, LocalOutput, TokenSignal};
use crate::error::{LocalError, Result};
use crate::policy::{self, Cascade, Verdict};
use crate::types::{ChatRequest, Event, FinishReason, Reason, ResponseFormat, Route, Tier};

use super::route::{Refusal, Routed};
use super::settle::{Failed, Settled, Settlement, Work};
use super::stream::Stream;
use super::{LocalTier, Runtime};

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

impl Runtime {
    /// Local first; escalate after the answer (low confidence) or during it (mid-stream), and
    /// fall back to the local answer, finished if it was cut, when the remote tier fails.
    pub(super) fn cascade(
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
        let policy = self.policy();
        let (generated, mid, mut predicted) =
            Self::generate_draft(req, local, &policy, cancel, stream);
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
        let malformed = Self::malformed(req, local, &draft, stream.tools, &settlement.id);
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
            self.judge(req, &policy, routed, &draft)
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

    /// The local draft, generated under the cascade's watch. Returns the generation's result,
    /// the mid-stream escalation's detail if the policy cut the draft, and the probe gate's
    /// detail if it sent the request remote before any local token was decoded.
    fn generate_draft(
        req: &ChatRequest,
        local: &dyn LocalTier,
        policy: &Cascade,
        cancel: &AtomicBool,
        stream: &Stream<'_>,
    ) -> (
        Result<LocalOutput, LocalError>,
        Option<String>,
        Option<String>,
    ) {
        let mut signals: Vec<TokenSignal> = Vec::new();
        let mut mid: Option<String> = None;
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
        (generated, mid, predicted)
    }

    /// Why the draft is not a valid answer for `req` (its tool calls, or its response format);
    /// `None` for a gated draft, which has no text to judge.
    fn malformed(
        req: &ChatRequest,
        local: &dyn LocalTier,
        draft: &LocalOutput,
        tools: bool,
        id: &str,
    ) -> Option<String> {
        // A structured answer the token budget closed early parses, but its last value was cut.
        let budget = || format!("cut short by max_tokens ({})", req.max_tokens);
        let at_budget = draft.finish_reason == FinishReason::Length;
        if draft.gated {
            None
        } else if tools {
            let parsed = crate::tools::parse(&draft.text, id);
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
        }
    }

    /// The policy's verdict on a complete, valid draft, shifted by the device state.
    fn judge(
        &self,
        req: &ChatRequest,
        policy: &Cascade,
        routed: &Routed,
        draft: &LocalOutput,
    ) -> Verdict {
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
