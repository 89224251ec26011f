//! The one llama.cpp backend per process, and llama.cpp's log output bridged to `log`.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};

use llama_cpp_2::llama_backend::LlamaBackend;
use once_cell::sync::OnceCell;

use crate::error::LocalError;

static BACKEND: OnceCell<LlamaBackend> = OnceCell::new();

/// The process-wide backend, initialised on first use. llama-cpp-2 refuses a second
/// `LlamaBackend::init()`, so every engine shares this one.
pub(crate) fn backend() -> Result<&'static LlamaBackend, LocalError> {
    BACKEND.get_or_try_init(|| {
        check_cpu()?;
        // Route llama.cpp and ggml logs through `log` before anything can print (the backend
        // loader's lines included: they name the CPU variant picked).
        // SAFETY: the callback is a plain `extern "C"` fn with no user data; it lives forever.
        unsafe { llama_cpp_sys_2::llama_log_set(Some(log_callback), std::ptr::null_mut()) };
        #[cfg(feature = "cpu-variants")]
        variants::load()?;
        LlamaBackend::init().map_err(|e| LocalError::Backend(e.to_string()))
    })
}

/// The CPU backend in use: the variant ggml picked at start-up (`zen4`, `haswell`, `x64`, ...)
/// in a `cpu-variants` build, `built-in` otherwise. `None` before the first model load.
pub fn cpu_backend() -> Option<String> {
    BACKEND.get()?;
    if cfg!(feature = "cpu-variants") {
        CPU_VARIANT.get().cloned()
    } else {
        Some("built-in".into())
    }
}

/// The variant named by the loader's "loaded CPU backend from .../libggml-cpu-NAME.so" line.
static CPU_VARIANT: OnceCell<String> = OnceCell::new();

/// Notes the CPU variant from a loader line, if it is one.
fn note_variant(msg: &str) {
    if let Some(path) = msg
        .split_once("loaded CPU backend from ")
        .map(|(_, p)| p.trim())
    {
        let stem = std::path::Path::new(path)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = stem
            .strip_prefix("libggml-cpu-")
            .or_else(|| stem.strip_prefix("ggml-cpu-"));
        let _ = CPU_VARIANT.set(format!("{} ({path})", name.unwrap_or(&stem)));
    }
}

/// Runtime CPU-variant selection: ggml's CPU backends are shared libraries, one per
/// instruction set; the loader scores each against this CPU and keeps the best.
#[cfg(feature = "cpu-variants")]
mod variants {
    use std::ffi::CString;
    use std::path::{Path, PathBuf};

    use crate::error::LocalError;

