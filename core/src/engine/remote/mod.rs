//! The remote tier: any OpenAI-compatible `POST {base_url}/v1/chat/completions` endpoint.
//!
//! Blocking (ureq with rustls: no tokio and no OpenSSL, which mobile lacks), streaming over SSE
//! with `stream_options.include_usage`. Timeouts for connect, first byte, the gap between
//! stream chunks, and the whole request. Retries with exponential backoff and jitter on
//! connection errors, 429 (honouring `Retry-After`) and 5xx, never after text has reached the
//! caller. A circuit breaker skips the tier for a cool-down after repeated failures.
//! The API key is set in the config or read from the environment, and never logged, printed or put in an error.
//!
//! By concern: `breaker` (the circuit breaker), `retry` (the attempt loop and its backoff),
//! `body` (the request body), `exchange` (one HTTP exchange, its thread and agents), `sse`
//! (the line reader and SSE events, tool-call deltas), `json` (the non-streaming answer); this
//! file holds the engine, its public entry points and the usage estimate.

mod body;
mod breaker;
mod exchange;
mod json;
mod retry;
mod sse;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RemoteConfig;
use crate::types::{ChatRequest, FinishReason};

use breaker::Breaker;
use exchange::Agents;
use sse::{read_line_bounded, Sse, MAX_LINE};

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
}
