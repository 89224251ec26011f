//! The runtime: one entry point for apps. It owns the engines and turns each request into a
//! [`Response`] with its route, usage, timings, confidence and cost.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::engine::local::{LocalEngine, LocalOutput, ModelInfo};
use crate::error::{Error, Result};
use crate::types::{
    ChatRequest, Cost, Event, EventSink, PolicyOverride, Response, Route, Tier, Timings,
    TokenUsage, Usage,
};

/// The runtime. `Send + Sync`: share it across threads (for example in an `Arc`).
pub struct Runtime {
    config: Config,
    local: LocalEngine,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Validates the config and loads the local model.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_progress(config, None)
    }

    /// Like [`Runtime::new`], reporting model-load progress (0.0 to 1.0).
    pub fn with_progress(
        config: Config,
        progress: Option<Box<dyn FnMut(f32) + Send>>,
    ) -> Result<Self> {
        config.validate()?;
        let local = LocalEngine::load(&config.local, progress)?;
        Ok(Self { config, local })
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
        if req.policy == PolicyOverride::ForceRemote {
            return Err(Error::InvalidRequest("no remote tier is configured".into()));
        }
        let out = self.local.generate(req, cancel, &mut |t| {
            if !t.text.is_empty() {
                sink.on_event(Event::Token {
                    text: t.text.to_owned(),
                    tier: Tier::Local,
                });
            }
            ControlFlow::Continue(())
        })?;
        let (reason, detail) = match req.policy {
            PolicyOverride::ForceLocal => {
                ("forced", "the request forced the local tier".to_owned())
            }
            _ if req.private => ("private", "the request is private".to_owned()),
            _ => ("no_remote", "no remote tier is configured".to_owned()),
        };
        let response = self.local_response(out, reason, detail);
        sink.on_event(Event::Done(Box::new(response.clone())));
        Ok(response)
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

    fn local_response(&self, out: LocalOutput, reason: &str, reason_detail: String) -> Response {
        let p = &self.config.prices;
        let tokens = f64::from(out.prompt_tokens + out.completion_tokens);
        let local_usd = tokens / 1000.0 * p.local_per_1k;
        let all_remote_usd = f64::from(out.prompt_tokens) / 1000.0 * p.remote_input_per_1k
            + f64::from(out.completion_tokens) / 1000.0 * p.remote_output_per_1k;
        let decode_tok_s = if out.completion_tokens > 1 && out.decode_ms > 0.0 {
            f64::from(out.completion_tokens - 1) / (out.decode_ms / 1e3)
        } else {
            0.0
        };
        let prefill_tok_s = if out.prefill_ms > 0.0 {
            f64::from(out.prompt_tokens_evaluated) / (out.prefill_ms / 1e3)
        } else {
            0.0
        };
        Response {
            text: out.text,
            route: Route::Local,
            reason: reason.to_owned(),
            reason_detail,
            finish_reason: out.finish_reason,
            usage: Usage {
                prompt_tokens: out.prompt_tokens,
                completion_tokens: out.completion_tokens,
                local: Some(TokenUsage {
                    prompt_tokens: out.prompt_tokens,
                    completion_tokens: out.completion_tokens,
                }),
                remote: None,
                estimated: false,
                prompt_tokens_evaluated: out.prompt_tokens_evaluated,
            },
            timings: Timings {
                load_ms: 0.0,
                ttft_ms: out.ttft_ms,
                prefill_tok_s,
                decode_tok_s,
                total_ms: out.total_ms,
            },
            confidence: Some(crate::engine::local::confidence::summarize(&out.signals)),
            cost: Cost {
                local_usd,
                remote_usd: 0.0,
                total_usd: local_usd,
                all_remote_usd,
            },
            truncated_messages: out.truncated_messages,
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
