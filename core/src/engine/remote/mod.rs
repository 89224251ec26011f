//! The remote tier: any OpenAI-compatible `POST {base_url}/v1/chat/completions` endpoint.
//!
//! Blocking (ureq with rustls: no tokio and no OpenSSL, which mobile lacks), streaming over SSE
//! with `stream_options.include_usage`. Timeouts for connect, first byte, the gap between
//! stream chunks, and the whole request. Retries with exponential backoff and jitter on
//! connection errors, 429 (honouring `Retry-After`) and 5xx, never after text has reached the
//! caller. A circuit breaker skips the tier for a cool-down after repeated failures.
//! The API key is set in the config or read from the environment, and never logged, printed or put in an error.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::RemoteConfig;
use crate::types::{ChatRequest, FinishReason};

pub use crate::error::{RemoteError, TimeoutPhase};

/// What the remote tier produced.
#[derive(Debug, Clone)]
pub struct RemoteOutput {
    /// The text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens (from the server, or estimated).
    pub prompt_tokens: u32,
    /// Completion tokens (from the server, or estimated).
    pub completion_tokens: u32,
    /// True when the server sent no usage and the counts are estimates.
    pub usage_estimated: bool,
    /// Milliseconds from the call to the first text.
    pub ttft_ms: f64,
    /// Milliseconds for the whole call, retries included.
    pub total_ms: f64,
    /// Attempts made.
    pub attempts: u32,
    /// The server's own time to first token, when it reports one (`edgecascade serve` does, in
    /// its `edgecascade` extension), for measuring what the client and HTTP add.
    pub server_ttft_ms: Option<f64>,
    /// The calls the model made to the request's tools.
    pub tool_calls: Vec<crate::types::ToolCall>,
}

/// An API key that never prints.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// The longest wait between two attempts, `Retry-After` included.
const RETRY_CAP: Duration = Duration::from_secs(8);

/// Consecutive failed requests (after retries) that open the breaker, and its cool-down.
const BREAKER_FAILURES: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// The remote tier.
#[derive(Debug)]
pub struct RemoteEngine {
    /// Agents with an idle keep-alive connection, ready for the next exchange.
    agents: Arc<Agents>,
    /// The endpoint as text, for messages.
    url: String,
    /// The endpoint as checked, which every request is made to.
    uri: http::Uri,
    model: String,
    key: Option<Secret>,
    headers: Vec<(String, String)>,
    max_retries: u32,
    chunk_gap: Duration,
    first_byte: Duration,
    total: Duration,
    deadline: Duration,
    stream: bool,
    breaker: Mutex<Breaker>,
}

/// `{base}/v1/chat/completions`, whether or not `base` ends in `/v1`.
pub fn completions_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.001))
}

