//! A persistent ggml threadpool per context.
//!
//! Without OpenMP, a llama.cpp context that has no threadpool attached creates and joins a
//! fresh set of threads for every graph it computes, which is every generated token (ggml-cpu.c,
//! "`disposable_threadpool`"). On `SmolLM2` that cost about 1.3 ms per token, 16% of decode time.
//! llama-bench attaches a persistent pool; so do we.
//!
//! llama-cpp-2 (0.1.160) does not expose the raw `llama_context` pointer that
//! `llama_attach_threadpool` needs, but its `Debug` output is exactly that pointer. We parse it
//! and then verify it by asking llama.cpp for the context's size and batch through the pointer
//! and comparing with the safe API; on any mismatch we skip the pool (slower, still correct).

use std::ptr::NonNull;

use llama_cpp_2::context::LlamaContext;

type NewFn = unsafe extern "C" fn(
    *mut llama_cpp_sys_2::ggml_threadpool_params,
) -> *mut llama_cpp_sys_2::ggml_threadpool;
type FreeFn = unsafe extern "C" fn(*mut llama_cpp_sys_2::ggml_threadpool);

/// `ggml_threadpool_new` and `_free` live in the CPU backend, which with runtime CPU-variant
/// selection is a module loaded at run time: look them up through the backend registry, as
/// llama-bench does. (The same lookup works for the static build.)
fn cpu_threadpool_fns() -> Option<(NewFn, FreeFn)> {
    use std::sync::OnceLock;
    static FNS: OnceLock<Option<(usize, usize)>> = OnceLock::new();
    let (new, free) = (*FNS.get_or_init(|| {
        // SAFETY: registry lookups by name; a null result means "not available".
        unsafe {
            let dev = llama_cpp_sys_2::ggml_backend_dev_by_type(
                llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_CPU,
            );
            if dev.is_null() {
                return None;
            }
            let reg = llama_cpp_sys_2::ggml_backend_dev_backend_reg(dev);
            let new = llama_cpp_sys_2::ggml_backend_reg_get_proc_address(
                reg,
                c"ggml_threadpool_new".as_ptr(),
            );
            let free = llama_cpp_sys_2::ggml_backend_reg_get_proc_address(
                reg,
                c"ggml_threadpool_free".as_ptr(),
            );
            (!new.is_null() && !free.is_null()).then_some((new as usize, free as usize))
        }
    }))?;
    // SAFETY: the registry returned these exact functions, whose C signatures match.
    unsafe {
        Some((
            std::mem::transmute::<usize, NewFn>(new),
            std::mem::transmute::<usize, FreeFn>(free),
        ))
    }
}

/// An owned ggml threadpool.
pub(crate) struct Threadpool(NonNull<llama_cpp_sys_2::ggml_threadpool>, FreeFn);

// SAFETY: a ggml threadpool is used from whichever thread runs the context it is attached to,
// one at a time (the context is behind the slot pool's exclusive ownership).
unsafe impl Send for Threadpool {}

impl Threadpool {
    /// A pool of `n_threads` workers that spin for `poll` (0-100) before sleeping.
    pub(crate) fn new(n_threads: u32, poll: u32) -> Option<Self> {
        let (new, free) = cpu_threadpool_fns()?;
        // SAFETY: plain C calls; the params struct is fully initialised by the default fn.
        unsafe {
            let mut params = llama_cpp_sys_2::ggml_threadpool_params_default(n_threads as i32);
            params.poll = poll.min(100);
            NonNull::new(new(&raw mut params)).map(|p| Self(p, free))
        }
    }

    /// Attaches `decode` (and `batch` for prompt processing) to `ctx`.
    /// Returns false, changing nothing, if the context pointer cannot be verified.
    pub(crate) fn attach(
        ctx: &LlamaContext<'_>,
        decode: &Threadpool,
        batch: Option<&Threadpool>,
    ) -> bool {
        let Some(raw) = raw_context(ctx) else {
            log::warn!("could not attach a persistent threadpool; decode will be slower");
            return false;
        };
        // SAFETY: `raw` was verified to be this context's pointer; both pools outlive the context
        // (the slot drops its context before its pools).
        unsafe {
            llama_cpp_sys_2::llama_attach_threadpool(
                raw,
                decode.0.as_ptr(),
                batch.map_or(std::ptr::null_mut(), |b| b.0.as_ptr()),
            );
        }
        log::debug!("attached a persistent threadpool to context {raw:?}");
        true
    }
}

impl Drop for Threadpool {
    fn drop(&mut self) {
        // SAFETY: we own the pool; its context has already been freed or detached.
        unsafe { (self.1)(self.0.as_ptr()) }
    }
}

/// A verified raw context pointer, for the two llama.cpp calls the safe API lacks.
pub(crate) struct RawContext(*mut llama_cpp_sys_2::llama_context);

// SAFETY: used only by the thread that currently owns the slot holding the context.
unsafe impl Send for RawContext {}

impl RawContext {
    pub(crate) fn of(ctx: &LlamaContext<'_>) -> Option<Self> {
        raw_context(ctx).map(Self)
    }

    /// Sets the decode and prompt thread counts (at most the attached pool's size).
    pub(crate) fn set_threads(&self, decode: u32, batch: u32) {
        // SAFETY: verified pointer to a live context owned by the caller's slot.
        unsafe { llama_cpp_sys_2::llama_set_n_threads(self.0, decode as i32, batch as i32) }
    }
}

/// The context's raw pointer, from its `Debug` output, verified against the safe API.
fn raw_context(ctx: &LlamaContext<'_>) -> Option<*mut llama_cpp_sys_2::llama_context> {
    let dbg = format!("{ctx:?}");
    // The exact shape of llama-cpp-2 0.1.160's derived-style Debug; anything else is refused.
    let hex = dbg
        .strip_prefix("LlamaContext { context: 0x")?
        .strip_suffix(" }")?;
    let hex: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    let addr = usize::from_str_radix(&hex, 16).ok()?;
    let raw = addr as *mut llama_cpp_sys_2::llama_context;
    if raw.is_null() {
        return None;
    }
    // SAFETY: only dereferenced if `dbg` held the context's own pointer; the checks below read
    // two integers through it and compare them with the safe API's answers.
    let (n_ctx, n_batch) = unsafe {
        (
            llama_cpp_sys_2::llama_n_ctx(raw),
            llama_cpp_sys_2::llama_n_batch(raw),
        )
    };
    (n_ctx == ctx.n_ctx() && n_batch == ctx.n_batch()).then_some(raw)
}
