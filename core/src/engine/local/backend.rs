//! The one llama.cpp backend per process, and llama.cpp's log output bridged to `log`.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Mutex;

use llama_cpp_2::llama_backend::LlamaBackend;
use once_cell::sync::OnceCell;

use crate::error::LocalError;

static BACKEND: OnceCell<LlamaBackend> = OnceCell::new();

/// The process-wide backend, initialised on first use. llama-cpp-2 refuses a second
/// `LlamaBackend::init()`, so every engine shares this one.
pub(crate) fn backend() -> Result<&'static LlamaBackend, LocalError> {
    BACKEND.get_or_try_init(|| {
        check_cpu()?;
        // With runtime CPU-variant selection, ggml's backends are shared libraries: load them
        // (from $EDGECASCADE_BACKENDS_DIR, else the build's own folder) before init.
        #[cfg(feature = "cpu-variants")]
        match std::env::var_os("EDGECASCADE_BACKENDS_DIR") {
            Some(dir) => {
                llama_cpp_2::llama_backend::load_backends_from_path(std::path::Path::new(&dir))
            }
            None => llama_cpp_2::llama_backend::load_backends(),
        }
        // Route llama.cpp and ggml logs through `log` before anything can print.
        // SAFETY: the callback is a plain `extern "C"` fn with no user data; it lives forever.
        unsafe { llama_cpp_sys_2::llama_log_set(Some(log_callback), std::ptr::null_mut()) };
        LlamaBackend::init().map_err(|e| LocalError::Backend(e.to_string()))
    })
}

/// llama.cpp writes a line in pieces (level CONT continues the previous one); we assemble lines.
static LINE: Mutex<(u32, String)> = Mutex::new((0, String::new()));

/// The last error line llama.cpp logged, for error messages when it returns only a null.
static LAST_ERROR: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Error lines kept between two takes: llama.cpp logs the cause first ("tensor
/// 'token_embd.weight' has wrong shape; expected ...") and a summary last ("failed to load
/// model"); both belong in the error.
const ERROR_LINES: usize = 4;

/// Takes the errors llama.cpp logged since the previous call, first to last, joined by "; ".
pub(crate) fn take_last_error() -> Option<String> {
    let lines = std::mem::take(&mut *LAST_ERROR.lock().ok()?);
    (!lines.is_empty()).then(|| lines.join("; "))
}

unsafe extern "C" fn log_callback(
    level: llama_cpp_sys_2::ggml_log_level,
    text: *const c_char,
    user: *mut c_void,
) {
    // A panic must not unwind into C (it would abort the app): the app's logger runs in here.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the arguments are llama.cpp's, passed through unchanged.
        unsafe { log_line(level, text, user) }
    });
}

unsafe fn log_line(level: llama_cpp_sys_2::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the call.
    let piece = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let Ok(mut line) = LINE.lock() else { return };
    if level != llama_cpp_sys_2::GGML_LOG_LEVEL_CONT {
        line.0 = level;
    }
    line.1.push_str(&piece);
    if line.1.ends_with('\n') {
        let msg = line.1.trim_end();
        if !msg.is_empty() {
            // llama.cpp's INFO is chatty (hundreds of lines per load): it goes to debug.
            let lvl = match line.0 {
                llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR => log::Level::Error,
                llama_cpp_sys_2::GGML_LOG_LEVEL_WARN => log::Level::Warn,
                llama_cpp_sys_2::GGML_LOG_LEVEL_INFO => log::Level::Debug,
                _ => log::Level::Trace,
            };
            if lvl == log::Level::Error {
                if let Ok(mut e) = LAST_ERROR.lock() {
                    if e.len() < ERROR_LINES {
                        e.push(msg.chars().take(300).collect());
                    } else {
                        // Keep the cause (first) and the summary (last).
                        e[ERROR_LINES - 1] = msg.chars().take(300).collect();
                    }
                }
            }
            log::log!(target: "llama.cpp", lvl, "{msg}");
        }
        line.1.clear();
    }
}

/// llama-cpp-sys-2's default x86-64 build compiles ggml for AVX, AVX2, FMA, F16C and BMI2 (its
/// CMake defaults when GGML_NATIVE is off). On a CPU without them ggml would die with SIGILL on
/// the first matrix multiply; refuse with a clear error instead, before any ggml code runs.
fn check_cpu() -> Result<(), LocalError> {
    #[cfg(all(target_arch = "x86_64", not(feature = "cpu-variants")))]
    {
        let missing: Vec<&str> = [
            ("avx", is_x86_feature_detected!("avx")),
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("f16c", is_x86_feature_detected!("f16c")),
            ("bmi2", is_x86_feature_detected!("bmi2")),
        ]
        .into_iter()
        .filter_map(|(name, ok)| (!ok).then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(LocalError::Backend(format!(
                "this CPU lacks {} which this build of llama.cpp requires; rebuild on this machine \
                 (RUSTFLAGS=-Ctarget-cpu=native) or with the cpu-variants feature",
                missing.join(", ")
            )));
        }
    }
    Ok(())
}