impl RemoteEngine {
    /// Checks the config and reads the API key from the environment.
    pub fn new(cfg: &RemoteConfig) -> Result<Self, RemoteError> {
        let bad = |m: String| Err(RemoteError::Config(m));
        if cfg.base_url.is_empty() {
            return bad("base_url is empty".into());
        }
        // Parsed once, by the client's own parser; the request goes to exactly this value.
        let url = crate::net::Url::parse(&completions_url(&cfg.base_url), cfg.allow_insecure_http)
            .map_err(|e| match e {
                crate::net::UrlError::PlainHttp { .. } => RemoteError::Config(format!(
                    "{}: {e}; use https, or set allow_insecure_http = true for a trusted LAN",
                    cfg.base_url
                )),
                e => RemoteError::Config(format!("base_url: {e}")),
            })?;
        if cfg.model.is_empty() {
            return bad("model is empty".into());
        }
        let key = match (&cfg.api_key, &cfg.api_key_env) {
            (Some(k), _) if !k.is_empty() => Some(Secret(k.clone())),
            (Some(_), _) => return bad("api_key is empty".into()),
            (None, None) => None,
            (None, Some(var)) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(Secret(k)),
                _ => return bad(format!("api_key_env names {var}, which is not set")),
            },
        };
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(secs(cfg.connect_timeout_s)))
            .timeout_recv_response(Some(secs(cfg.first_byte_timeout_s)))
            .timeout_global(Some(secs(cfg.total_timeout_s)))
            .http_status_as_error(false)
            // An API endpoint does not redirect; following one could take the key elsewhere.
            .max_redirects(0)
            .build();
        Ok(Self {
            agents: Arc::new(Agents {
                config,
                idle: Mutex::new(Vec::new()),
            }),
            url: url.to_string(),
            uri: url.uri().clone(),
            model: cfg.model.clone(),
            key,
            headers: cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_retries: cfg.max_retries,
            chunk_gap: secs(cfg.chunk_gap_timeout_s),
            first_byte: secs(cfg.first_byte_timeout_s),
            total: secs(cfg.total_timeout_s),
            deadline: secs(cfg.deadline_s),
            stream: cfg.stream,
            breaker: Mutex::new(Breaker::default()),
        })
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The model name sent.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// `Err` while the breaker is open.
    pub fn check_available(&self) -> Result<(), RemoteError> {
        let b = self.breaker.lock().expect("breaker lock");
        match b.open_until {
            Some(t) if t > Instant::now() => Err(RemoteError::CircuitOpen {
                seconds: (t - Instant::now()).as_secs_f64(),
                failures: b.failures,
            }),
            _ => Ok(()),
        }
    }

    fn record(&self, ok: bool) {
        let mut b = self.breaker.lock().expect("breaker lock");
        if ok {
            *b = Breaker::default();
        } else {
            b.failures += 1;
            if b.failures >= BREAKER_FAILURES {
                b.open_until = Some(Instant::now() + BREAKER_COOLDOWN);
                log::warn!(
                    "remote tier failed {} times in a row; skipping it for {BREAKER_COOLDOWN:?}",
                    b.failures
                );
            }
        }
    }

    /// Streams a completion of `req`, sending text to `on_text` as it arrives. The request always
    /// carries `max_tokens` (the caller caps it to what its budget covers). Cancelling is not an
    /// error: the output then holds what had streamed, with `FinishReason::Cancelled` and
    /// estimated usage. Retries and their waits never run past `[remote] deadline_s`.
    pub fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError> {
        self.generate_inner(req, cancel, on_text)
            .map_err(|e| self.scrub(e))
    }

    /// Removes the API key from an error's text: a server may echo the request's
    /// `Authorization` header back in its error body, and errors are logged and shown.
    fn scrub(&self, mut e: RemoteError) -> RemoteError {
        let Some(key) = self
            .key
            .as_ref()
            .map(|k| k.0.as_str())
            .filter(|k| !k.is_empty())
        else {
            return e;
        };
        if let RemoteError::Connect { detail: text, .. }
        | RemoteError::Status { body: text, .. }
        | RemoteError::Malformed { detail: text, .. }
        | RemoteError::Cut { detail: text, .. } = &mut e
        {
            if text.contains(key) {
                *text = text.replace(key, "[redacted]");
            }
        }
        e
    }

    fn generate_inner(
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

    fn body(&self, req: &ChatRequest) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| crate::tools::openai_message(m, false))
            .collect();
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": self.stream,
            "temperature": req.sampling.temperature,
            "max_tokens": req.max_tokens,
        });
        if self.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if req.sampling.temperature > 0.0 && req.sampling.top_p < 1.0 {
            body["top_p"] = json!(req.sampling.top_p);
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if let Some(seed) = req.sampling.seed {
            body["seed"] = json!(seed);
        }
        if !req.tools.is_empty() {
            body["tools"] = req.tools.iter().map(crate::tools::openai_tool).collect();
            body["tool_choice"] = match &req.tool_choice {
                crate::types::ToolChoice::Auto => json!("auto"),
                crate::types::ToolChoice::None => json!("none"),
                crate::types::ToolChoice::Required => json!("required"),
                crate::types::ToolChoice::Function { name } => {
                    json!({"type": "function", "function": {"name": name}})
                }
            };
        }
        match &req.response_format {
            crate::types::ResponseFormat::Text => {}
            crate::types::ResponseFormat::JsonObject => {
                body["response_format"] = json!({"type": "json_object"});
            }
            crate::types::ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => {
                // The schema was checked to be JSON when the request was validated.
                let schema: Value = serde_json::from_str(schema).unwrap_or(Value::Null);
                body["response_format"] = json!({"type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": strict}});
            }
        }
        body
    }

    /// Starts one HTTP exchange on its own thread, which reports what arrives on a channel.
    /// The caller's thread only waits on the channel, so it sees cancellation and the
    /// chunk-gap timeout within 100 ms whatever the socket does. The thread ends when the body
    /// ends or its read fails; dropping the returned [`Exchange`] before that shuts its agent
    /// down, which fails a blocked read at once (a connect in progress stays bounded by the
    /// connect timeout).
    fn spawn_exchange(&self, body: &str, until: Instant) -> Result<Exchange, RemoteError> {
        let timeout = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let agent = self.agents.take();
        let slot = Arc::new(Mutex::new(Some(agent.clone())));
        let mut request = agent
            .post(self.uri.clone())
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream");
        for (k, v) in &self.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        if let Some(key) = &self.key {
            request = request.header("Authorization", format!("Bearer {}", key.0));
        }
        let request = request.config().timeout_global(Some(timeout)).build();
        let (tx, rx) = sync_channel::<Wire>(64);
        let body = body.to_owned();
        let stream = self.stream;
        let (agents, done) = (Arc::clone(&self.agents), Arc::clone(&slot));
        std::thread::Builder::new()
            .name("edgecascade-remote".into())
            .spawn(move || {
                // Only an exchange that read its body to the end hands its agent (and its
                // keep-alive connection) back.
                let finished = || agents.put(done.lock().ok().and_then(|mut s| s.take()));
                exchange(request, body, stream, &tx, finished);
            })
            .map_err(|e| RemoteError::Connect {
                url: self.url.clone(),
                detail: format!("cannot start the request thread: {e}"),
            })?;
        Ok(Exchange { rx, slot })
    }

    /// One HTTP attempt, until `until`. The error carries a `Retry-After` in seconds when the
    /// server sent a usable one.
    fn attempt(
        &self,
        req: &ChatRequest,
        body: &str,
        cancel: &AtomicBool,
        t0: Instant,
        until: Instant,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, (RemoteError, Option<f64>)> {
        let url = &self.url;
        // The whole-exchange limit the exchange is given, for a timeout's message.
        let global = until.saturating_duration_since(Instant::now());
        let exchange = self.spawn_exchange(body, until).map_err(|e| (e, None))?;
        let rx = &exchange.rx;
        let mut sse = Sse::new(t0);
        let mut answering = false;
        let mut last = Instant::now();
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Ok(cancelled_output(
                    req,
                    std::mem::take(&mut sse.out.text),
                    answering,
                    1,
                    t0,
                ));
            }
            let wire = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(w) => w,
                Err(RecvTimeoutError::Timeout) => {
                    if answering && last.elapsed() > self.chunk_gap {
                        return Err((
                            RemoteError::Timeout {
                                url: url.clone(),
                                phase: TimeoutPhase::ChunkGap,
                                seconds: self.chunk_gap.as_secs_f64(),
                            },
                            None,
                        ));
                    }
                    if Instant::now() > until + Duration::from_millis(500) {
                        return Err((
                            RemoteError::Timeout {
                                url: url.clone(),
                                phase: TimeoutPhase::Total,
                                seconds: (until - t0).as_secs_f64(),
                            },
                            None,
                        ));
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => Wire::End,
            };
            last = Instant::now();
            match wire {
                Wire::Refused {
                    status,
                    retry_after,
                    message,
                } => {
                    return Err((
                        RemoteError::Status {
                            url: url.clone(),
                            status,
                            body: message.chars().take(300).collect(),
                        },
                        retry_after,
                    ))
                }
                Wire::Failed(e) => return Err((self.transport_error(&e, global), None)),
                Wire::ReadFailed(e) => return Err((self.read_error(&e), None)),
                Wire::Answering => {
                    log::debug!(
                        "remote headers after {:.2} ms",
                        t0.elapsed().as_secs_f64() * 1e3
                    );
                    answering = true;
                }
                Wire::Body(text) => {
                    return self
                        .read_json(&text, req, t0, on_text)
                        .map_err(|e| (e, None))
                }
                Wire::Line(line) => {
                    if sse.line(&line, url, on_text).map_err(|e| (e, None))? {
                        // `[DONE]`: give the thread a moment to read the body's end, so that
                        // its connection stays open for the next request.
                        let _ = rx.recv_timeout(Duration::from_millis(50));
                        return sse.finish(req, url).map_err(|e| (e, None));
                    }
                }
                Wire::End => {
                    return Err((
                        RemoteError::Cut {
                            url: url.clone(),
                            detail: format!("after {} chunks, no [DONE]", sse.chunks),
                        },
                        None,
                    ))
                }
            }
        }
    }

    /// A non-streaming answer: one JSON object.
    fn read_json(
        &self,
        text: &str,
        req: &ChatRequest,
        t0: Instant,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError> {
        let url = &self.url;
        let v: Value = serde_json::from_str(text).map_err(|e| RemoteError::Malformed {
            url: url.clone(),
            detail: format!(
                "response is not JSON ({e}): {}",
                text.chars().take(120).collect::<String>()
            ),
        })?;
        let choice = &v["choices"][0];
        let tool_calls = read_tool_calls(&choice["message"]["tool_calls"]).map_err(|detail| {
            RemoteError::Malformed {
                url: url.clone(),
                detail,
            }
        })?;
        // A message that only calls tools may have a null content.
        let content = match choice["message"]["content"].as_str() {
            Some(c) => c,
            None if !tool_calls.is_empty() => "",
            None => {
                return Err(RemoteError::Malformed {
                    url: url.clone(),
                    detail: "no choices[0].message.content".into(),
                })
            }
        };
        let ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
        on_text(content);
        let usage = v.get("usage").filter(|u| !u.is_null());
        let (est_prompt, est_completion) = estimate_usage(req, content);
        Ok(RemoteOutput {
            text: content.to_owned(),
            finish_reason: finish_reason(choice["finish_reason"].as_str()),
            prompt_tokens: usage
                .and_then(|u| u["prompt_tokens"].as_u64())
                .map_or(est_prompt, |n| n as u32),
            completion_tokens: usage
                .and_then(|u| u["completion_tokens"].as_u64())
                .map_or(est_completion, |n| n as u32),
            usage_estimated: usage.is_none(),
            ttft_ms,
            total_ms: 0.0,
            attempts: 1,
            server_ttft_ms: v["edgecascade"]["timings"]["ttft_ms"].as_f64(),
            tool_calls,
        })
    }

    /// `global` is this attempt's whole-exchange limit (the total timeout, or what is left of
    /// the deadline).
    fn transport_error(&self, e: &ureq::Error, global: Duration) -> RemoteError {
        match e {
            ureq::Error::Timeout(t) => {
                let (phase, limit) = match t {
                    ureq::Timeout::Connect | ureq::Timeout::Resolve => {
                        return RemoteError::Connect {
                            url: self.url.clone(),
                            detail: format!("{t:?} timeout"),
                        }
                    }
                    ureq::Timeout::RecvResponse => {
                        (TimeoutPhase::FirstByte, self.first_byte.min(global))
                    }
                    _ => (TimeoutPhase::Total, global),
                };
                RemoteError::Timeout {
                    url: self.url.clone(),
                    phase,
                    seconds: limit.as_secs_f64(),
                }
            }
            other => RemoteError::Connect {
                url: self.url.clone(),
                detail: other.to_string(),
            },
        }
    }

    fn read_error(&self, e: &std::io::Error) -> RemoteError {
        if e.kind() == std::io::ErrorKind::TimedOut {
            RemoteError::Timeout {
                url: self.url.clone(),
                phase: TimeoutPhase::Total,
                seconds: self.total.as_secs_f64(),
            }
        } else {
            RemoteError::Cut {
                url: self.url.clone(),
                detail: e.to_string(),
            }
        }
    }
}

