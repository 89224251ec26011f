//! Logs where an app can see them: every `log` record of the runtime (llama.cpp's own lines
//! included, under the target `llama.cpp`) handed to one sink the app installs, for logcat,
//! os_log or its own logger. A leaf: it imports nothing of the crate.
//!
//! Apps that already install a `log` logger of their own (the desktop binary uses env_logger)
//! keep it: [`set_log_sink`] then says so instead of replacing it.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, RwLock};

/// How much to log, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum LogLevel {
    /// Failures: a model that does not load, a remote tier that fails.
    Error,
    /// Something degraded: a retry, a fallback, a refused option.
    Warn,
    /// Milestones: a model loaded, a CPU variant picked.
    Info,
    /// Detail for debugging, llama.cpp's load messages among it.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn filter(self) -> log::LevelFilter {
        match self {
            Self::Error => log::LevelFilter::Error,
            Self::Warn => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }

    fn of(level: log::Level) -> Self {
        match level {
            log::Level::Error => Self::Error,
            log::Level::Warn => Self::Warn,
            log::Level::Info => Self::Info,
            log::Level::Debug => Self::Debug,
            log::Level::Trace => Self::Trace,
        }
    }
}

/// Receives log lines, on whichever thread logged them (generation threads included). A panic
/// or a foreign exception in here is swallowed: a logger never fails a request.
pub trait LogSink: Send + Sync {
    /// One line: its level, its target (`llama.cpp`, or the Rust module path) and the message.
    fn log(&self, level: LogLevel, target: &str, message: &str);
}

static SINK: RwLock<Option<Arc<dyn LogSink>>> = RwLock::new(None);
static INSTALL: Once = Once::new();
/// Whether the process's `log` logger is ours (set once, by the first install).
static OURS: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread is inside the sink: a sink that logs does not loop.
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
}

struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if IN_SINK.with(Cell::get) {
            return;
        }
        let Some(sink) = SINK
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        IN_SINK.with(|f| f.set(true));
        let message = record.args().to_string();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            sink.log(LogLevel::of(record.level()), record.target(), &message);
        }));
        IN_SINK.with(|f| f.set(false));
    }

    fn flush(&self) {}
}

/// Why a sink could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("another logger is installed in this process; its records go there")]
pub struct LoggerTaken;

/// Sends the runtime's log lines at `level` and above to `sink`, replacing any sink installed
/// before. Fails only when the process already has a `log` logger that is not ours.
pub fn set_log_sink(sink: Arc<dyn LogSink>, level: LogLevel) -> Result<(), LoggerTaken> {
    INSTALL.call_once(|| OURS.store(log::set_logger(&Forward).is_ok(), Ordering::SeqCst));
    if !installed_here() {
        return Err(LoggerTaken);
    }
    *SINK
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sink);
    log::set_max_level(level.filter());
    Ok(())
}

/// Stops sending log lines to the sink (none are formatted after this returns).
pub fn clear_log_sink() {
    if installed_here() {
        log::set_max_level(log::LevelFilter::Off);
    }
    *SINK
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
}

/// Whether the process's `log` logger is ours.
fn installed_here() -> bool {
    OURS.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Lines(Mutex<Vec<(LogLevel, String, String)>>);

    impl LogSink for Lines {
        fn log(&self, level: LogLevel, target: &str, message: &str) {
            // A sink that logs must not loop.
            log::error!("inside the sink");
            self.0
                .lock()
                .unwrap()
                .push((level, target.to_owned(), message.to_owned()));
        }
    }

    struct Panics;

    impl LogSink for Panics {
        fn log(&self, _: LogLevel, _: &str, _: &str) {
            panic!("a broken app logger");
        }
    }

    #[test]
    fn lines_reach_the_sink_at_its_level_and_stop_when_cleared() {
        let lines = Arc::new(Lines::default());
        set_log_sink(lines.clone(), LogLevel::Info).unwrap();
        log::info!(target: "llama.cpp", "loaded");
        log::debug!("too detailed");
        log::warn!("a retry");
        // Other tests of this process log too: only this test's lines count.
        let mine = |l: &(LogLevel, String, String)| {
            ["loaded", "too detailed", "a retry"].contains(&l.2.as_str())
        };
        let got: Vec<_> = lines
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| mine(l))
            .cloned()
            .collect();
        assert_eq!(
            got,
            vec![
                (LogLevel::Info, "llama.cpp".into(), "loaded".into()),
                (
                    LogLevel::Warn,
                    "edgecascade::logging::tests".into(),
                    "a retry".into()
                ),
            ]
        );
        // A panicking sink loses its line, nothing else.
        set_log_sink(Arc::new(Panics), LogLevel::Trace).unwrap();
        log::error!("into the broken sink");
        set_log_sink(lines.clone(), LogLevel::Trace).unwrap();
        log::trace!("after it");
        let has = |m: &str| lines.0.lock().unwrap().iter().any(|l| l.2 == m);
        assert!(has("after it") && !has("into the broken sink"));
        clear_log_sink();
        log::error!("nobody hears this");
        assert!(!has("nobody hears this"));
        assert!(
            !has("inside the sink"),
            "a sink that logs looped into itself"
        );
    }
}
