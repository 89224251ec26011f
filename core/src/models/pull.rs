//! Resumable, verified downloads. Bytes go to `PATH.part` (with `PATH.part.json` naming the
//! URL and hash they belong to); an interruption resumes with an HTTP `Range` request; a server
//! that ignores `Range` (200) or answers a `Content-Range` that does not continue the partial
//! file restarts it from zero, never appending; the sha256 of the whole file is checked before
//! an atomic rename into `PATH`. Nothing appears at `PATH` unverified.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::error::PullError;

use sha2::{Digest, Sha256};

/// What to download.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct PullRequest {
    /// https (http only to loopback).
    pub url: String,
    /// Expected sha256, hex.
    pub sha256: String,
    /// Where the verified file goes.
    pub dest: String,
    /// Give up after this many seconds, retries included.
    pub deadline_s: f64,
    /// A connection that delivers nothing for this long is dropped and resumed.
    pub stall_timeout_s: f64,
    /// The models folder's quota in bytes (see [`super::Store`]); none by default.
    pub quota_bytes: Option<u64>,
    /// A file the quota must never evict (the configured local model).
    pub keep: Option<String>,
}

impl PullRequest {
    /// The destination and its folder (`.` for a bare file name).
    pub(crate) fn paths(&self) -> (PathBuf, PathBuf) {
        let dest = PathBuf::from(&self.dest);
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        (dest, dir)
    }

    /// Defaults: a 6-hour deadline, a 30 s stall timeout, no quota.
    pub fn new(url: &str, sha256: &str, dest: &Path) -> Self {
        Self {
            url: url.to_owned(),
            sha256: sha256.to_owned(),
            dest: dest.to_string_lossy().into_owned(),
            deadline_s: 6.0 * 3600.0,
            stall_timeout_s: 30.0,
            quota_bytes: None,
            keep: None,
        }
    }
}

/// Progress of a pull.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct PullProgress {
    /// Bytes of the file on disk so far.
    pub bytes_done: u64,
    /// The file's size, once a server said.
    pub total: Option<u64>,
    /// Bytes per second over the current connection.
    pub bytes_per_s: f64,
}

/// A pull waiting to try again after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct PullRetry {
    /// Consecutive attempts that received nothing, this one included.
    pub attempt: u32,
    /// Seconds until the next attempt.
    pub wait_s: f64,
    /// What failed ("HTTP 503", "the transfer broke: ...").
    pub reason: String,
    /// Bytes of the file on disk (kept for the resume).
    pub bytes_done: u64,
}

/// What a pull reports while it runs. A closure over [`PullProgress`] is one (its retries are
/// only logged).
pub trait PullEvents {
    /// Progress, about ten times a second while bytes arrive.
    fn progress(&mut self, p: &PullProgress);
    /// An attempt failed and another follows after `r.wait_s`.
    fn retrying(&mut self, r: &PullRetry) {
        let _ = r;
    }
}

impl<F: FnMut(&PullProgress)> PullEvents for F {
    fn progress(&mut self, p: &PullProgress) {
        self(p);
    }
}

/// Consecutive attempts that receive no byte before a pull gives up. With the backoff below
/// (0.5 s doubling to 30 s, with jitter) that is about 30 to 60 s of a host that answers
/// nothing usable: long enough for a phone to ride out a network switch, short enough that a
/// dead host is reported while the user still waits. A host that sends bytes resets the
/// count, and may take until the deadline.
pub const ATTEMPTS_WITHOUT_PROGRESS: u32 = 8;

