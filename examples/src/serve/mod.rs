//! `edgecascade serve`: an OpenAI-compatible HTTP server over the runtime.
//!
//! - `POST /v1/chat/completions` (JSON and SSE streaming), `GET /v1/models`, `GET /health`,
//!   `GET /metrics` (Prometheus).
//! - Admission is bounded: `--parallel` requests run, `--queue` more wait; beyond that the answer
//!   is 503 with `Retry-After`, never an unbounded queue.
//! - A client that disconnects mid-stream cancels its generation within one token.
//! - SIGINT/SIGTERM stop accepting, cancel what is running, and exit cleanly.

mod metrics;
pub(crate) mod openai;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args as ClapArgs;
use edgecascade::{Event, Runtime};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use crate::common::{load_config, load_runtime, ModelArgs};
use crate::Failure;
use metrics::Metrics;
use openai::ApiError;
use sha2::Digest;
use subtle::ConstantTimeEq;

/// `serve` flags.
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind; the default serves this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` (default: $EDGECASCADE_SERVE_API_KEY if set).
    #[arg(long)]
    api_key: Option<String>,
    /// Requests generating at once, decoded together in one batch (or in a context each with
    /// `[local] batching = false`); overrides [local] parallel.
    #[arg(long)]
    parallel: Option<u32>,
    /// Requests allowed to wait for a context; more get 503.
    #[arg(long, default_value_t = 8)]
    queue: u32,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds a client may take to send a request's headers, and again its body; a client
    /// slower than that is cut off (headers) or answered 408 (body).
    #[arg(long, default_value_t = 10.0)]
    read_timeout: f64,
    /// Seconds a streaming client may leave the answer unread before its generation is
    /// cancelled.
    #[arg(long, default_value_t = 30.0)]
    write_timeout: f64,
    /// Open connections at once; more are closed on accept.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
}

/// Events a stream may have waiting for its client.
const STREAM_BUFFER: usize = 64;

/// Each connection's kernel send buffer, in bytes (Linux doubles it).
const SEND_BUFFER: usize = 16 * 1024;

struct AppState {
    runtime: Arc<Runtime>,
    model_name: String,
    api_key: Option<String>,
    admission: Arc<Semaphore>,
    metrics: Metrics,
    max_body: usize,
    read_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
    inflight: Inflight,
    next_id: AtomicU64,
}

/// The cancel flags of running requests, for shutdown.
#[derive(Default)]
struct Inflight {
    active: Mutex<Vec<Weak<AtomicBool>>>,
    shutting_down: AtomicBool,
}

impl Inflight {
    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Registers a request's cancel flag; `false` once shutdown has begun. Checked under the
    /// same lock `cancel_all` takes, so no request slips in after the cancel and runs on.
    fn register(&self, flag: &Arc<AtomicBool>) -> bool {
        let mut a = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        a.retain(|w| w.strong_count() > 0);
        a.push(Arc::downgrade(flag));
        true
    }

    fn cancel_all(&self) {
        let a = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.shutting_down.store(true, Ordering::SeqCst);
        for f in a.iter().filter_map(Weak::upgrade) {
            f.store(true, Ordering::SeqCst);
        }
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let mut cfg = load_config(&args.model)?;
    if let Some(p) = args.parallel {
        cfg.local.parallel = p.max(1);
    }
    let parallel = cfg.local.parallel;
    let rt = load_runtime(cfg, true)?;
    let model_name = match (rt.local_model(), &rt.config().remote) {
        (Some(m), _) => m.name,
        (None, Some(r)) => r.model.clone(),
        (None, None) => "edgecascade".into(),
    };
    let api_key = args
        .api_key
        .or_else(|| std::env::var("EDGECASCADE_SERVE_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let state = Arc::new(AppState {
        runtime: Arc::new(rt),
        model_name,
        api_key,
        admission: Arc::new(Semaphore::new((parallel + args.queue) as usize)),
        metrics: Metrics::new(),
        max_body: args.max_body_bytes,
        read_timeout: seconds(args.read_timeout, "--read-timeout")?,
        write_timeout: seconds(args.write_timeout, "--write-timeout")?,
        inflight: Inflight::default(),
        next_id: AtomicU64::new(1),
    });
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let limits = Limits {
        parallel,
        queue: args.queue,
        max_connections: args.max_connections.max(1),
    };
    tokio.block_on(serve(state, &args.host, args.port, limits))
}

/// Whether `base_url` names the address this server listens on (a config read from the working
/// directory can make a server its own remote tier). Host names other than `localhost` are not
/// resolved: this catches the loop a config file makes by accident, not every alias.
fn remote_is_self(base_url: &str, addr: SocketAddr) -> bool {
    let Ok(uri) = base_url.parse::<axum::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    if uri.port_u16().unwrap_or(default_port) != addr.port() {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Some(std::net::IpAddr::from([127, 0, 0, 1]))
    } else {
        host.parse::<std::net::IpAddr>().ok()
    };
    ip.is_some_and(|ip| {
        ip == addr.ip()
            || (ip.is_loopback() && (addr.ip().is_loopback() || addr.ip().is_unspecified()))
    })
}

/// A positive, finite number of seconds.
fn seconds(s: f64, flag: &str) -> Result<std::time::Duration, Failure> {
    if s.is_finite() && s > 0.0 && s < 1e6 {
        Ok(std::time::Duration::from_secs_f64(s))
    } else {
        Err(Failure::Usage(format!(
            "{flag} must be a positive number of seconds"
        )))
    }
}

struct Limits {
    parallel: u32,
    queue: u32,
    max_connections: usize,
}

async fn serve(state: Arc<AppState>, host: &str, port: u16, limits: Limits) -> Result<(), Failure> {
    let Limits {
        parallel,
        queue,
        max_connections,
    } = limits;
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| Failure::Runtime(format!("cannot listen on {host}:{port}: {e}")))?;
    let addr: SocketAddr = listener.local_addr()?;
    if let Some(r) = &state.runtime.config().remote {
        if remote_is_self(&r.base_url, addr) {
            return Err(Failure::Runtime(format!(
                "[remote] base_url {} is this server itself: every escalation would come back \
                 to it; point it at another server, or give serve a config of its own (--config FILE)",
                r.base_url
            )));
        }
    }
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(Arc::clone(&state));
    let loopback = addr.ip().is_loopback();
    eprintln!(
        "serving {} with {parallel} request(s) at once{} and a queue of {queue}{}{}",
        state.model_name,
        if parallel > 1 && state.runtime.config().local.batching {
            ", batched"
        } else {
            ""
        },
        if loopback {
            "; bound to loopback only (use --host 0.0.0.0 to expose it)"
        } else {
            ""
        },
        if state.api_key.is_some() {
            "; API key required"
        } else {
            ""
        }
    );
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    accept_loop(listener, app, &state, max_connections).await;
    eprintln!("stopped");
    Ok(())
}

/// Serves connections until SIGINT/SIGTERM. Each connection gets `read_timeout` to send its
/// headers (hyper's timer; `axum::serve` sets none, so a client trickling headers would hold
/// its connection forever), and at most `max_connections` are open at once: more are closed on
/// accept, so slow or idle clients cannot exhaust file descriptors. On shutdown it stops
/// accepting, cancels what is generating (streams still end with `[DONE]`) and waits, a
/// bounded time, for the connections to finish.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    state: &Arc<AppState>,
    max_connections: usize,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let connections = Arc::new(Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            state.metrics.refused_connections.inc();
            drop(tcp);
            continue;
        };
        // Token-sized SSE writes must not wait for ACKs (Nagle): that cost 2-5 ms per first token.
        let _ = tcp.set_nodelay(true);
        // A small send buffer: a token stream needs little, and a client that stops reading
        // then pushes back within a few hundred tokens (see `write_timeout`), rather than after
        // megabytes of kernel buffer.
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(state.read_timeout)
            .serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    eprintln!("shutting down: cancelling in-flight requests");
    state.inflight.cancel_all();
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn error_response(e: &ApiError) -> HttpResponse {
    let mut resp = (
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(e.body()),
    )
        .into_response();
    if e.status == 503 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

async fn not_found() -> HttpResponse {
    error_response(&ApiError {
        status: 404,
        kind: "invalid_request_error",
        code: Some("not_found"),
        param: None,
        message: "no such endpoint".into(),
    })
}

async fn health(State(state): State<Arc<AppState>>) -> HttpResponse {
    if state.inflight.shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok", "model": state.model_name, "available_permits": state.admission.available_permits()})).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> HttpResponse {
    if let Some(stats) = state.runtime.local_engine().and_then(|e| e.batch_stats()) {
        state.metrics.batch(stats);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> HttpResponse {
    if let Err(e) = authorize(&state, &headers) {
        return error_response(&e);
    }
    let tier = match state.runtime.local_model() {
        Some(info) => {
            json!({"tier": "local", "path": info.path, "n_ctx": info.n_ctx, "n_params": info.n_params})
        }
        None => json!({"tier": "remote"}),
    };
    Json(json!({"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": 0, "owned_by": "edgecascade",
        "edgecascade": tier,
    }]}))
    .into_response()
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    // Constant time, and blind to the key's length: the digests are compared, not the keys.
    let (a, b) = (
        sha2::Sha256::digest(given),
        sha2::Sha256::digest(key.as_bytes()),
    );
    let ok: bool = a.as_slice().ct_eq(b.as_slice()).into();
    if ok {
        Ok(())
    } else {
        Err(ApiError {
            status: 401,
            kind: "invalid_request_error",
            code: Some("invalid_api_key"),
            param: None,
            message: "missing or wrong API key (Authorization: Bearer ...)".into(),
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sets its flag when dropped: the response (or its stream) went away, so stop generating.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    fn new(flag: Arc<AtomicBool>) -> Self {
        Self(Some(flag))
    }

    /// The work finished: nothing to cancel.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> HttpResponse {
    let result = handle(&state, req).await;
    match result {
        Ok(resp) => resp,
        Err(e) => {
            state.metrics.request("none", e.status);
            error_response(&e)
        }
    }
}

/// Where a request's events go: the stream's channel, bounded. A client that stops reading
/// fills it; after `write_timeout` of waiting its generation is cancelled (and later events are
/// dropped). A closed channel (the client left) cancels at once. A whole, non-streamed answer
/// comes from `chat`'s result, so its events are dropped.
fn stream_sink(
    tx: mpsc::Sender<Event>,
    stream: bool,
    write_timeout: std::time::Duration,
    on_closed: Arc<AtomicBool>,
    state: Arc<AppState>,
) -> impl Fn(Event) + Send + Sync {
    let stalled = AtomicBool::new(false);
    move |e: Event| {
        if !stream || stalled.load(Ordering::SeqCst) {
            return;
        }
        let deadline = std::time::Instant::now() + write_timeout;
        let mut e = e;
        loop {
            match tx.try_send(e) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    on_closed.store(true, Ordering::SeqCst);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        log::warn!(
                            "a streaming client stopped reading for {:.0} s: cancelling its generation",
                            write_timeout.as_secs_f64()
                        );
                        state.metrics.stalled.inc();
                        stalled.store(true, Ordering::SeqCst);
                        on_closed.store(true, Ordering::SeqCst);
                        return;
                    }
                    e = back;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
    }
}

/// The request body, within `max_body` bytes (else 413) and `read_timeout` (else 408).
async fn read_body(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let read = axum::body::to_bytes(req.into_body(), state.max_body);
    tokio::time::timeout(state.read_timeout, read)
        .await
        .map_err(|_| ApiError {
            status: 408,
            kind: "invalid_request_error",
            code: Some("request_timeout"),
            param: None,
            message: format!(
                "the request body did not arrive within {:.0} s",
                state.read_timeout.as_secs_f64()
            ),
        })?
        .map_err(|_| ApiError {
            status: 413,
            kind: "invalid_request_error",
            code: Some("request_too_large"),
            param: None,
            message: format!("request body exceeds {} bytes", state.max_body),
        })
}

async fn handle(state: &Arc<AppState>, req: Request) -> Result<HttpResponse, ApiError> {
    authorize(state, req.headers())?;
    let body = read_body(state, req).await?;
    let parsed: openai::CompletionRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}"), None))?;
    let (chat, stream, include_usage) = parsed.into_chat()?;
    if state.inflight.shutting_down() {
        return Err(overloaded("the server is shutting down"));
    }
    let Ok(permit) = Arc::clone(&state.admission).try_acquire_owned() else {
        state.metrics.rejected.inc();
        return Err(overloaded(
            "all contexts are busy and the queue is full; retry shortly",
        ));
    };
    let cancel = Arc::new(AtomicBool::new(false));
    if !state.inflight.register(&cancel) {
        return Err(overloaded("the server is shutting down"));
    }
    state.metrics.in_flight.inc();
    let id = format!(
        "chatcmpl-{:x}{:06x}",
        now(),
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = now();
    // Bounded: a streaming client that stops reading fills it (once hyper's and the kernel's
    // buffers are full), and its generation is cancelled after `write_timeout`.
    let (tx, rx) = mpsc::channel::<Event>(STREAM_BUFFER);
    let runtime = Arc::clone(&state.runtime);
    let flag = Arc::clone(&cancel);
    let st = Arc::clone(state);
    let write_timeout = state.write_timeout;
    let worker = tokio::task::spawn_blocking(move || {
        let sink = stream_sink(
            tx,
            stream,
            write_timeout,
            Arc::clone(&flag),
            Arc::clone(&st),
        );
        let out = runtime.chat_cancellable(&chat, &sink, &flag);
        if matches!(&out, Ok(r) if r.finish_reason == edgecascade::FinishReason::Cancelled) {
            st.metrics.cancelled.inc();
        }
        st.metrics.in_flight.dec();
        drop(permit);
        out
    });
    if stream {
        // Hold the headers until the first event, so an error before any token (an over-long
        // prompt, say) is a proper HTTP error rather than a 200 with an in-band error.
        let mut rx = rx;
        let guard = CancelOnDrop::new(Arc::clone(&cancel));
        let first = rx.recv().await;
        if let Some(Event::Failed(e)) = &first {
            guard.disarm();
            return Err(runtime_error(e));
        }
        let Some(first) = first else {
            let result = worker
                .await
                .map_err(|e| internal(format!("generation task failed: {e}")))?;
            guard.disarm();
            return Err(result.err().map_or_else(
                || internal("generation ended without a result".into()),
                |e| runtime_error(&e),
            ));
        };
        guard.disarm();
        Ok(stream_response(
            Arc::clone(state),
            first,
            rx,
            worker,
            cancel,
            id,
            created,
            include_usage,
        ))
    } else {
        let guard = CancelOnDrop::new(cancel);
        let result = worker
            .await
            .map_err(|e| internal(format!("generation task failed: {e}")))?;
        guard.disarm();
        let r = result.map_err(|e| runtime_error(&e))?;
        if state.inflight.shutting_down() && r.finish_reason == edgecascade::FinishReason::Cancelled
        {
            return Err(overloaded("the server is shutting down"));
        }
        state.metrics.response(&r);
        Ok(Json(openai::completion(&id, created, &state.model_name, &r)).into_response())
    }
}

#[allow(clippy::too_many_arguments)]
fn stream_response(
    state: Arc<AppState>,
    first: Event,
    mut rx: mpsc::Receiver<Event>,
    worker: tokio::task::JoinHandle<edgecascade::Result<edgecascade::Response>>,
    cancel: Arc<AtomicBool>,
    id: String,
    created: u64,
    include_usage: bool,
) -> HttpResponse {
    let model = state.model_name.clone();
    let guard = CancelOnDrop::new(cancel);
    let stream = async_stream::stream! {
        let _guard = guard; // dropped with the stream when the client disconnects
        let data = |v: serde_json::Value| Ok::<_, std::convert::Infallible>(SseEvent::default().data(v.to_string()));
        yield data(openai::chunk(&id, created, &model, json!({"role": "assistant", "content": ""}), None));
        let mut done = None;
        // In cascade mode the runtime holds the local draft until the route is settled
        // (`hold_draft`): what arrives here is final.
        let mut next = Some(first);
        while let Some(ev) = match next.take() { Some(ev) => Some(ev), None => rx.recv().await } {
            match ev {
                Event::Token { text, .. } => {
                    yield data(openai::chunk(&id, created, &model, json!({"content": text}), None));
                }
                // The remote text of an escalation is held too: nothing to take back.
                Event::Escalating { .. } | Event::FallingBack { .. } => {}
                Event::Done(r) => {
                    done = Some(Ok(r));
                    break;
                }
                Event::Failed(e) => {
                    done = Some(Err(e));
                    break;
                }
            }
        }
        if let Some(Ok(r)) = done {
            state.metrics.response(&r);
            for (index, call) in r.tool_calls.iter().enumerate() {
                // One delta per call, whole: the runtime settles calls before it answers.
                yield data(openai::chunk(&id, created, &model, json!({"tool_calls": [openai::tool_call(index, call)]}), None));
            }
            let mut last = openai::chunk(&id, created, &model, json!({}), Some(openai::finish_reason(r.finish_reason)));
            last["edgecascade"] = openai::extension(&r);
            yield data(last);
            if include_usage {
                let mut u = openai::chunk(&id, created, &model, json!({}), None);
                u["choices"] = json!([]);
                u["usage"] = openai::usage(&r);
                yield data(u);
            }
        } else {
            // The generation failed mid-stream: report it in-band, as OpenAI does.
            state.metrics.request("local", 500);
            let message = match done {
                Some(Err(e)) => e.to_string(),
                _ => match worker.await {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => "generation ended without a result".to_owned(),
                    Err(e) => format!("generation task failed: {e}"),
                },
            };
            yield data(json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}));
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    };
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn overloaded(msg: &str) -> ApiError {
    ApiError {
        status: 503,
        kind: "server_error",
        code: Some("overloaded"),
        param: None,
        message: msg.into(),
    }
}

fn internal(msg: String) -> ApiError {
    ApiError {
        status: 500,
        kind: "server_error",
        code: None,
        param: None,
        message: msg,
    }
}

/// The HTTP answer for a runtime error, by its stable kind.
fn runtime_error(e: &edgecascade::Error) -> ApiError {
    use edgecascade::ErrorKind;
    let api = |status, kind, code| ApiError {
        status,
        kind,
        code: Some(code),
        param: None,
        message: e.to_string(),
    };
    match e.kind() {
        ErrorKind::ContextOverflow => ApiError {
            param: Some("messages"),
            ..api(400, "invalid_request_error", "context_length_exceeded")
        },
        ErrorKind::InvalidRequest => ApiError::invalid(e.to_string(), None),
        ErrorKind::BudgetExhausted => api(429, "insufficient_quota", "budget_exhausted"),
        ErrorKind::RemoteUnavailable => api(503, "server_error", "remote_unavailable"),
        ErrorKind::Closed => api(503, "server_error", "overloaded"),
        ErrorKind::RemoteRejected => api(502, "server_error", "remote_rejected"),
        _ => internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::{remote_is_self, Inflight};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn no_request_registers_after_shutdown_and_runs_on() {
        // Threads register while shutdown begins: each request is either refused or cancelled,
        // none is registered and left running.
        for _ in 0..50 {
            let inflight = Inflight::default();
            let flags: Vec<_> = (0..8).map(|_| Arc::new(AtomicBool::new(false))).collect();
            let registered: Vec<bool> = std::thread::scope(|s| {
                let joins: Vec<_> = flags
                    .iter()
                    .map(|f| s.spawn(|| inflight.register(f)))
                    .collect();
                s.spawn(|| inflight.cancel_all());
                joins.into_iter().map(|j| j.join().unwrap()).collect()
            });
            for (f, r) in flags.iter().zip(&registered) {
                assert!(
                    !r || f.load(Ordering::SeqCst),
                    "registered and never cancelled"
                );
                assert!(*r || !f.load(Ordering::SeqCst), "refused yet flagged");
            }
            let late = Arc::new(AtomicBool::new(false));
            assert!(!inflight.register(&late), "registered after shutdown");
        }
        // The control: before shutdown, a request registers and is not cancelled until then.
        let inflight = Inflight::default();
        let f = Arc::new(AtomicBool::new(false));
        assert!(inflight.register(&f));
        assert!(!f.load(Ordering::SeqCst));
        inflight.cancel_all();
        assert!(f.load(Ordering::SeqCst));
    }

    #[test]
    fn a_remote_tier_on_our_own_address_is_seen() {
        let local = "127.0.0.1:8091".parse().unwrap();
        let any = "0.0.0.0:8091".parse().unwrap();
        for url in [
            "http://127.0.0.1:8091",
            "http://127.0.0.1:8091/v1",
            "http://localhost:8091/v1/",
        ] {
            assert!(remote_is_self(url, local), "{url}");
            assert!(remote_is_self(url, any), "{url} (bound to every address)");
        }
        // Another port, another host, or the default port are other servers.
        for url in [
            "http://127.0.0.1:8092",
            "http://192.0.2.7:8091",
            "https://api.openai.com/v1",
            "http://127.0.0.1",
            "not a url",
        ] {
            assert!(!remote_is_self(url, local), "{url}");
        }
        assert!(remote_is_self(
            "http://[::1]:8091",
            "[::1]:8091".parse().unwrap()
        ));
    }
}
