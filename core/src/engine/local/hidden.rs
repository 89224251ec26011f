//! The local model's final hidden state: the output norm's result (`result_norm` in llama.cpp's
//! graphs, the vector the output head turns into logits) of the last token a decode evaluates
//! (or, for experiments, a middle layer's: see [`tensor_name`]).
//!
//! Read through llama.cpp's graph-evaluation callback while the graph computes: no second model,
//! no second pass, and no extra outputs. Asking for the embeddings output instead
//! (`llama_set_embeddings`) makes llama.cpp output every token of the batch, which computes the
//! last layer and the output head for the whole prompt (ADR 0007 measured it). llama-cpp-2
//! 0.1.160 does not expose the callback; it is set on the raw context parameters, accepted only
//! when the raw fields read back equal the safe getters (the same guard as ADR 0001).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_sys_2::{ggml_tensor, llama_context_params};

/// The tensor llama.cpp names the final normed hidden state (llama, qwen2, gemma3, ...).
pub const FINAL: &str = "result_norm";

/// The tensor the tap reads: [`FINAL`], or for experiments `attn_norm-K` (layer K's normed
/// input, the residual stream in the middle of the model) when `EDGECASCADE_HIDDEN_LAYER=K`.
/// A probe records the tensor it was fitted on and refuses to load against another.
pub fn tensor_name() -> &'static str {
    static NAME: once_cell::sync::Lazy<String> =
        once_cell::sync::Lazy::new(|| match std::env::var("EDGECASCADE_HIDDEN_LAYER") {
            Ok(k) if k.trim().parse::<u32>().is_ok() => format!("attn_norm-{}", k.trim()),
            _ => FINAL.to_owned(),
        });
    &NAME
}

/// Where the callback leaves the hidden state. Owned by the slot, which drops its context first,
/// so the pointer llama.cpp holds never dangles.
#[derive(Debug)]
pub(super) struct Tap {
    n_embd: usize,
    /// The tensor read, NUL-terminated.
    name: Vec<u8>,
    /// Copy rows only while a request wants them (the callback is installed for the context's
    /// life, but costs one flag test per graph node while off).
    enabled: AtomicBool,
    /// The last row of the last `result_norm` computed, and whether one was seen since `take`.
    last: Mutex<(Vec<f32>, bool)>,
}

impl Tap {
    /// Boxed: llama.cpp keeps its address for the context's life.
    #[allow(clippy::unnecessary_box_returns)]
    pub(super) fn new(n_embd: usize) -> Box<Self> {
        let mut name = tensor_name().as_bytes().to_vec();
        name.push(0);
        Box::new(Self {
            n_embd,
            name,
            enabled: AtomicBool::new(false),
            last: Mutex::new((vec![0.0; n_embd], false)),
        })
    }

    pub(super) fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
        if let Ok(mut l) = self.last.lock() {
            l.1 = false;
        }
    }

    /// The hidden state of the last token evaluated since the previous call, if any.
    pub(super) fn take(&self) -> Option<Vec<f32>> {
        let mut l = self.last.lock().ok()?;
        if !l.1 {
            return None;
        }
        l.1 = false;
        Some(l.0.clone())
    }

    /// `params` with this tap's callback installed, or `None` when the raw layout does not read
    /// back as expected (then the context runs without hidden states).
    pub(super) fn install(&self, params: &LlamaContextParams) -> Option<LlamaContextParams> {
        if std::mem::size_of::<LlamaContextParams>() != std::mem::size_of::<llama_context_params>()
        {
            return None;
        }
        // SAFETY: same size, checked above; `LlamaContextParams` holds exactly one
        // `llama_context_params` (llama-cpp-2 is pinned), and the fields are verified below
        // before anything is written.
        let mut raw: llama_context_params = unsafe { std::mem::transmute_copy(params) };
        let matches = raw.n_ctx == params.n_ctx().map_or(0, std::num::NonZero::get)
            && raw.n_batch == params.n_batch()
            && raw.n_ubatch == params.n_ubatch()
            && raw.n_threads == params.n_threads()
            && raw.cb_eval.is_none();
        if !matches {
            log::warn!("hidden states unavailable: llama_context_params did not read back");
            return None;
        }
        raw.cb_eval = Some(callback);
        raw.cb_eval_user_data = std::ptr::from_ref(self).cast_mut().cast::<c_void>();
        // SAFETY: the inverse of the read above, on the verified layout.
        Some(unsafe { std::mem::transmute_copy(&raw) })
    }

    fn wants(&self, t: &ggml_tensor) -> bool {
        self.enabled.load(Ordering::Relaxed)
            && t.name[..self.name.len()]
                .iter()
                .zip(&self.name)
                .all(|(&a, &b)| a as u8 == b)
    }

    /// Copies the tensor's last row. `t` is the computed `result_norm`.
    fn copy(&self, t: &ggml_tensor) {
        let rows = t.ne[1].max(0) as usize;
        if t.type_ != llama_cpp_sys_2::GGML_TYPE_F32
            || t.ne[0] as usize != self.n_embd
            || rows == 0
            || t.ne[2] != 1
            || t.ne[3] != 1
        {
            return;
        }
        let Ok(mut l) = self.last.lock() else { return };
        // SAFETY: the destination holds n_embd floats; the source range is the tensor's last
        // row, inside the tensor (rows >= 1, row stride nb[1]). `ggml_backend_tensor_get` copies
        // from whatever backend holds the tensor.
        unsafe {
            llama_cpp_sys_2::ggml_backend_tensor_get(
                std::ptr::from_ref(t).cast_mut(),
                l.0.as_mut_ptr().cast::<c_void>(),
                (rows - 1) * t.nb[1],
                self.n_embd * std::mem::size_of::<f32>(),
            );
        }
        l.1 = true;
    }
}

/// The graph-evaluation callback. `ask`: does the tap want this node's data; else the node is
/// computed and its data can be read. Never unwinds into llama.cpp.
unsafe extern "C" fn callback(t: *mut ggml_tensor, ask: bool, user: *mut c_void) -> bool {
    if t.is_null() || user.is_null() {
        return !ask;
    }
    std::panic::catch_unwind(|| {
        // SAFETY: `user` is the `Tap` this callback was installed with, alive while the
        // context is (see `Tap`); `t` is a live graph node for the duration of the call.
        let (tap, t) = unsafe { (&*user.cast::<Tap>(), &*t) };
        if ask {
            tap.wants(t)
        } else {
            if tap.wants(t) {
                tap.copy(t);
            }
            true
        }
    })
    .unwrap_or(!ask)
}