/// Prompt tokens estimated from the text (about 4 characters per token plus a few per
/// message), for reserving budget when no local tokenizer is loaded.
pub fn estimate_prompt_tokens(messages: &[crate::types::ChatMessage]) -> u32 {
    let chars: usize = messages.iter().map(|m| m.content.len() + 4).sum();
    (chars / 4).max(1) as u32
}

/// Token counts for a server that sent no usage: about 4 characters per token, plus a few
/// template tokens per message. Marked `usage_estimated` wherever used.
fn estimate_usage(req: &ChatRequest, answer: &str) -> (u32, u32) {
    (
        estimate_prompt_tokens(&req.messages),
        estimate_completion_tokens(answer),
    )
}

/// Completion tokens of `text` estimated at about 4 characters per token (at least one for
/// any text).
pub fn estimate_completion_tokens(text: &str) -> u32 {
    (text.len() / 4).max(usize::from(!text.is_empty())) as u32
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
fn cancelled_output(
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

/// A server's `finish_reason`.
fn finish_reason(s: Option<&str>) -> FinishReason {
    match s {
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// A message's `tool_calls` (absent or null: none). Arguments stay the JSON text the server
/// sent; whether they are valid is the runtime's check, so a bad call is reported, not lost.
fn read_tool_calls(v: &Value) -> Result<Vec<crate::types::ToolCall>, String> {
    let Some(calls) = v.as_array() else {
        return if v.is_null() {
            Ok(Vec::new())
        } else {
            Err("message.tool_calls is not an array".into())
        };
    };
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c["function"]["name"]
                .as_str()
                .ok_or_else(|| format!("tool_calls[{i}] has no function.name"))?;
            let arguments = match &c["function"]["arguments"] {
                Value::String(s) => s.clone(),
                Value::Null => "{}".into(),
                other => other.to_string(),
            };
            Ok(crate::types::ToolCall {
                id: c["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{i}"), str::to_owned),
                name: name.to_owned(),
                arguments,
            })
        })
        .collect()
}

/// The longest SSE line accepted; a longer one is a malformed stream, not a reason to buffer
/// without bound.
const MAX_LINE: usize = 1 << 20;

/// The ureq agents of one engine. Each exchange runs on an agent of its own, so that it can be
/// shut down (interrupting its blocked read) without touching other requests; an agent whose
/// exchange ended cleanly goes back here with its keep-alive connection.
#[derive(Debug)]
struct Agents {
    config: ureq::config::Config,
    idle: Mutex<Vec<ureq::Agent>>,
}

/// Idle agents kept for reuse; more concurrent exchanges than this make fresh ones.
const IDLE_AGENTS: usize = 4;

impl Agents {
    fn take(&self) -> ureq::Agent {
        self.idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.pop())
            .unwrap_or_else(|| ureq::Agent::new_with_config(self.config.clone()))
    }

    fn put(&self, agent: Option<ureq::Agent>) {
        if let (Some(agent), Ok(mut idle)) = (agent, self.idle.lock()) {
            if idle.len() < IDLE_AGENTS {
                idle.push(agent);
            }
        }
    }
}