/// The longest wait between attempts, a server's `Retry-After` included.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// A finished pull.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct PullOutcome {
    /// The verified file.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Its sha256.
    pub sha256: String,
    /// Bytes received over the network by this call (a resumed pull counts only the rest).
    pub bytes_transferred: u64,
    /// Bytes already on disk from an earlier, interrupted pull when this one started.
    pub resumed_from: u64,
    /// HTTP requests made.
    pub requests: u32,
    /// Times the partial file was thrown away (a server ignoring `Range`, a mismatched
    /// `Content-Range`).
    pub restarts: u32,
    /// The file was already there and verified: nothing was downloaded.
    pub already_present: bool,
    /// Files evicted to stay within the quota.
    pub evicted: Vec<String>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PullError + '_ {
    move |e| PullError::Io {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// `PATH.part` and its note.
fn part_paths(dest: &Path) -> (PathBuf, PathBuf) {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut note = part.as_os_str().to_owned();
    note.push(".json");
    (part, PathBuf::from(note))
}

fn check_request(r: &PullRequest) -> Result<(String, crate::net::Url), PullError> {
    let hex = r.sha256.trim().to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PullError::Invalid(format!(
            "--sha256 must be 64 hex digits, got {:?}",
            r.sha256
        )));
    }
    let url = crate::net::Url::parse(&r.url, false).map_err(|e| match e {
        crate::net::UrlError::PlainHttp { .. } | crate::net::UrlError::Scheme { .. } => {
            PullError::Invalid(format!(
                "{}: downloads need https (plain http only to loopback)",
                r.url
            ))
        }
        e => PullError::Invalid(format!("download URL: {e}")),
    })?;
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(r.deadline_s) || !positive(r.stall_timeout_s) {
        return Err(PullError::Invalid(
            "deadline_s and stall_timeout_s must be positive numbers of seconds".into(),
        ));
    }
    if r.dest.is_empty() {
        return Err(PullError::Invalid("no destination path".into()));
    }
    Ok((hex, url))
}

/// Hashes a file (`Ok(None)` if it does not exist).
pub fn sha256_file(path: &Path) -> std::io::Result<Option<(String, u64)>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok(Some((format!("{:x}", h.finalize()), n)))
}