    /// Where the CPU backends may be, first match wins: `$EDGECASCADE_BACKENDS_DIR`; the
    /// folder of the module holding this code (the executable, or the app's shared library)
    /// and its `backends/` subfolder, so a binary copied with its libraries finds them; the
    /// folder the build put them in.
    fn candidates() -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(d) = std::env::var_os("EDGECASCADE_BACKENDS_DIR") {
            dirs.push(PathBuf::from(d));
        }
        if let Some(here) = own_dir() {
            dirs.push(here.join("backends"));
            dirs.push(here);
        }
        if let Some(d) = llama_cpp_sys_2::BACKENDS_DIR {
            dirs.push(PathBuf::from(d));
        }
        dirs
    }

    /// The folder of the executable or shared library this code was linked into.
    fn own_dir() -> Option<PathBuf> {
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let addr = (own_dir as *const ()).cast::<libc::c_void>();
        // SAFETY: dladdr only reads the address and fills `info`; `dli_fname` is a C string
        // owned by the loader, copied out at once.
        let found = unsafe { libc::dladdr(addr, &raw mut info) };
        if found == 0 || info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, valid while the module is loaded.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        path.parent().map(Path::to_path_buf)
    }

    fn variants_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let v = n.strip_prefix("libggml-cpu-")?.strip_suffix(".so")?;
                Some(v.to_owned())
            })
            .collect();
        names.sort();
        names
    }

    fn cpu_registered() -> bool {
        // SAFETY: plain queries of ggml's backend registry.
        unsafe {
            (0..llama_cpp_sys_2::ggml_backend_reg_count()).any(|i| {
                let reg = llama_cpp_sys_2::ggml_backend_reg_get(i);
                let name = llama_cpp_sys_2::ggml_backend_reg_name(reg);
                !name.is_null() && std::ffi::CStr::from_ptr(name).to_bytes() == b"CPU"
            })
        }
    }

    /// Loads the best CPU variant this CPU runs (or the one `$EDGECASCADE_CPU_VARIANT` names,
    /// for tests and for working around a bad pick).
    pub(super) fn load() -> Result<(), LocalError> {
        let forced = std::env::var("EDGECASCADE_CPU_VARIANT")
            .ok()
            .filter(|v| !v.is_empty());
        let dirs = candidates();
        for dir in &dirs {
            let found = variants_in(dir);
            if found.is_empty() {
                continue;
            }
            let path = |p: &Path| {
                CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| {
                    LocalError::Backend(format!("backend folder {} has a NUL", p.display()))
                })
            };
            #[allow(clippy::single_match_else)]
            match &forced {
                Some(v) => {
                    if !found.contains(v) {
                        return Err(LocalError::Backend(format!(
                            "EDGECASCADE_CPU_VARIANT={v}: no such CPU variant in {} (have: {})",
                            dir.display(),
                            found.join(", ")
                        )));
                    }
                    let file = path(&dir.join(format!("libggml-cpu-{v}.so")))?;
                    // SAFETY: a valid C path; ggml refuses (null) a variant this CPU cannot run.
                    let reg = unsafe { llama_cpp_sys_2::ggml_backend_load(file.as_ptr()) };
                    if reg.is_null() {
                        return Err(LocalError::Backend(format!(
                            "EDGECASCADE_CPU_VARIANT={v}: this CPU cannot run that variant, or it \
                             failed to load{}",
                            super::take_last_error()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        )));
                    }
                    // ggml registers a library it was asked for by path without logging it.
                    let _ = super::CPU_VARIANT.set(format!("{v} ({})", dir.display()));
                }
                None => {
                    let d = path(dir)?;
                    // SAFETY: a valid C path to a folder.
                    unsafe { llama_cpp_sys_2::ggml_backend_load_all_from_path(d.as_ptr()) };
                }
            }
            if cpu_registered() {
                log::info!(
                    "CPU backend: {}",
                    super::CPU_VARIANT.get().map_or("?", String::as_str)
                );
                return Ok(());
            }
            return Err(LocalError::Backend(format!(
                "none of the CPU variants in {} ({}) runs on this CPU",
                dir.display(),
                found.join(", ")
            )));
        }
        Err(LocalError::Backend(format!(
            "no llama.cpp CPU backend (libggml-cpu-*.so) found; looked in {}. Keep the \
             libraries that came with the binary beside it, or set EDGECASCADE_BACKENDS_DIR",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

thread_local! {
    /// llama.cpp writes a line in pieces (level CONT continues the previous one); we assemble
    /// lines, per thread, so that two threads logging at once do not splice their lines.
    static LINE: RefCell<(u32, String)> = const { RefCell::new((0, String::new())) };

    /// The error lines llama.cpp logged on this thread, for the error message of a call that
    /// returns only a null. Per thread: llama.cpp logs a load's or a context's errors on the
    /// thread that called it, and a concurrent load on another thread must neither take nor
    /// blame them.
    static LAST_ERROR: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Error lines kept between two takes: llama.cpp logs the cause first ("tensor
/// 'token_embd.weight' has wrong shape; expected ...") and a summary last ("failed to load
/// model"); both belong in the error.
const ERROR_LINES: usize = 4;

/// Takes the errors llama.cpp logged on this thread since the previous call, first to last,
/// joined by "; ".
pub(crate) fn take_last_error() -> Option<String> {
    let lines = LAST_ERROR.with(|e| std::mem::take(&mut *e.borrow_mut()));
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
    LINE.with(|line| note_piece(&mut line.borrow_mut(), level, &piece));
}

/// Adds a piece of a line; a whole line is logged (and kept, if an error).
fn note_piece(line: &mut (u32, String), level: llama_cpp_sys_2::ggml_log_level, piece: &str) {
    if level != llama_cpp_sys_2::GGML_LOG_LEVEL_CONT {
        line.0 = level;
    }
    line.1.push_str(piece);
    if line.1.ends_with('\n') {
        let msg = line.1.trim_end();
        note_variant(msg);
        if !msg.is_empty() {
            // llama.cpp's INFO is chatty (hundreds of lines per load): it goes to debug.
            let lvl = match line.0 {
                llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR => log::Level::Error,
                llama_cpp_sys_2::GGML_LOG_LEVEL_WARN => log::Level::Warn,
                llama_cpp_sys_2::GGML_LOG_LEVEL_INFO => log::Level::Debug,
                _ => log::Level::Trace,
            };
            if lvl == log::Level::Error {
                LAST_ERROR.with(|e| {
                    let mut e = e.borrow_mut();
                    if e.len() < ERROR_LINES {
                        e.push(msg.chars().take(300).collect());
                    } else {
                        // Keep the cause (first) and the summary (last).
                        e[ERROR_LINES - 1] = msg.chars().take(300).collect();
                    }
                });
            }
            log::log!(target: "llama.cpp", lvl, "{msg}");
        }
        line.1.clear();
    }
}

/// llama-cpp-sys-2's default x86-64 build compiles ggml for AVX, AVX2, FMA, F16C and BMI2 (its
/// CMake defaults when GGML_NATIVE is off). On a CPU without them ggml would die with SIGILL on
/// the first matrix multiply; refuse with a clear error instead, before any ggml code runs.
// With CPU variants the check is ggml's (each variant scores itself), and this returns Ok.
#[allow(clippy::unnecessary_wraps)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors logged on one thread are that thread's: two loads failing at once each report
    /// their own cause (one process-wide buffer gave each the other's, or none), and a line
    /// written in pieces is not spliced with another thread's pieces.
    #[test]
    fn logged_errors_belong_to_the_thread_that_logged_them() {
        let err = llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR;
        let cont = llama_cpp_sys_2::GGML_LOG_LEVEL_CONT;
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Option<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = ["a.gguf", "b.gguf"]
                .into_iter()
                .map(|name| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        for _ in 0..200 {
                            LINE.with(|l| {
                                let mut l = l.borrow_mut();
                                note_piece(&mut l, err, "failed to load ");
                                note_piece(&mut l, cont, name);
                                note_piece(&mut l, cont, "\n");
                            });
                            std::thread::yield_now();
                        }
                        take_last_error()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, name) in results.iter().zip(["a.gguf", "b.gguf"]) {
            let r = r.as_deref().expect("errors kept");
            assert!(
                r.split("; ").all(|l| l == format!("failed to load {name}")),
                "{name}: {r}"
            );
        }
        // Taken: nothing is left for a later call on the same thread.
        assert_eq!(take_last_error(), None);
    }
}