/// One exchange in flight, seen from the caller: its reports, and its agent until either the
/// thread hands it back (the body ended) or this is dropped first, which shuts it down.
struct Exchange {
    rx: Receiver<Wire>,
    slot: Arc<Mutex<Option<ureq::Agent>>>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let agent = match self.slot.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(agent) = agent {
            agent.shutdown();
        }
    }
}

/// What the thread of one HTTP exchange reports.
enum Wire {
    /// The server answered with an error status.
    Refused {
        status: u16,
        retry_after: Option<f64>,
        message: String,
    },
    /// The request failed before a response.
    Failed(ureq::Error),
    /// Status 200: the answer follows.
    Answering,
    /// One line of an SSE stream (without its line ending).
    Line(String),
    /// A whole JSON body (non-streaming mode).
    Body(String),
    /// Reading the body failed.
    ReadFailed(std::io::Error),
    /// The body ended.
    End,
}

/// Runs one exchange, reporting on `tx`; returns once the body ends, fails, or nobody listens.
/// `finished` runs when the whole body has been read, before that is reported.
fn exchange(
    request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    body: String,
    stream: bool,
    tx: &SyncSender<Wire>,
    finished: impl Fn(),
) {
    let response = match request.send(body) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Wire::Failed(e));
            return;
        }
    };
    let status = response.status().as_u16();
    if status != 200 {
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::net::parse_retry_after);
        let text = response
            .into_body()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        let _ = tx.send(Wire::Refused {
            status,
            retry_after,
            message,
        });
        return;
    }
    if tx.send(Wire::Answering).is_err() {
        return;
    }
    let mut body = response.into_body();
    if !stream {
        let wire = match body.with_config().limit(16 << 20).read_to_string() {
            Ok(text) => {
                finished();
                Wire::Body(text)
            }
            Err(ureq::Error::Io(e)) => Wire::ReadFailed(e),
            Err(e) => Wire::ReadFailed(std::io::Error::other(e.to_string())),
        };
        let _ = tx.send(wire);
        return;
    }
    let mut reader = BufReader::new(body.into_reader());
    let mut buf = Vec::new();
    loop {
        let wire = match read_line_bounded(&mut reader, &mut buf, MAX_LINE) {
            Ok(Some(line)) => Wire::Line(line),
            Ok(None) => {
                finished();
                Wire::End
            }
            Err(e) => Wire::ReadFailed(e),
        };
        let last = !matches!(wire, Wire::Line(_));
        if tx.send(wire).is_err() || last {
            return;
        }
    }
}

