//! The attempt loop: retries with backoff (or the server's `Retry-After`) within the deadline,
//! and the output of a cancelled request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{estimate_usage, RemoteEngine, RemoteOutput};
use crate::error::{RemoteError, TimeoutPhase};
use crate::types::{ChatRequest, FinishReason};

/// The longest wait between two attempts, `Retry-After` included.
const RETRY_CAP: Duration = Duration::from_secs(8);

impl RemoteEngine {
    pub(super) fn generate_inner(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError> {
        self.check_available()?;
        let t0 = Instant::now();
        let deadline = t0 + self.deadline;
        let body = self.body(req).to_string();
        let mut attempt = 0;
        let mut first_byte_timeouts = 0;
        loop {
            attempt += 1;
            let mut streamed = false;
            let until = deadline.min(Instant::now() + self.total);
            let result = self.attempt(req, &body, cancel, t0, until, &mut |t| {
                streamed = true;
                on_text(t);
            });
            let (e, retry_after) = match result {
                Ok(mut out) => {
                    if out.finish_reason != FinishReason::Cancelled {
                        self.record(true);
                    }
                    out.attempts = attempt;
                    out.total_ms = t0.elapsed().as_secs_f64() * 1e3;
                    return Ok(out);
                }
                Err(failure) => failure,
            };
            if matches!(
                e,
                RemoteError::Timeout {
                    phase: TimeoutPhase::FirstByte,
                    ..
                }
            ) {
                first_byte_timeouts += 1;
            }
            // A server silent past the first-byte timeout twice is down, not slow.
            let can_retry = !streamed
                && e.retryable()
                && attempt <= self.max_retries
                && first_byte_timeouts < 2;
            // Exponential backoff with jitter, or the server's Retry-After (capped); never past
            // the deadline.
            let backoff = crate::net::backoff(attempt, Duration::from_millis(500), RETRY_CAP);
            let wait = retry_after
                .map_or(backoff, Duration::from_secs_f64)
                .min(RETRY_CAP);
            if !can_retry || Instant::now() + wait >= deadline {
                // A request the server refused as bad (400, 422, ...) says nothing about the
                // tier's health: one client's bad requests must not take it from every client.
                if e.is_tier_fault() {
                    self.record(false);
                }
                return Err(e);
            }
            log::info!(
                "remote attempt {attempt} failed ({}); retrying in {:.2} s",
                self.scrub(e),
                wait.as_secs_f64()
            );
            if sleep_cancellable(wait, cancel) {
                return Ok(cancelled_output(req, String::new(), false, attempt, t0));
            }
        }
    }
}

/// Sleeps for `d` unless cancelled first; true if cancelled.
fn sleep_cancellable(d: Duration, cancel: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    cancel.load(Ordering::Relaxed)
}

/// The output of a request cancelled after `text` had streamed. Usage is estimated; the
/// prompt counts only if the server had started answering (`answering`).
pub(super) fn cancelled_output(
    req: &ChatRequest,
    text: String,
    answering: bool,
    attempts: u32,
    t0: Instant,
) -> RemoteOutput {
    let (prompt, completion) = estimate_usage(req, &text);
    RemoteOutput {
        finish_reason: FinishReason::Cancelled,
        prompt_tokens: if answering { prompt } else { 0 },
        completion_tokens: if text.is_empty() { 0 } else { completion },
        text,
        usage_estimated: true,
        ttft_ms: 0.0,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        attempts,
        server_ttft_ms: None,
        tool_calls: Vec::new(),
    }
}