/// Free bytes on the file system holding `dir` (`None` where unknown).
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
        if unsafe { libc::statvfs(c.as_ptr(), &raw mut s) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Some(u64::from(s.f_bavail as u64).saturating_mul(u64::from(s.f_frsize as u64)))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// The partial file, its hash state and its length, kept consistent. The file is locked for
/// as long as this lives: one writer per partial file, whichever process it is in.
struct Part {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    len: u64,
}

impl Part {
    /// Opens (or creates) the partial file and locks it, or fails with `InProgress` when
    /// another pull holds it. Its bytes are hashed only after `resume` says they are ours.
    fn lock(path: &Path) -> Result<Self, PullError> {
        let file = OpenOptions::new()
            .read(true)
            .append(false)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(PullError::InProgress(path.to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(path)(e)),
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Hashes what is already in the file, to resume after it.
    fn resume(&mut self) -> Result<(), PullError> {
        self.file.seek(SeekFrom::Start(0)).map_err(io(&self.path))?;
        self.hasher = Sha256::new();
        self.len = std::io::copy(&mut (&mut self.file).take(u64::MAX), &mut self.hasher)
            .map_err(io(&self.path))?;
        Ok(())
    }

    fn restart(&mut self) -> Result<(), PullError> {
        self.file.set_len(0).map_err(io(&self.path))?;
        self.file.seek(SeekFrom::Start(0)).map_err(io(&self.path))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    fn append(&mut self, buf: &[u8]) -> Result<(), PullError> {
        self.file.write_all(buf).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                PullError::Storage(format!("{}: the disk is full", self.path.display()))
            } else {
                io(&self.path)(e)
            }
        })?;
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`), or `bytes */TOTAL`.
fn content_range(v: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok();
    let start = if range.trim() == "*" {
        None
    } else {
        Some(range.split_once('-')?.0.trim().parse().ok()?)
    };
    Some((start, total))
}

/// What one HTTP request ended with.
enum Attempt {
    /// The body ended: the part holds the whole file (as far as the server said).
    Complete,
    /// Retry (resuming), after this long if set (else the backoff), for this reason.
    Retry(Option<Duration>, String),
}

/// Downloads `r.url` into `r.dest`, verified. `on_progress` sees progress about ten times a
/// second; `cancel` stops it (the partial file stays, for a later resume). Retries are
/// logged; [`pull_with`] reports them too.
pub fn pull(
    r: &PullRequest,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(&PullProgress),
) -> Result<PullOutcome, PullError> {
    pull_with(r, cancel, &mut |p: &PullProgress| on_progress(p))
}

/// [`pull`], reporting progress and each retry to `events`.
///
/// A failed attempt is retried, resuming where it stopped, after a backoff with jitter (or
/// the server's `Retry-After`, up to 30 s), until [`ATTEMPTS_WITHOUT_PROGRESS`] attempts in a
/// row have received nothing, or the deadline passes. What waiting will not heal fails at
/// once: a refusal (4xx but 429), a name that does not resolve, a TLS failure.
pub fn pull_with(
    r: &PullRequest,
    cancel: &AtomicBool,
    events: &mut dyn PullEvents,
) -> Result<PullOutcome, PullError> {
    let (expected, url) = check_request(r)?;
    let (dest, dir) = r.paths();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // Already there and verified: done.
    if let Some((sha, n)) = sha256_file(&dest).map_err(io(&dest))? {
        if sha == expected {
            return Ok(PullOutcome {
                path: r.dest.clone(),
                bytes: n,
                sha256: sha,
                bytes_transferred: 0,
                resumed_from: 0,
                requests: 0,
                restarts: 0,
                already_present: true,
                evicted: Vec::new(),
            });
        }
    }
    let (part_path, note_path) = part_paths(&dest);
    let mut part = Part::lock(&part_path)?;
    // A partial file from another URL or hash is not ours to resume.
    let note = serde_json::json!({"url": r.url, "sha256": expected}).to_string();
    if std::fs::read_to_string(&note_path).is_ok_and(|n| n == note) {
        part.resume()?;
    } else {
        part.restart()?;
    }
    std::fs::write(&note_path, &note).map_err(io(&note_path))?;
    let resumed_from = part.len;
    let deadline = Instant::now() + Duration::from_secs_f64(r.deadline_s);
    let mut out = PullOutcome {
        path: r.dest.clone(),
        bytes: 0,
        sha256: String::new(),
        bytes_transferred: 0,
        resumed_from,
        requests: 0,
        restarts: 0,
        already_present: false,
        evicted: Vec::new(),
    };
    let mut total: Option<u64> = super::catalog::by_sha256(&expected).map(|e| e.size_bytes);
    let mut room_checked = false;
    if let Some(t) = total {
        out.evicted = super::make_room(r, t.saturating_sub(part.len))?;
        room_checked = true;
    }
    // Consecutive attempts that received nothing.
    let mut barren = 0u32;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(PullError::Cancelled);
        }
        out.requests += 1;
        let received = out.bytes_transferred;
        let attempt = fetch(
            r,
            &url,
            &mut part,
            (&mut total, &mut room_checked),
            &mut out,
            cancel,
            deadline,
            events,
        );
        let attempt = match attempt {
            Ok(a) => a,
            Err(e) => {
                if matches!(e, PullError::Status { .. } | PullError::Mismatch { .. }) {
                    let _ = std::fs::remove_file(&part_path);
                    let _ = std::fs::remove_file(&note_path);
                }
                return Err(e);
            }
        };
        match attempt {
            Attempt::Complete => break,
            Attempt::Retry(wait, why) => {
                barren = if out.bytes_transferred > received {
                    1
                } else {
                    barren + 1
                };
                let wait = wait
                    .unwrap_or_else(|| {
                        crate::net::backoff(barren, Duration::from_millis(500), MAX_WAIT)
                    })
                    .min(MAX_WAIT);
                let gave_up = if barren >= ATTEMPTS_WITHOUT_PROGRESS {
                    Some(format!(
                        "{why}; gave up after {barren} attempts in a row that received nothing"
                    ))
                } else if Instant::now() + wait >= deadline {
                    Some(format!("{why}; the {:.0} s deadline passed", r.deadline_s))
                } else {
                    None
                };
                if let Some(detail) = gave_up {
                    return Err(PullError::Unreachable {
                        url: r.url.clone(),
                        detail,
                        requests: out.requests,
                    });
                }
                log::info!(
                    "pull {}: retrying in {:.1} s: {why} (attempt {barren}); {} bytes kept",
                    r.url,
                    wait.as_secs_f64(),
                    part.len
                );
                events.retrying(&PullRetry {
                    attempt: barren,
                    wait_s: wait.as_secs_f64(),
                    reason: why,
                    bytes_done: part.len,
                });
                let end = Instant::now() + wait;
                while Instant::now() < end {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(PullError::Cancelled);
                    }
                    std::thread::sleep(
                        Duration::from_millis(20)
                            .min(end.saturating_duration_since(Instant::now())),
                    );
                }
            }
        }
    }
    // Verify the whole file, then publish it atomically (still holding the lock, so that no
    // other pull opens the file being renamed).
    let actual = format!("{:x}", std::mem::take(&mut part.hasher).finalize());
    let len = part.len;
    part.file.sync_all().map_err(io(&part_path))?;
    if actual != expected {
        let _ = std::fs::remove_file(&part_path);
        let _ = std::fs::remove_file(&note_path);
        return Err(PullError::Mismatch {
            url: r.url.clone(),
            expected,
            actual,
        });
    }
    std::fs::rename(&part_path, &dest).map_err(io(&dest))?;
    drop(part);
    let _ = std::fs::remove_file(&note_path);
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    super::Store::new(&dir).record(&dest, &actual, len);
    out.bytes = len;
    out.sha256 = actual;
    Ok(out)
}

/// Whether a failed request is worth retrying: not when the name does not resolve, TLS fails
/// (a certificate, a handshake), or the URL or its redirects are unusable. Those come back the
/// same after any wait.
fn lasting(e: &ureq::Error) -> Option<String> {
    use ureq::Error as E;
    match e {
        E::HostNotFound => Some("the host name does not resolve".into()),
        // The resolver's own failure: "Name or service not known" and the like, but not
        // "Temporary failure in name resolution" (EAI_AGAIN, a network that is not up yet).
        E::Io(io)
            if io.to_string().contains("failed to lookup address")
                && !io.to_string().contains("Temporary failure") =>
        {
            Some(format!("the host name does not resolve ({io})"))
        }
        E::Tls(_) | E::Rustls(_) | E::Pem(_) | E::TlsRequired => Some(format!("TLS failed: {e}")),
        // A handshake that fails in a read: rustls's error inside an io error.
        E::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            Some(format!("TLS failed: {io}"))
        }
        E::BadUri(_)
        | E::Http(_)
        | E::RedirectFailed
        | E::TooManyRedirects
        | E::RequireHttpsOnly(_)
        | E::InvalidProxyUrl
        | E::LargeResponseHeader(..) => Some(e.to_string()),
        _ => None,
    }
}

/// Milliseconds since `t0`, as the watchdog and the transfer share them.
fn millis_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One HTTP request: resumes at `part.len`, appends what arrives. A watchdog thread shuts the
/// request's agent down (failing a blocked connect or read at once) when `cancel` is set or
/// nothing arrives for the stall timeout.
#[allow(clippy::too_many_arguments)]
fn fetch(
    r: &PullRequest,
    url: &crate::net::Url,
    part: &mut Part,
    room: (&mut Option<u64>, &mut bool),
    out: &mut PullOutcome,
    cancel: &AtomicBool,
    deadline: Instant,
    events: &mut dyn PullEvents,
) -> Result<Attempt, PullError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Ok(Attempt::Retry(
            Some(Duration::ZERO),
            "the deadline passed".into(),
        ));
    }
    let stall = Duration::from_secs_f64(r.stall_timeout_s);
    // An agent of its own, so the watchdog can shut it down.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(stall.min(Duration::from_secs(30))))
        .timeout_recv_response(Some(stall))
        .timeout_global(Some(remaining))
        .http_status_as_error(false)
        // An https download never follows a redirect to plain http.
        .https_only(url.is_https())
        .build()
        .into();
    let progress_at = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let (stopper, done_ref, progress_ref) = (agent.clone(), &done, &progress_at);
        let watchdog = std::thread::Builder::new()
            .name("edgecascade-pull-watchdog".into())
            .spawn_scoped(s, move || {
                let (done, progress_at) = (done_ref, progress_ref);
                let agent = stopper;
                while !done.load(Ordering::Relaxed) {
                    let idle = millis_since(t0).saturating_sub(progress_at.load(Ordering::Relaxed));
                    if cancel.load(Ordering::Relaxed) || Duration::from_millis(idle) > stall {
                        agent.shutdown();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .map_err(|e| PullError::Io {
                path: part.path.clone(),
                detail: format!("cannot start the watchdog thread: {e}"),
            })?;
        let touch = || progress_at.store(millis_since(t0), Ordering::Relaxed);
        let result = transfer(r, url, &agent, part, room, out, cancel, events, &touch);
        done.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        if cancel.load(Ordering::Relaxed) {
            return Err(PullError::Cancelled);
        }
        result
    })
}

/// The request and its body, for [`fetch`].
#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
fn transfer(
    r: &PullRequest,
    url: &crate::net::Url,
    agent: &ureq::Agent,
    part: &mut Part,
    (total, room_checked): (&mut Option<u64>, &mut bool),
    out: &mut PullOutcome,
    cancel: &AtomicBool,
    events: &mut dyn PullEvents,
    touch: &dyn Fn(),
) -> Result<Attempt, PullError> {
    let mut req = agent.get(url.uri().clone());
    if part.len > 0 {
        req = req.header("Range", format!("bytes={}-", part.len));
    }
    let response = match req.call() {
        Ok(resp) => resp,
        Err(e) => {
            if cancel.load(Ordering::Relaxed) {
                return Err(PullError::Cancelled);
            }
            if let Some(detail) = lasting(&e) {
                return Err(PullError::Refused {
                    url: r.url.clone(),
                    detail,
                });
            }
            return Ok(Attempt::Retry(None, e.to_string()));
        }
    };
    touch();
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    match status {
        200 => {
            if part.len > 0 {
                log::info!("pull {}: the server ignored Range; starting over", r.url);
                part.restart()?;
                out.restarts += 1;
            }
            if let Some(n) = length {
                *total = Some(n);
            }
        }
        206 => {
            let (start, size) = header("content-range")
                .as_deref()
                .and_then(content_range)
                .unwrap_or((None, None));
            if start != Some(part.len) {
                log::info!(
                    "pull {}: Content-Range starts at {start:?}, the partial file has {} bytes; starting over",
                    r.url,
                    part.len
                );
                part.restart()?;
                out.restarts += 1;
                return Ok(Attempt::Retry(
                    Some(Duration::ZERO),
                    "a mismatched Content-Range".into(),
                ));
            }
            if size.is_some() {
                *total = size;
            }
        }
        416 => {
            // The partial file is at least as long as the file: verify it, or start over.
            let size = header("content-range")
                .as_deref()
                .and_then(content_range)
                .and_then(|c| c.1);
            if size == Some(part.len) {
                return Ok(Attempt::Complete);
            }
            part.restart()?;
            out.restarts += 1;
            return Ok(Attempt::Retry(
                Some(Duration::ZERO),
                "416 for a partial file".into(),
            ));
        }
        429 | 500..=599 => {
            let wait = header("retry-after")
                .as_deref()
                .and_then(crate::net::parse_retry_after)
                .map(Duration::from_secs_f64);
            return Ok(Attempt::Retry(wait, format!("HTTP {status}")));
        }
        _ => {
            return Err(PullError::Status {
                url: r.url.clone(),
                status,
            })
        }
    }
    if let (Some(t), false) = (*total, *room_checked) {
        out.evicted = super::make_room(r, t.saturating_sub(part.len))?;
        *room_checked = true;
    }
    if total.is_some_and(|t| t < part.len) {
        part.restart()?;
        out.restarts += 1;
        return Ok(Attempt::Retry(
            Some(Duration::ZERO),
            "the file is shorter than the partial file".into(),
        ));
    }
    let mut body = response.into_body();
    let mut reader = body.with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 64 * 1024];
    let started = part.len;
    let started_at = Instant::now();
    let mut last_report: Option<Instant> = None;
    let report = |part: &Part, events: &mut dyn PullEvents, total: Option<u64>| {
        let secs = started_at.elapsed().as_secs_f64().max(1e-3);
        events.progress(&PullProgress {
            bytes_done: part.len,
            total,
            bytes_per_s: (part.len - started) as f64 / secs,
        });
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(PullError::Cancelled);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Ok(Attempt::Retry(None, format!("the transfer broke: {e}")));
            }
        };
        touch();
        part.append(&buf[..n])?;
        out.bytes_transferred += n as u64;
        if last_report.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
            last_report = Some(Instant::now());
            report(part, events, *total);
        }
    }
    report(part, events, *total);
    match *total {
        Some(t) if part.len < t => Ok(Attempt::Retry(
            None,
            format!("the connection closed at byte {} of {t}", part.len),
        )),
        _ => Ok(Attempt::Complete),
    }
}

/// Receives a background pull's events, on the pull's thread: progress and retries, then
/// exactly one `on_done` or `on_failed`.
pub trait PullListener: Send + Sync {
    /// Bytes so far, the total once known, the current rate.
    fn on_progress(&self, progress: &PullProgress);
    /// An attempt failed; the next follows after `retry.wait_s`.
    fn on_retry(&self, retry: &PullRetry);
    /// The file is at its destination, verified. Terminal.
    fn on_done(&self, outcome: PullOutcome);
    /// The pull failed or was cancelled. Terminal.
    fn on_failed(&self, error: PullError);
}

/// A pull running on its own thread. `cancel()`, or dropping the handle, stops it within
/// about 20 ms, a blocked read included; the partial file stays for a later resume, and the
/// listener hears `on_failed(Cancelled)`.
#[derive(Debug)]
pub struct PullHandle {
    cancel: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
}

impl PullHandle {
    /// Stops the pull.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether the pull has ended (its terminal event sent).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }
}

impl Drop for PullHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Starts `request` on a new thread (see [`pull_with`]); events go to `listener`. A panic in
/// the pull or the listener never leaves the thread: it ends the pull with `Panicked`.
pub fn start_pull(request: PullRequest, listener: Arc<dyn PullListener>) -> PullHandle {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    struct Forward<'a>(&'a dyn PullListener);
    impl PullEvents for Forward<'_> {
        fn progress(&mut self, p: &PullProgress) {
            self.0.on_progress(p);
        }
        fn retrying(&mut self, r: &PullRetry) {
            self.0.on_retry(r);
        }
    }
    let handle = PullHandle {
        cancel: Arc::new(AtomicBool::new(false)),
        finished: Arc::new(AtomicBool::new(false)),
    };
    let (cancel, finished) = (Arc::clone(&handle.cancel), Arc::clone(&handle.finished));
    let l = Arc::clone(&listener);
    let run = move || {
        let result = catch_unwind(AssertUnwindSafe(|| {
            pull_with(&request, &cancel, &mut Forward(&*l))
        }))
        .unwrap_or_else(|p| Err(PullError::Panicked(crate::panics::panic_text(&*p))));
        finished.store(true, Ordering::SeqCst);
        let _ = catch_unwind(AssertUnwindSafe(|| match result {
            Ok(outcome) => l.on_done(outcome),
            Err(e) => l.on_failed(e),
        }));
    };
    if let Err(e) = std::thread::Builder::new()
        .name("edgecascade-pull".into())
        .spawn(run)
    {
        handle.finished.store(true, Ordering::SeqCst);
        listener.on_failed(PullError::Panicked(format!(
            "cannot start the download thread: {e}"
        )));
    }
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            content_range("bytes 100-199/1000"),
            Some((Some(100), Some(1000)))
        );
        assert_eq!(content_range("bytes 100-199/*"), Some((Some(100), None)));
        assert_eq!(content_range("bytes */1000"), Some((None, Some(1000))));
        assert_eq!(content_range("items 1-2/3"), None);
        assert_eq!(content_range("bytes x-2/3"), None);
    }

    #[test]
    fn requests_are_checked() {
        let ok = "a".repeat(64);
        let p = |url: &str, sha: &str| {
            check_request(&PullRequest::new(url, sha, Path::new("/tmp/x.gguf")))
        };
        assert!(p("https://example.com/m.gguf", &ok).is_ok());
        assert!(p("http://127.0.0.1:8080/m.gguf", &ok).is_ok());
        assert!(p("http://example.com/m.gguf", &ok)
            .unwrap_err()
            .to_string()
            .contains("https"));
        assert!(p("ftp://example.com/m.gguf", &ok).is_err());
        assert!(p("https://example.com/m.gguf", "abc")
            .unwrap_err()
            .to_string()
            .contains("64 hex"));
        assert!(p("https://example.com/m.gguf", &"g".repeat(64)).is_err());
    }
}