/// The remote tier's reading of a response body without a socket: an SSE stream (`stream`)
/// or one JSON object, through the same line reader, event parser and JSON reader the engine
/// runs on the wire. For fuzzing and tests.
#[doc(hidden)]
pub fn decode_body(
    body: &[u8],
    stream: bool,
    req: &ChatRequest,
    on_text: &mut dyn FnMut(&str),
) -> Result<RemoteOutput, RemoteError> {
    let url = "http://127.0.0.1/v1/chat/completions";
    let t0 = Instant::now();
    if !stream {
        let engine = RemoteEngine::new(&RemoteConfig {
            base_url: "http://127.0.0.1".into(),
            model: "m".into(),
            ..RemoteConfig::default()
        })?;
        return engine.read_json(&String::from_utf8_lossy(body), req, t0, on_text);
    }
    let mut reader = std::io::Cursor::new(body);
    let mut buf = Vec::new();
    let mut sse = Sse::new(t0);
    loop {
        match read_line_bounded(&mut reader, &mut buf, MAX_LINE) {
            Ok(Some(line)) => {
                if sse.line(&line, url, on_text)? {
                    return sse.finish(req, url);
                }
            }
            Ok(None) => {
                return Err(RemoteError::Cut {
                    url: url.into(),
                    detail: format!("after {} chunks, no [DONE]", sse.chunks),
                })
            }
            Err(e) => {
                return Err(RemoteError::Malformed {
                    url: url.into(),
                    detail: e.to_string(),
                })
            }
        }
    }
}

