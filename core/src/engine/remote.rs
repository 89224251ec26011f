//! The remote tier: any OpenAI-compatible `POST {base_url}/v1/chat/completions` endpoint.
//!
//! Blocking (ureq with rustls: no tokio and no OpenSSL, which mobile lacks), streaming over SSE
//! with `stream_options.include_usage`. Timeouts for connect, first byte, the gap between
//! stream chunks, and the whole request. Retries with exponential backoff and jitter on
//! connection errors, 429 (honouring `Retry-After`) and 5xx, never after text has reached the
//! caller. A circuit breaker skips the tier for a cool-down after repeated failures.
//! The API key is read from the environment, and never logged, printed or put in an error.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::RemoteConfig;
use crate::types::{ChatRequest, FinishReason};

/// Errors from the remote tier. None of them carries the API key.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The `[remote]` section is unusable.
    #[error("invalid [remote] config: {0}")]
    Config(String),
    /// No connection (refused, DNS, TLS, connect timeout).
    #[error("cannot reach {url}: {detail}")]
    Connect {
        /// Endpoint.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// Endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the error body.
        body: String,
    },
    /// A timeout fired.
    #[error("{url}: {phase} timeout after {seconds:.1} s")]
    Timeout {
        /// Endpoint.
        url: String,
        /// "first byte", "chunk gap" or "total".
        phase: &'static str,
        /// The limit.
        seconds: f64,
    },
    /// The response is not what the protocol promises.
    #[error("{url}: malformed response: {detail}")]
    Malformed {
        /// Endpoint.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The stream ended before it was complete.
    #[error("{url}: stream cut off before completion ({detail})")]
    Cut {
        /// Endpoint.
        url: String,
        /// Where.
        detail: String,
    },
    /// The breaker is open after repeated failures.
    #[error("remote tier skipped for {seconds:.0} s more after {failures} consecutive failures")]
    CircuitOpen {
        /// Seconds until it is tried again.
        seconds: f64,
        /// Consecutive failures that opened it.
        failures: u32,
    },
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl RemoteError {
    /// Whether a retry might succeed (and nothing has been streamed yet).
    fn retryable(&self) -> bool {
        match self {
            RemoteError::Connect { .. } | RemoteError::Timeout { .. } | RemoteError::Cut { .. } => {
                true
            }
            RemoteError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

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

/// Consecutive failed requests (after retries) that open the breaker, and its cool-down.
const BREAKER_FAILURES: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// The remote tier.
#[derive(Debug)]
pub struct RemoteEngine {
    agent: ureq::Agent,
    url: String,
    model: String,
    key: Option<Secret>,
    headers: Vec<(String, String)>,
    max_retries: u32,
    chunk_gap: Duration,
    total: Duration,
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

fn is_loopback_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
        let lower = cfg.base_url.to_ascii_lowercase();
        if lower.starts_with("http://") {
            if !cfg.allow_insecure_http && !is_loopback_host(&cfg.base_url) {
                return bad(format!(
                    "{} uses plain http to a non-loopback host; use https, or set allow_insecure_http = true for a trusted LAN",
                    cfg.base_url
                ));
            }
        } else if !lower.starts_with("https://") {
            return bad(format!(
                "base_url {} must start with https:// (or http:// on loopback)",
                cfg.base_url
            ));
        }
        if cfg.model.is_empty() {
            return bad("model is empty".into());
        }
        let key = match &cfg.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(Secret(k)),
                _ => return bad(format!("api_key_env names {var}, which is not set")),
            },
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(secs(cfg.connect_timeout_s)))
            .timeout_recv_response(Some(secs(cfg.first_byte_timeout_s)))
            .timeout_global(Some(secs(cfg.total_timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            url: completions_url(&cfg.base_url),
            model: cfg.model.clone(),
            key,
            headers: cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_retries: cfg.max_retries,
            chunk_gap: secs(cfg.chunk_gap_timeout_s),
            total: secs(cfg.total_timeout_s),
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

    /// Streams a completion of `req`, sending text to `on_text` as it arrives.
    pub fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError> {
        self.check_available()?;
        let t0 = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut streamed = false;
            let result = self.attempt(req, cancel, t0, &mut |t| {
                streamed = true;
                on_text(t);
            });
            match result {
                Ok(mut out) => {
                    self.record(true);
                    out.attempts = attempt;
                    out.total_ms = t0.elapsed().as_secs_f64() * 1e3;
                    return Ok(out);
                }
                Err((e, retry_after)) => {
                    let cancelled = matches!(e, RemoteError::Cancelled);
                    let can_retry =
                        !streamed && !cancelled && e.retryable() && attempt <= self.max_retries;
                    if !can_retry {
                        if !cancelled {
                            self.record(false);
                        }
                        return Err(e);
                    }
                    // Exponential backoff with jitter, or the server's Retry-After; never past the
                    // total budget.
                    let backoff = 0.25 * f64::from(1u32 << (attempt - 1).min(5)) * (0.5 + jitter());
                    let wait = retry_after.unwrap_or(backoff).min(8.0);
                    if t0.elapsed() + Duration::from_secs_f64(wait) >= self.total {
                        self.record(false);
                        return Err(e);
                    }
                    log::info!("remote attempt {attempt} failed ({e}); retrying in {wait:.2} s");
                    sleep_cancellable(Duration::from_secs_f64(wait), cancel).map_err(|(e, _)| e)?;
                }
            }
        }
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": self.stream,
            "temperature": req.sampling.temperature,
        });
        if self.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if req.max_tokens != u32::MAX {
            body["max_tokens"] = json!(req.max_tokens);
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
        body
    }

    /// One HTTP attempt. The error carries a `Retry-After` in seconds when the server sent one.
    #[allow(clippy::too_many_lines)] // one linear walk: request, status, then the SSE loop
    fn attempt(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        t0: Instant,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, (RemoteError, Option<f64>)> {
        let url = &self.url;
        let mut request = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream");
        for (k, v) in &self.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        if let Some(key) = &self.key {
            request = request.header("Authorization", format!("Bearer {}", key.0));
        }
        let response = request
            .send(self.body(req).to_string())
            .map_err(|e| (self.transport_error(&e, "first byte"), None))?;
        log::debug!(
            "remote headers after {:.2} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok());
            let mut body = response.into_body();
            let text = body
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err((
                RemoteError::Status {
                    url: url.clone(),
                    status,
                    body: msg.chars().take(300).collect(),
                },
                retry_after,
            ));
        }

        if !self.stream {
            return self
                .read_json(response, req, t0, on_text)
                .map_err(|e| (e, None));
        }

        // Read SSE lines on a helper thread, so a stalled stream is caught by the gap timeout
        // and cancellation is seen within 100 ms.
        let (tx, rx) = sync_channel::<std::io::Result<String>>(64);
        let reader = response.into_body().into_reader();
        std::thread::Builder::new()
            .name("edgecascade-sse".into())
            .spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let stop = line.is_err();
                    if tx.send(line).is_err() || stop {
                        return;
                    }
                }
            })
            .map_err(|e| {
                (
                    RemoteError::Connect {
                        url: url.clone(),
                        detail: e.to_string(),
                    },
                    None,
                )
            })?;

        let mut out = RemoteOutput {
            text: String::new(),
            finish_reason: FinishReason::Stop,
            prompt_tokens: 0,
            completion_tokens: 0,
            usage_estimated: true,
            ttft_ms: 0.0,
            total_ms: 0.0,
            attempts: 1,
            server_ttft_ms: None,
        };
        let mut finish: Option<FinishReason> = None;
        let mut data = String::new();
        let mut last = Instant::now();
        let mut chunks = 0u32;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err((RemoteError::Cancelled, None));
            }
            let line = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => return Err((self.read_error(&e), None)),
                Err(RecvTimeoutError::Timeout) => {
                    if last.elapsed() > self.chunk_gap {
                        return Err((
                            RemoteError::Timeout {
                                url: url.clone(),
                                phase: "chunk gap",
                                seconds: self.chunk_gap.as_secs_f64(),
                            },
                            None,
                        ));
                    }
                    if t0.elapsed() > self.total {
                        return Err((
                            RemoteError::Timeout {
                                url: url.clone(),
                                phase: "total",
                                seconds: self.total.as_secs_f64(),
                            },
                            None,
                        ));
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err((
                        RemoteError::Cut {
                            url: url.clone(),
                            detail: format!("after {chunks} chunks, no [DONE]"),
                        },
                        None,
                    ));
                }
            };
            last = Instant::now();
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                // End of one SSE event.
                if data.is_empty() {
                    continue;
                }
                let event = std::mem::take(&mut data);
                if event == "[DONE]" {
                    break;
                }
                chunks += 1;
                let v: Value = serde_json::from_str(&event).map_err(|e| {
                    (
                        RemoteError::Malformed {
                            url: url.clone(),
                            detail: format!(
                                "chunk {chunks} is not JSON ({e}): {}",
                                event.chars().take(120).collect::<String>()
                            ),
                        },
                        None,
                    )
                })?;
                if let Some(err) = v.get("error") {
                    let msg = err["message"]
                        .as_str()
                        .unwrap_or("unknown error")
                        .to_owned();
                    return Err((
                        RemoteError::Status {
                            url: url.clone(),
                            status: 500,
                            body: msg,
                        },
                        None,
                    ));
                }
                if let Some(t) = v["edgecascade"]["timings"]["ttft_ms"].as_f64() {
                    out.server_ttft_ms = Some(t);
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as u32;
                    out.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as u32;
                    out.usage_estimated = false;
                }
                let Some(choices) = v.get("choices").and_then(Value::as_array) else {
                    return Err((
                        RemoteError::Malformed {
                            url: url.clone(),
                            detail: format!("chunk {chunks} has no choices"),
                        },
                        None,
                    ));
                };
                if let Some(c) = choices.first() {
                    if let Some(t) = c["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                        if out.text.is_empty() {
                            out.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
                            log::debug!("remote first text after {:.2} ms", out.ttft_ms);
                        }
                        out.text.push_str(t);
                        on_text(t);
                    }
                    match c["finish_reason"].as_str() {
                        Some("length") => finish = Some(FinishReason::Length),
                        Some(_) => finish = Some(FinishReason::Stop),
                        None => {}
                    }
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
            // Comments (":") and other fields (event:, id:, retry:) are ignored.
        }
        let Some(finish) = finish else {
            return Err((
                RemoteError::Cut {
                    url: url.clone(),
                    detail: "[DONE] without a finish_reason".into(),
                },
                None,
            ));
        };
        out.finish_reason = finish;
        if out.usage_estimated {
            (out.prompt_tokens, out.completion_tokens) = estimate_usage(req, &out.text);
        }
        Ok(out)
    }

    /// A non-streaming answer: one JSON object.
    fn read_json(
        &self,
        response: ureq::http::Response<ureq::Body>,
        req: &ChatRequest,
        t0: Instant,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError> {
        let url = &self.url;
        let text = response
            .into_body()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| self.transport_error(&e, "total"))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| RemoteError::Malformed {
            url: url.clone(),
            detail: format!(
                "response is not JSON ({e}): {}",
                text.chars().take(120).collect::<String>()
            ),
        })?;
        let choice = &v["choices"][0];
        let Some(content) = choice["message"]["content"].as_str() else {
            return Err(RemoteError::Malformed {
                url: url.clone(),
                detail: "no choices[0].message.content".into(),
            });
        };
        let ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
        on_text(content);
        let usage = v.get("usage").filter(|u| !u.is_null());
        let (est_prompt, est_completion) = estimate_usage(req, content);
        Ok(RemoteOutput {
            text: content.to_owned(),
            finish_reason: if choice["finish_reason"].as_str() == Some("length") {
                FinishReason::Length
            } else {
                FinishReason::Stop
            },
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
        })
    }

    fn transport_error(&self, e: &ureq::Error, phase: &'static str) -> RemoteError {
        match e {
            ureq::Error::Timeout(t) => {
                let phase = match t {
                    ureq::Timeout::Connect | ureq::Timeout::Resolve => {
                        return RemoteError::Connect {
                            url: self.url.clone(),
                            detail: format!("{t:?} timeout"),
                        }
                    }
                    ureq::Timeout::Global | ureq::Timeout::PerCall => "total",
                    _ => phase,
                };
                RemoteError::Timeout {
                    url: self.url.clone(),
                    phase,
                    seconds: 0.0,
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
                phase: "total",
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

/// Token counts for a server that sent no usage: about 4 characters per token, plus a few
/// template tokens per message. Marked `usage_estimated` wherever used.
fn estimate_usage(req: &ChatRequest, answer: &str) -> (u32, u32) {
    let chars: usize = req.messages.iter().map(|m| m.content.len() + 4).sum();
    (
        (chars / 4).max(1) as u32,
        (answer.len() / 4).max(usize::from(!answer.is_empty())) as u32,
    )
}

fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

fn sleep_cancellable(d: Duration, cancel: &AtomicBool) -> Result<(), (RemoteError, Option<f64>)> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.load(Ordering::Relaxed) {
            return Err((RemoteError::Cancelled, None));
        }
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::env::set_var("EDGECASCADE_TEST_KEY_NEVER_PRINTS", "sk-very-secret");
        let e = RemoteEngine::new(&RemoteConfig {
            base_url: "http://127.0.0.1:1".into(),
            model: "m".into(),
            api_key_env: Some("EDGECASCADE_TEST_KEY_NEVER_PRINTS".into()),
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
}
