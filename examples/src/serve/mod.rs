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
    /// Requests generating at once (contexts); overrides [local] parallel.
    #[arg(long)]
    parallel: Option<u32>,
    /// Requests allowed to wait for a context; more get 503.
    #[arg(long, default_value_t = 8)]
    queue: u32,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
}

struct AppState {
    runtime: Arc<Runtime>,
    model_name: String,
    api_key: Option<String>,
    admission: Arc<Semaphore>,
    metrics: Metrics,
    max_body: usize,
    /// Cancel flags of running requests, for shutdown.
    active: Mutex<Vec<Weak<AtomicBool>>>,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
}

impl AppState {
    fn register(&self, flag: &Arc<AtomicBool>) {
        if let Ok(mut a) = self.active.lock() {
            a.retain(|w| w.strong_count() > 0);
            a.push(Arc::downgrade(flag));
        }
    }

    fn cancel_all(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        if let Ok(a) = self.active.lock() {
            for f in a.iter().filter_map(Weak::upgrade) {
                f.store(true, Ordering::SeqCst);
            }
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
        active: Mutex::new(Vec::new()),
        shutting_down: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
    });
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tokio.block_on(serve(state, &args.host, args.port, parallel, args.queue))
}

async fn serve(
    state: Arc<AppState>,
    host: &str,
    port: u16,
    parallel: u32,
    queue: u32,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| Failure::Runtime(format!("cannot listen on {host}:{port}: {e}")))?;
    let addr: SocketAddr = listener.local_addr()?;
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(Arc::clone(&state));
    let loopback = addr.ip().is_loopback();
    eprintln!(
        "serving {} with {parallel} parallel context(s) and a queue of {queue}{}{}",
        state.model_name,
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
    let shutdown_state = Arc::clone(&state);
    // Token-sized SSE writes must not wait for ACKs (Nagle): that cost 2-5 ms per first token.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("shutting down: cancelling in-flight requests");
            shutdown_state.cancel_all();
        })
        .await?;
    eprintln!("stopped");
    Ok(())
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
    if state.shutting_down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok", "model": state.model_name, "available_permits": state.admission.available_permits()})).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> HttpResponse {
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
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time enough for a local key: compare every byte.
    let ok = given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
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

async fn handle(state: &Arc<AppState>, req: Request) -> Result<HttpResponse, ApiError> {
    authorize(state, req.headers())?;
    let body: Bytes = axum::body::to_bytes(req.into_body(), state.max_body)
        .await
        .map_err(|_| ApiError {
            status: 413,
            kind: "invalid_request_error",
            code: Some("request_too_large"),
            param: None,
            message: format!("request body exceeds {} bytes", state.max_body),
        })?;
    let parsed: openai::CompletionRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}"), None))?;
    let (chat, stream, include_usage) = parsed.into_chat()?;
    if state.shutting_down.load(Ordering::SeqCst) {
        return Err(overloaded("the server is shutting down"));
    }
    let Ok(permit) = Arc::clone(&state.admission).try_acquire_owned() else {
        state.metrics.rejected.inc();
        return Err(overloaded(
            "all contexts are busy and the queue is full; retry shortly",
        ));
    };
    let cancel = Arc::new(AtomicBool::new(false));
    state.register(&cancel);
    state.metrics.in_flight.inc();
    let id = format!(
        "chatcmpl-{:x}{:06x}",
        now(),
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = now();
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    let runtime = Arc::clone(&state.runtime);
    let flag = Arc::clone(&cancel);
    let st = Arc::clone(state);
    let worker = tokio::task::spawn_blocking(move || {
        let on_closed = Arc::clone(&flag);
        let sink = move |e: Event| {
            // A closed channel means the client is gone: stop generating.
            if tx.send(e).is_err() {
                on_closed.store(true, Ordering::SeqCst);
            }
        };
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
        if state.shutting_down.load(Ordering::SeqCst)
            && r.finish_reason == edgecascade::FinishReason::Cancelled
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
    mut rx: mpsc::UnboundedReceiver<Event>,
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
                Event::Escalating { .. } => {}
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
