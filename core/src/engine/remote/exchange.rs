//! One HTTP exchange: the agents it runs on, the thread that reads the response and reports
//! it on a channel, and the caller's side that waits on that channel (one attempt).

use std::io::BufReader;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::retry::cancelled_output;
use super::sse::{read_line_bounded, Sse, MAX_LINE};
use super::{RemoteEngine, RemoteOutput};
use crate::error::{RemoteError, TimeoutPhase};
use crate::types::ChatRequest;

/// The ureq agents of one engine. Each exchange runs on an agent of its own, so that it can be
/// shut down (interrupting its blocked read) without touching other requests; an agent whose
/// exchange ended cleanly goes back here with its keep-alive connection.
#[derive(Debug)]
pub(super) struct Agents {
    pub(super) config: ureq::config::Config,
    pub(super) idle: Mutex<Vec<ureq::Agent>>,
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

impl RemoteEngine {
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
    pub(super) fn attempt(
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
            let Some(wire) = self.next_wire(rx, answering, last, t0, until)? else {
                continue;
            };
            last = Instant::now();
            match wire {
                Wire::Refused {
                    status,
                    retry_after,
                    message,
                } => return Err((self.status_error(status, &message), retry_after)),
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

    /// The exchange's next report, after waiting at most 100 ms (`None` if none came). Fails
    /// once the stream has been silent past the chunk-gap timeout, or the attempt is past
    /// `until`.
    fn next_wire(
        &self,
        rx: &Receiver<Wire>,
        answering: bool,
        last: Instant,
        t0: Instant,
        until: Instant,
    ) -> Result<Option<Wire>, (RemoteError, Option<f64>)> {
        let url = &self.url;
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(w) => Ok(Some(w)),
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
                Ok(None)
            }
            Err(RecvTimeoutError::Disconnected) => Ok(Some(Wire::End)),
        }
    }

    /// The error for a server that answered with an error `status` and `message`.
    fn status_error(&self, status: u16, message: &str) -> RemoteError {
        RemoteError::Status {
            url: self.url.clone(),
            status,
            body: message.chars().take(300).collect(),
        }
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