/// Reads one `\n`-terminated line of at most `max` bytes (line endings stripped, invalid
/// UTF-8 replaced). `Ok(None)` at the end of the stream; an error for a longer line.
fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<String>> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(max as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an SSE line is longer than {max} bytes"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(buf).into_owned()))
}

/// The state of one SSE stream being read.
struct Sse {
    out: RemoteOutput,
    finish: Option<FinishReason>,
    data: String,
    chunks: u32,
    t0: Instant,
}

impl Sse {
    fn new(t0: Instant) -> Self {
        Self {
            out: RemoteOutput {
                text: String::new(),
                finish_reason: FinishReason::Stop,
                prompt_tokens: 0,
                completion_tokens: 0,
                usage_estimated: true,
                ttft_ms: 0.0,
                total_ms: 0.0,
                attempts: 1,
                server_ttft_ms: None,
                tool_calls: Vec::new(),
            },
            finish: None,
            data: String::new(),
            chunks: 0,
            t0,
        }
    }

    /// Takes one line; true once the stream is complete (`[DONE]`).
    fn line(
        &mut self,
        line: &str,
        url: &str,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<bool, RemoteError> {
        if !line.is_empty() {
            if let Some(d) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
            // Comments (":") and other fields (event:, id:, retry:) are ignored.
            return Ok(false);
        }
        // End of one SSE event.
        if self.data.is_empty() {
            return Ok(false);
        }
        let event = std::mem::take(&mut self.data);
        if event == "[DONE]" {
            return Ok(true);
        }
        self.chunks += 1;
        let chunks = self.chunks;
        let malformed = |detail: String| RemoteError::Malformed {
            url: url.to_owned(),
            detail,
        };
        let v: Value = serde_json::from_str(&event).map_err(|e| {
            malformed(format!(
                "chunk {chunks} is not JSON ({e}): {}",
                event.chars().take(120).collect::<String>()
            ))
        })?;
        if let Some(err) = v.get("error") {
            return Err(RemoteError::Status {
                url: url.to_owned(),
                status: 500,
                body: err["message"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .chars()
                    .take(300)
                    .collect(),
            });
        }
        if let Some(t) = v["edgecascade"]["timings"]["ttft_ms"].as_f64() {
            self.out.server_ttft_ms = Some(t);
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as u32;
            self.out.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as u32;
            self.out.usage_estimated = false;
        }
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return Err(malformed(format!("chunk {chunks} has no choices")));
        };
        if let Some(c) = choices.first() {
            if let Some(t) = c["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                if self.out.text.is_empty() {
                    self.out.ttft_ms = self.t0.elapsed().as_secs_f64() * 1e3;
                    log::debug!("remote first text after {:.2} ms", self.out.ttft_ms);
                }
                self.out.text.push_str(t);
                on_text(t);
            }
            if let Some(deltas) = c["delta"]["tool_calls"].as_array() {
                self.tool_deltas(deltas)
                    .map_err(|e| malformed(format!("chunk {chunks}: {e}")))?;
            }
            if let Some(f) = c["finish_reason"].as_str() {
                self.finish = Some(finish_reason(Some(f)));
            }
        }
        Ok(false)
    }

