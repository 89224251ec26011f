//! The FFI surface from Rust, as a foreign language sees it: listeners called from several
//! threads, a listener that panics (as a Kotlin exception in a callback surfaces), and many
//! threads sharing one runtime with chats, cancels and drops at random.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use edgecascade::{ChatRequest, Reason, Response, Route, Tier};
use edgecascade_ffi::{default_config, ChatListener, EdgeCascadeError, Runtime};

fn model() -> String {
    let dir = std::env::var("EDGECASCADE_MODELS").unwrap_or_else(|_| "../models".into());
    let p = std::path::Path::new(&dir).join("smollm2-135m-instruct-q4_1.gguf");
    assert!(
        p.exists(),
        "missing {}: run scripts/fetch_models.py smollm2",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

fn runtime(parallel: u32) -> Arc<Runtime> {
    let mut c = default_config();
    c.local.model = Some(model().into());
    c.local.n_ctx = Some(512);
    c.local.parallel = parallel;
    c.local.threads = Some(1);
    Runtime::new(c).unwrap()
}

fn greedy(text: &str, max_tokens: u32) -> ChatRequest {
    let mut r = ChatRequest::user(text);
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0.0;
    r
}

/// Records what a foreign listener would see, and on which threads.
#[derive(Default)]
struct Recorder {
    tokens: AtomicU32,
    terminal: AtomicU32,
    done: Mutex<Option<Response>>,
    failed: Mutex<Option<String>>,
    threads: Mutex<Vec<std::thread::ThreadId>>,
    panic_on_token: bool,
}

impl ChatListener for Recorder {
    fn on_token(&self, _text: String, _tier: Tier) {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        self.tokens.fetch_add(1, Ordering::SeqCst);
        assert!(!self.panic_on_token, "a listener bug");
    }
    fn on_escalating(&self, _reason: Reason) {}
    fn on_falling_back(&self, _detail: String) {}
    fn on_done(&self, response: Response) {
        self.terminal.fetch_add(1, Ordering::SeqCst);
        *self.done.lock().unwrap() = Some(response);
    }
    fn on_failed(&self, error: EdgeCascadeError) {
        self.terminal.fetch_add(1, Ordering::SeqCst);
        *self.failed.lock().unwrap() = Some(format!("{error:?}: {error}"));
    }
}

#[test]
fn listeners_are_called_from_generation_threads_with_one_terminal_event() {
    let rt = runtime(2);
    let recorders: Vec<Arc<Recorder>> = (0..3).map(|_| Arc::new(Recorder::default())).collect();
    let handles: Vec<_> = recorders
        .iter()
        .map(|r| {
            rt.start_chat(
                greedy("Name a fruit.", 8),
                Arc::clone(r) as Arc<dyn ChatListener>,
            )
        })
        .collect();
    for h in &handles {
        h.wait().unwrap();
    }
    let mut threads = Vec::new();
    for r in &recorders {
        assert_eq!(r.terminal.load(Ordering::SeqCst), 1);
        let done = r.done.lock().unwrap().clone().expect("done");
        assert_eq!(done.route, Route::Local);
        threads.extend(r.threads.lock().unwrap().iter().copied());
    }
    threads.sort_by_key(|t| format!("{t:?}"));
    threads.dedup();
    assert!(threads.len() >= 2, "callbacks came from several threads");
    assert!(!threads.contains(&std::thread::current().id()));
}

#[test]
fn a_panicking_listener_fails_the_request_and_the_process_survives() {
    let rt = runtime(1);
    let r = Arc::new(Recorder {
        panic_on_token: true,
        ..Recorder::default()
    });
    let h = rt.start_chat(
        greedy("Name a fruit.", 8),
        Arc::clone(&r) as Arc<dyn ChatListener>,
    );
    let e = h.wait().unwrap_err();
    assert!(matches!(e, EdgeCascadeError::Internal(_)), "{e:?}");
    assert!(e.to_string().contains("a listener bug"), "{e}");
    assert_eq!(r.terminal.load(Ordering::SeqCst), 1);
    assert!(r.failed.lock().unwrap().is_some());
    // The runtime still answers.
    assert!(!rt.chat(greedy("Say hi.", 4)).unwrap().text.is_empty());
}

#[test]
fn eight_threads_share_one_runtime_with_cancels_and_drops() {
    let rt = runtime(2);
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let rt = Arc::clone(&rt);
            std::thread::spawn(move || {
                let mut seed = 0x9e37_79b9_u32.wrapping_mul(t + 1);
                for _ in 0..3 {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let rec = Arc::new(Recorder::default());
                    let h = rt.start_chat(
                        greedy("Count from one to twenty.", 4 + seed % 24),
                        Arc::clone(&rec) as Arc<dyn ChatListener>,
                    );
                    match seed % 3 {
                        0 => {
                            h.cancel();
                            h.wait().unwrap();
                        }
                        1 => drop(h),
                        _ => {
                            h.wait().unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every request ended once, dropped ones included: shutdown waits for those in flight (a
    // dropped one whose thread was not yet admitted is refused as closed).
    rt.shutdown();
    let s = rt.stats();
    assert_eq!((s.finished + s.failed, s.in_flight), (24, 0), "{s:?}");
    let e = rt.chat(greedy("Hi", 2)).unwrap_err();
    assert!(matches!(e, EdgeCascadeError::Closed(_)), "{e:?}");
}

#[path = "../../examples/tests/common/counting_server.rs"]
mod counting_server;
use counting_server::counting_server;

#[test]
fn private_requests_never_connect_and_the_key_never_shows() {
    let key = "sk-ffi-secret-51c0";
    let (url, connections) = counting_server();
    let mut c = default_config();
    c.local.model = Some(model().into());
    c.local.n_ctx = Some(512);
    c.local.threads = Some(1);
    let mut remote = edgecascade_ffi::default_remote_config(url, "remote-model".into());
    remote.api_key = Some(key.into());
    remote.max_retries = 0;
    c.remote = Some(remote);
    c.cascade.threshold = 0.0; // every answer escalates unless private
    let shown = format!("{c:?}");
    let rt = Runtime::new(c).unwrap();
    let mut private = greedy("My PIN is 4321. Is that safe?", 8);
    private.private = true;
    for _ in 0..3 {
        let r = rt.chat(private.clone()).unwrap();
        assert_eq!((r.route, r.reason), (Route::Local, Reason::Private));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    // The positive control: not private, it connects (and the 401 degrades to local).
    private.private = false;
    let r = rt.chat(private).unwrap();
    assert!(connections.load(Ordering::SeqCst) >= 1);
    assert_eq!(r.route, Route::DegradedLocal, "{r:?}");
    let remote_error = r.remote_error.clone().unwrap_or_default();
    assert!(
        remote_error.contains("[redacted]"),
        "{remote_error} / {r:?}"
    );
    // Forced remote: the error crosses the FFI.
    let mut forced = greedy("hi", 4);
    forced.policy = edgecascade::PolicyOverride::ForceRemote;
    let err = rt.chat(forced).unwrap_err();
    for text in [
        shown,
        format!("{r:?}"),
        remote_error,
        err.to_string(),
        format!("{err:?}"),
    ] {
        assert!(!text.contains(key), "the key leaked: {text}");
    }
}
