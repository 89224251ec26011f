//! The model manager against a misbehaving file host on 127.0.0.1.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use edgecascade::models::{pull, PullError, PullOutcome, PullRequest, Store};
use sha2::{Digest, Sha256};

use crate::file_host::{dead_url, FileHost, Host};

/// 3 MB of deterministic bytes and their sha256.
fn blob() -> (Arc<Vec<u8>>, String) {
    let mut x = 0x1234_5678_u32;
    let data: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let sha = format!("{:x}", Sha256::digest(&data));
    (Arc::new(data), sha)
}

fn request(url: &str, sha: &str, dest: &Path) -> PullRequest {
    PullRequest {
        deadline_s: 60.0,
        stall_timeout_s: 5.0,
        ..PullRequest::new(url, sha, dest)
    }
}

fn run(r: &PullRequest) -> Result<PullOutcome, PullError> {
    pull(r, &AtomicBool::new(false), &mut |_| {})
}

fn nothing_left(dest: &Path) {
    assert!(!dest.exists(), "nothing at {}", dest.display());
    let part = format!("{}.part", dest.display());
    assert!(!Path::new(&part).exists(), "no {part}");
}

#[test]
fn a_cut_transfer_resumes_with_range() {
    let (file, sha) = blob();
    let host = FileHost::start(Arc::clone(&file), vec![Host::CutAt(1_200_000), Host::Good]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let mut seen = Vec::new();
    let out = pull(
        &request(&host.url, &sha, &dest),
        &AtomicBool::new(false),
        &mut |p| seen.push(*p),
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), *file);
    assert_eq!((out.requests, out.restarts, out.bytes), (2, 0, 3_000_000));
    assert_eq!(
        host.ranges.lock().unwrap()[1].as_deref(),
        Some("bytes=1200000-")
    );
    assert!(
        (out.bytes_transferred as f64) < 1.3 * file.len() as f64,
        "transferred {}",
        out.bytes_transferred
    );
    assert_eq!(out.bytes_transferred, 3_000_000, "nothing fetched twice");
    let sent = host.sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (sent as f64) < 1.3 * file.len() as f64,
        "the host sent {sent}"
    );
    assert!(seen
        .last()
        .is_some_and(|p| p.bytes_done == 3_000_000 && p.total == Some(3_000_000)));
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    // The store knows it, verified.
    let listed = Store::new(dir.path()).list();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].verified && listed[0].sha256.as_deref() == Some(sha.as_str()));
    // Pulling again finds it verified and downloads nothing.
    let again = run(&request(&host.url, &sha, &dest)).unwrap();
    assert!(again.already_present && again.bytes_transferred == 0);
    assert_eq!(host.count(), 2);
}

#[test]
fn a_host_ignoring_range_restarts_the_file_never_appends() {
    let (file, sha) = blob();
    for second in [Host::IgnoresRange, Host::WrongContentRange] {
        let host = FileHost::start(
            Arc::clone(&file),
            vec![Host::CutAt(1_000_000), second.clone()],
        );
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        let out = run(&request(&host.url, &sha, &dest)).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), *file, "{second:?}");
        assert!(out.restarts >= 1, "{second:?}: {out:?}");
        assert_eq!(out.bytes, 3_000_000);
    }
}