    /// Streamed tool-call pieces: the first piece of a call (by `index`) brings its id and
    /// name, later ones append to its arguments.
    fn tool_deltas(&mut self, deltas: &[Value]) -> Result<(), String> {
        for d in deltas {
            let calls = &mut self.out.tool_calls;
            let index = d["index"]
                .as_u64()
                .map_or(calls.len().saturating_sub(1), |i| i as usize);
            if index > calls.len() || index > 128 {
                return Err(format!("tool call index {index} skips a call"));
            }
            if index == calls.len() {
                calls.push(crate::types::ToolCall {
                    id: format!("call_{index}"),
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let call = &mut calls[index];
            if let Some(id) = d["id"].as_str() {
                id.clone_into(&mut call.id);
            }
            if let Some(name) = d["function"]["name"].as_str() {
                call.name.push_str(name);
            }
            if let Some(a) = d["function"]["arguments"].as_str() {
                call.arguments.push_str(a);
            }
            if call.arguments.len() > MAX_LINE * 8 {
                return Err("tool call arguments over 8 MiB".into());
            }
        }
        Ok(())
    }

    /// The output of a stream that ended with `[DONE]`.
    fn finish(mut self, req: &ChatRequest, url: &str) -> Result<RemoteOutput, RemoteError> {
        let Some(finish) = self.finish else {
            return Err(RemoteError::Cut {
                url: url.to_owned(),
                detail: "[DONE] without a finish_reason".into(),
            });
        };
        self.out.finish_reason = finish;
        if self.out.usage_estimated {
            (self.out.prompt_tokens, self.out.completion_tokens) =
                estimate_usage(req, &self.out.text);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_carry_the_key() {
        let e = RemoteEngine::new(&RemoteConfig {
            base_url: "http://127.0.0.1:9".into(),
            model: "m".into(),
            api_key: Some("sk-ffi-secret-51c0".into()),
            ..RemoteConfig::default()
        })
        .unwrap();
        let err = e.scrub(RemoteError::Status {
            url: "u".into(),
            status: 401,
            body: "rejected authorization: Bearer sk-ffi-secret-51c0".into(),
        });
        assert_eq!(
            err.to_string(),
            "u answered HTTP 401: rejected authorization: Bearer [redacted]"
        );
    }

    #[test]
    fn url_with_or_without_v1() {
        assert_eq!(
            completions_url("http://h:1"),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            completions_url("http://h:1/"),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            completions_url("https://api.x.com/v1"),
            "https://api.x.com/v1/chat/completions"
        );
        assert_eq!(
            completions_url("https://api.x.com/v1/"),
            "https://api.x.com/v1/chat/completions"
        );
    }

    #[test]
    fn https_required_except_loopback() {
        let cfg = |u: &str| RemoteConfig {
            base_url: u.into(),
            model: "m".into(),
            ..RemoteConfig::default()
        };
        assert!(RemoteEngine::new(&cfg("http://127.0.0.1:8080")).is_ok());
        assert!(RemoteEngine::new(&cfg("http://localhost:8080/v1")).is_ok());
        assert!(RemoteEngine::new(&cfg("http://[::1]:8080")).is_ok());
        assert!(RemoteEngine::new(&cfg("https://api.example.com")).is_ok());
        let e = RemoteEngine::new(&cfg("http://192.168.1.5:8080"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_insecure_http"), "{e}");
        assert!(RemoteEngine::new(&RemoteConfig {
            allow_insecure_http: true,
            ..cfg("http://192.168.1.5:8080")
        })
        .is_ok());
        assert!(RemoteEngine::new(&cfg("ftp://x")).is_err());
    }

    #[test]
    fn key_never_prints() {
        // The key is set in the config (as apps do), not through the process environment,
        // which other tests read concurrently.
        let e = RemoteEngine::new(&RemoteConfig {
            base_url: "http://127.0.0.1:1".into(),
            model: "m".into(),
            api_key: Some("sk-very-secret".into()),
            ..RemoteConfig::default()
        })
        .unwrap();
        assert!(!format!("{e:?}").contains("sk-very-secret"));
        let missing = RemoteEngine::new(&RemoteConfig {
            base_url: "http://127.0.0.1:1".into(),
            model: "m".into(),
            api_key_env: Some("EDGECASCADE_TEST_KEY_UNSET_VAR".into()),
            ..RemoteConfig::default()
        })
        .unwrap_err();
        assert!(missing
            .to_string()
            .contains("EDGECASCADE_TEST_KEY_UNSET_VAR"));
    }

    #[test]
    fn sse_lines_are_bounded() {
        let mut buf = Vec::new();
        let mut ok = std::io::Cursor::new(b"data: a\r\n\nlast".to_vec());
        assert_eq!(
            read_line_bounded(&mut ok, &mut buf, 16).unwrap().as_deref(),
            Some("data: a")
        );
        assert_eq!(
            read_line_bounded(&mut ok, &mut buf, 16).unwrap().as_deref(),
            Some("")
        );
        assert_eq!(
            read_line_bounded(&mut ok, &mut buf, 16).unwrap().as_deref(),
            Some("last")
        );
        assert_eq!(read_line_bounded(&mut ok, &mut buf, 16).unwrap(), None);
        let mut long = std::io::Cursor::new(vec![b'x'; 100]);
        let e = read_line_bounded(&mut long, &mut buf, 16).unwrap_err();
        assert!(e.to_string().contains("longer than 16"), "{e}");
    }
}