#[test]
fn a_corrupted_byte_is_a_mismatch_and_leaves_nothing() {
    let (file, sha) = blob();
    let host = FileHost::start(file, vec![Host::Corrupt(2_000_000)]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let e = run(&request(&host.url, &sha, &dest)).unwrap_err();
    assert!(matches!(e, PullError::Mismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("checksum mismatch") && e.to_string().contains(&sha),
        "{e}"
    );
    nothing_left(&dest);
}

#[test]
fn refusals_name_their_status_and_leave_nothing() {
    let (file, sha) = blob();
    for code in [404, 401] {
        let host = FileHost::start(Arc::clone(&file), vec![Host::Status(code)]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        let e = run(&request(&host.url, &sha, &dest)).unwrap_err();
        assert!(e.to_string().contains(&format!("HTTP {code}")), "{e}");
        assert_eq!(host.count(), 1, "no retry on {code}");
        nothing_left(&dest);
    }
}

#[test]
fn transient_failures_retry_and_a_dead_host_gives_up_by_the_deadline() {
    let (file, sha) = blob();
    let host = FileHost::start(
        Arc::clone(&file),
        vec![Host::Status(503), Host::Status(503), Host::Good],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let out = run(&request(&host.url, &sha, &dest)).unwrap();
    assert_eq!(out.requests, 3);
    assert_eq!(std::fs::read(&dest).unwrap(), *file);

    let dest = dir.path().join("dead.gguf");
    let r = PullRequest {
        deadline_s: 3.0,
        ..request(&dead_url(), &sha, &dest)
    };
    let e = run(&r).unwrap_err();
    assert!(
        matches!(e, PullError::Unreachable { requests, .. } if requests >= 2),
        "{e}"
    );
    assert!(!dest.exists());
}

#[test]
fn a_cancel_keeps_the_partial_file_and_a_second_pull_resumes_it() {
    let (file, sha) = blob();
    let host = FileHost::start(Arc::clone(&file), vec![Host::Slow(400_000), Host::Good]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let cancel = AtomicBool::new(false);
    let e = pull(&request(&host.url, &sha, &dest), &cancel, &mut |p| {
        if p.bytes_done >= 200_000 {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(matches!(e, PullError::Cancelled), "{e}");
    assert!(!dest.exists());
    let part = std::fs::metadata(format!("{}.part", dest.display()))
        .unwrap()
        .len();
    assert!(part >= 200_000, "{part}");
    let out = run(&request(&host.url, &sha, &dest)).unwrap();
    assert_eq!(out.resumed_from, part);
    assert_eq!(out.bytes_transferred, 3_000_000 - part);
    assert_eq!(std::fs::read(&dest).unwrap(), *file);
    // A different URL or hash never resumes someone else's partial file.
    assert_eq!(
        host.ranges.lock().unwrap()[1].as_deref(),
        Some(format!("bytes={part}-").as_str())
    );
}

#[test]
fn the_quota_evicts_least_recently_used_models_but_keeps_the_configured_one() {
    let (file, sha) = blob();
    let host = FileHost::start(Arc::clone(&file), vec![Host::Good]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    // Three 2 MB models, used in the order a (oldest), b, c.
    for name in ["a", "b", "c"] {
        let p = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&p, vec![0u8; 2_000_000]).unwrap();
        store.record(&p, &"0".repeat(64), 2_000_000);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dest = dir.path().join("new.gguf");
    let keep = dir.path().join("a.gguf");
    let r = PullRequest {
        quota_bytes: Some(8_000_000),
        keep: Some(keep.to_string_lossy().into_owned()),
        ..request(&host.url, &sha, &dest)
    };
    // 6 MB used + 3 MB > 8 MB: evict one; a is kept although oldest, so b goes.
    let out = run(&r).unwrap();
    assert_eq!(
        out.evicted,
        vec![dir.path().join("b.gguf").to_string_lossy().into_owned()]
    );
    assert!(keep.exists() && dir.path().join("c.gguf").exists() && dest.exists());
    // A quota that cannot be met even by evicting everything but the kept model refuses.
    let dest2 = dir.path().join("other.gguf");
    let r = PullRequest {
        quota_bytes: Some(4_000_000),
        keep: Some(keep.to_string_lossy().into_owned()),
        ..request(&host.url, &sha, &dest2)
    };
    let e = run(&r).unwrap_err();
    assert!(matches!(e, PullError::Storage(_)), "{e}");
    assert!(e.to_string().contains("quota"), "{e}");
    assert!(!dest2.exists() && keep.exists());
}

#[test]
fn a_pulled_model_loads_and_answers() {
    let model = crate::smollm2();
    let bytes = Arc::new(std::fs::read(&model).unwrap());
    let sha = format!("{:x}", Sha256::digest(&*bytes));
    let host = FileHost::start(bytes, vec![Host::CutAt(40_000_000), Host::Good]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("smollm2.gguf");
    let out = run(&request(&host.url, &sha, &dest)).unwrap();
    assert_eq!(out.requests, 2);
    let rt = edgecascade::Runtime::new(crate::config_for(dest)).unwrap();
    let r = rt
        .chat(
            &edgecascade::ChatRequest {
                max_tokens: 8,
                ..edgecascade::ChatRequest::user("Say hi.")
            },
            &edgecascade::NullSink,
        )
        .unwrap();
    assert!(!r.text.trim().is_empty());
}

/// What a background pull told its listener.
#[derive(Default)]
struct Heard {
    progress: std::sync::Mutex<Vec<edgecascade::models::PullProgress>>,
    retries: std::sync::Mutex<Vec<edgecascade::models::PullRetry>>,
    end: std::sync::Mutex<Option<Result<PullOutcome, PullError>>>,
    ended: std::sync::Condvar,
}

impl edgecascade::models::pull::PullListener for Heard {
    fn on_progress(&self, p: &edgecascade::models::PullProgress) {
        self.progress.lock().unwrap().push(*p);
    }
    fn on_retry(&self, r: &edgecascade::models::PullRetry) {
        self.retries.lock().unwrap().push(r.clone());
    }
    fn on_done(&self, outcome: PullOutcome) {
        let mut end = self.end.lock().unwrap();
        assert!(end.is_none(), "one terminal event");
        *end = Some(Ok(outcome));
        self.ended.notify_all();
    }
    fn on_failed(&self, error: PullError) {
        let mut end = self.end.lock().unwrap();
        assert!(end.is_none(), "one terminal event");
        *end = Some(Err(error));
        self.ended.notify_all();
    }
}

impl Heard {
    /// The terminal event; panics if none arrives within `limit` (a bound far above what
    /// the behaviour under test needs, and far below the timeout that would otherwise end it).
    fn wait(&self, limit: std::time::Duration) -> Result<PullOutcome, PullError> {
        let end = self.end.lock().unwrap();
        let (mut end, _) = self
            .ended
            .wait_timeout_while(end, limit, |e| e.is_none())
            .unwrap();
        end.take().expect("the pull ended in time")
    }
}

/// Waits until `cond` holds (polled), or panics after a minute.
fn until(what: &str, cond: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed().as_secs() < 60, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A host that answers 503 forever is given up after a bounded number of attempts that
/// received nothing, well before the deadline, with each retry reported (it was retried
/// silently until the 6-hour deadline).
#[test]
fn a_host_that_is_always_down_is_given_up_after_bounded_attempts() {
    use edgecascade::models::ATTEMPTS_WITHOUT_PROGRESS;
    let (file, sha) = blob();
    let host = FileHost::start(file, vec![Host::Unavailable]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let heard = Arc::new(Heard::default());
    let r = PullRequest::new(&host.url, &sha, &dest); // the default 6-hour deadline
    let handle = edgecascade::models::pull::start_pull(r, Arc::clone(&heard) as _);
    let e = heard.wait(std::time::Duration::from_secs(120)).unwrap_err();
    drop(handle);
    assert!(matches!(e, PullError::Unreachable { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("HTTP 503")
            && text.contains(&format!(
                "gave up after {ATTEMPTS_WITHOUT_PROGRESS} attempts"
            )),
        "{text}"
    );
    assert_eq!(host.count(), ATTEMPTS_WITHOUT_PROGRESS as usize);
    let retries = heard.retries.lock().unwrap();
    let attempts: Vec<u32> = retries.iter().map(|r| r.attempt).collect();
    assert_eq!(
        attempts,
        (1..ATTEMPTS_WITHOUT_PROGRESS).collect::<Vec<_>>(),
        "each retry reported, numbered"
    );
    assert!(retries
        .iter()
        .all(|r| r.reason == "HTTP 503" && r.wait_s == 0.0));
    assert!(!dest.exists());
}

/// Attempts that bring bytes reset the count: a host that fails often, but moves the file
/// forward each time, is followed to the end.
#[test]
fn a_flaky_host_that_makes_progress_is_never_given_up() {
    use edgecascade::models::ATTEMPTS_WITHOUT_PROGRESS;
    let (file, sha) = blob();
    let down = (ATTEMPTS_WITHOUT_PROGRESS - 2) as usize;
    let mut script = Vec::new();
    for cut in [500_000, 1_000_000, 1_500_000, 2_000_000] {
        script.push(Host::CutAt(cut));
        script.extend(std::iter::repeat_n(Host::Unavailable, down));
    }
    script.push(Host::Good);
    let n = script.len();
    let host = FileHost::start(Arc::clone(&file), script);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let out = run(&request(&host.url, &sha, &dest)).unwrap();
    assert_eq!(out.requests as usize, n);
    assert_eq!(std::fs::read(&dest).unwrap(), *file);
}

/// A TLS failure will not heal by waiting: one request, then a clear error (it was retried
/// until the deadline).
#[test]
fn a_tls_failure_fails_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Plain HTTP where the client expects a TLS handshake.
            let _ =
                std::io::Write::write_all(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let (_, sha) = blob();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let url = format!("https://127.0.0.1:{port}/m.gguf");
    let e = run(&request(&url, &sha, &dest)).unwrap_err();
    assert!(matches!(e, PullError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(!dest.exists());
}

/// A background pull from a host that sends `bytes`, then nothing, holding the connection;
/// its stall timeout (600 s) is far beyond any test's wait.
struct StalledPull {
    host: FileHost,
    dest: std::path::PathBuf,
    heard: Arc<Heard>,
    handle: edgecascade::models::pull::PullHandle,
    _dir: tempfile::TempDir,
}

fn stalled_pull(bytes: usize) -> StalledPull {
    let (file, sha) = blob();
    let host = FileHost::start(file, vec![Host::Stall(bytes)]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let heard = Arc::new(Heard::default());
    let r = PullRequest {
        stall_timeout_s: 600.0,
        ..request(&host.url, &sha, &dest)
    };
    let handle = edgecascade::models::pull::start_pull(r, Arc::clone(&heard) as _);
    StalledPull {
        host,
        dest,
        heard,
        handle,
        _dir: dir,
    }
}

/// A cancel interrupts a read that is blocked on a silent host at once, not after the stall
/// timeout (the watchdog saw the cancel only after the transfer returned).
#[test]
fn a_cancel_interrupts_a_blocked_read() {
    let StalledPull {
        host,
        dest,
        heard,
        handle,
        _dir,
    } = stalled_pull(100_000);
    let part_path = format!("{}.part", dest.display());
    until("the bytes before the stall are on disk", || {
        std::fs::metadata(&part_path).is_ok_and(|m| m.len() == 100_000)
    });
    assert!(!handle.is_finished());
    handle.cancel();
    // Far less than the 600 s stall timeout that would end the read otherwise.
    let e = heard.wait(std::time::Duration::from_secs(30)).unwrap_err();
    assert!(matches!(e, PullError::Cancelled), "{e}");
    assert!(handle.is_finished());
    let part = std::fs::metadata(format!("{}.part", dest.display())).unwrap();
    assert_eq!(part.len(), 100_000, "the partial file is kept");
    assert_eq!(host.count(), 1);
}

/// Dropping the handle cancels the pull.
#[test]
fn dropping_the_handle_cancels() {
    let StalledPull {
        heard,
        handle,
        _dir,
        ..
    } = stalled_pull(10_000);
    until("bytes arrived", || {
        !heard.progress.lock().unwrap().is_empty()
    });
    drop(handle);
    let e = heard.wait(std::time::Duration::from_secs(30)).unwrap_err();
    assert!(matches!(e, PullError::Cancelled), "{e}");
}

/// Two pulls of one model at once (a double tap; the app and the CLI): the second is refused
/// while the first writes the partial file, and the first completes intact (both wrote one
/// `.part` file and destroyed each other).
#[test]
fn a_second_pull_of_the_same_file_is_refused_while_the_first_runs() {
    let (file, sha) = blob();
    let host = FileHost::start(Arc::clone(&file), vec![Host::Slow(1_500_000)]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let heard = Arc::new(Heard::default());
    let first = edgecascade::models::pull::start_pull(
        request(&host.url, &sha, &dest),
        Arc::clone(&heard) as _,
    );
    until("the first pull is writing", || {
        !heard.progress.lock().unwrap().is_empty()
    });
    let e = run(&request(&host.url, &sha, &dest)).unwrap_err();
    assert!(matches!(e, PullError::InProgress(_)), "{e}");
    assert!(e.to_string().contains("in progress"), "{e}");
    let out = heard.wait(std::time::Duration::from_secs(60)).unwrap();
    drop(first);
    assert_eq!(out.bytes, 3_000_000);
    assert_eq!(std::fs::read(&dest).unwrap(), *file);
    assert_eq!(host.count(), 1, "the refused pull made no request");
    // Once the first is done, a pull finds the file verified.
    assert!(
        run(&request(&host.url, &sha, &dest))
            .unwrap()
            .already_present
    );
}

/// URLs that hide their real host behind an `@` are refused before any request.
#[test]
fn hostile_download_urls_are_refused() {
    let (_, sha) = blob();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    for url in [
        "http://evil.example?@127.0.0.1/m.gguf",
        "http://evil.example#@127.0.0.1/m.gguf",
        "http://127.0.0.1@evil.example/m.gguf",
        "https://user:pass@example.com/m.gguf",
    ] {
        let e = run(&request(url, &sha, &dest)).unwrap_err();
        assert!(matches!(e, PullError::Invalid(_)), "{url}: {e}");
    }
    assert!(!dest.exists());
}
