//! The local tier: llama.cpp through llama-cpp-2.
//!
//! A [`LocalEngine`] owns one mmap-loaded model and a small pool of inference contexts
//! ("slots"). Each slot remembers the tokens in its KV cache, so a request whose prompt extends
//! an earlier one (the next turn of a chat) only evaluates the new tokens.
//!
//! By concern: `pool` (slots and their contexts), `prompt` (templates, tokenising, fitting),
//! `decode` (the generation loop), `scoring` (option likelihoods, benchmarks); this file holds
//! the types, loading, and the public entry points.

pub mod backend;
mod batch;
pub mod confidence;
pub(crate) mod constraint;
mod decode;
pub mod gguf;
mod governor;
mod hidden;
mod jinja;
mod memory;
mod pool;
mod prompt;
mod scoring;
pub mod text;
mod threadpool;

use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::config::{ContextPolicy, LocalConfig, PrefixCache};
use crate::error::LocalError;
use crate::types::{ChatMessage, ChatRequest, FinishReason, Role, Sampling};

use decode::prefill;
use pool::{common_prefix, Pool};
use prompt::choose_template;

pub use crate::signal::{HiddenStates, TokenSignal};
pub use batch::BatchStats;
pub use gguf::{GgufError, GgufInfo};
pub use hidden::{tensor_name as hidden_tensor_name, FINAL as FINAL_HIDDEN_TENSOR};

/// A token as it is generated, for streaming callers and the cascade.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    /// Text that became final with this token (possibly empty: bytes or a possible stop
    /// sequence are being held).
    pub text: &'a str,
    /// The token's confidence signals.
    pub signal: TokenSignal,
    /// How many tokens have been generated, this one included.
    pub index: u32,
}

/// What a local generation produced.
#[derive(Debug, Clone)]
pub struct LocalOutput {
    /// The text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Prompt tokens actually evaluated (the rest were reused from the KV cache).
    pub prompt_tokens_evaluated: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Per-token signals.
    pub signals: Vec<TokenSignal>,
    /// Milliseconds from the call to the first sampled token.
    pub ttft_ms: f64,
    /// Milliseconds spent evaluating the prompt.
    pub prefill_ms: f64,
    /// Milliseconds from the first sampled token to the last.
    pub decode_ms: f64,
    /// Milliseconds for the whole call.
    pub total_ms: f64,
    /// Milliseconds spent computing confidence signals (part of `decode_ms`).
    pub confidence_ms: f64,
    /// Milliseconds spent in the sampler chain (part of `decode_ms`).
    pub sample_ms: f64,
    /// Milliseconds spent inside llama.cpp's decode for generated tokens (part of `decode_ms`).
    pub decode_call_ms: f64,
    /// Oldest messages dropped to fit (with `truncate_oldest`).
    pub truncated_messages: u32,
    /// The model's final hidden states, when asked for ([`LocalEngine::generate_with`]).
    pub hidden: Option<HiddenStates>,
    /// The gate stopped the generation after the prompt ([`GenerateOptions::gate`]): no token
    /// was decoded.
    pub gated: bool,
}

/// What the prompt's hidden state (and its token count) decides before any token is decoded:
/// `true` stops the generation (the caller goes elsewhere).
pub type Gate<'a> = &'a mut dyn FnMut(&[f32], u32) -> bool;

/// Options of [`LocalEngine::generate_with`].
#[derive(Default)]
pub struct GenerateOptions<'a> {
    /// Return the final hidden states (runs on a single-sequence context, not in a batch).
    pub hidden: bool,
    /// Called with the prompt's hidden state after the prompt is evaluated; `true` ends the
    /// generation with no token decoded (`LocalOutput::gated`). Implies `hidden`.
    pub gate: Option<Gate<'a>>,
}

/// Facts about the loaded model.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ModelInfo {
    /// The file.
    pub path: PathBuf,
    /// `general.name`, or the file stem.
    pub name: String,
    /// `general.architecture`.
    pub architecture: String,
    /// Parameters.
    pub n_params: u64,
    /// Bytes of weights.
    pub size_bytes: u64,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Context the model was trained with.
    pub n_ctx_train: u32,
    /// Context size of each slot.
    pub n_ctx: u32,
    /// Decode threads.
    pub threads: u32,
    /// Prompt threads.
    pub threads_batch: u32,
    /// Where the chat template came from: "model" or "fallback:<name>".
    pub chat_template: String,
    /// Milliseconds the load took.
    pub load_ms: f64,
    /// Layers are offloaded to a GPU (`n_gpu_layers` > 0 in a build with a GPU backend).
    pub gpu_offload: bool,
    /// The llama.cpp CPU backend: the variant picked for this CPU and where it was loaded from
    /// (`zen4 (/path/libggml-cpu-zen4.so)`) in a build with runtime variant selection, else
    /// `built-in`.
    pub cpu_backend: String,
}

/// A rendered conversation: its messages, its tools, its tokens.
type Rendered = (Vec<ChatMessage>, Vec<crate::types::Tool>, Vec<LlamaToken>);

/// The on-device model. `Send + Sync`: concurrent requests share the weights and are served by
/// up to `parallel` contexts; further ones queue.
pub struct LocalEngine {
    /// The structured-output grammar compiler, built on first use.
    grammars: std::sync::OnceLock<Result<constraint::Grammars, LocalError>>,
    pool: Mutex<Pool>,
    returned: Condvar,
    /// With `parallel` > 1 and `batching`: the worker that decodes every request in one batch.
    batcher: Option<batch::Batcher>,
    /// The last rendered conversation, its tools and its tokens.
    rendered: Mutex<Option<Rendered>>,
    template: LlamaChatTemplate,
    /// The model's own Jinja template, when it has a tool section.
    jinja: Option<jinja::Jinja>,
    info: ModelInfo,
    cfg: LocalConfig,
    model: Arc<LlamaModel>,
}

impl std::fmt::Debug for LocalEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngine")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Options that change how a generation runs, beyond the request.
#[derive(Default)]
pub(crate) struct RunOptions<'a> {
    /// Capture the final hidden states, and maybe stop after the prompt.
    pub hidden: GenerateOptions<'a>,
    /// A structured-output constraint, masking what the grammar forbids.
    pub constraint: Option<constraint::Constraint>,
    /// Keep generating past end-of-turn tokens (benchmarks).
    pub ignore_eos: bool,
    /// Do not reuse a slot's cached prefix (benchmarks, cold measurements).
    pub cold: bool,
}

impl LocalEngine {
    fn grammars(&self) -> Result<&constraint::Grammars, LocalError> {
        self.grammars
            .get_or_init(|| constraint::Grammars::new(&self.model))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The constraint for `req`: a forced tool call, else its response format; `None` for
    /// free text.
    fn matcher(&self, req: &ChatRequest) -> Result<Option<constraint::Constraint>, LocalError> {
        let tagged = self.jinja.as_ref().is_none_or(|j| j.tagged);
        if let Some(grammar) = crate::tools::forced_grammar(req, tagged) {
            return self.grammars()?.lark_matcher(grammar).map(Some);
        }
        // Tools under `auto` with no tool section in the model's template: the constrained
        // fallback (text, or one valid call). Without the `structured` feature, decoded
        // freely and checked afterwards.
        if self.jinja.is_none() && cfg!(feature = "structured") {
            if let Some(grammar) = crate::tools::auto_grammar(req) {
                return self.grammars()?.lark_matcher(grammar).map(Some);
            }
        }
        if matches!(req.response_format, crate::types::ResponseFormat::Text) {
            return Ok(None);
        }
        self.grammars()?.matcher(&req.response_format)
    }

    /// This model's tokens for `text`, as llguidance takes them.
    fn grammar_tokens(&self, text: &str) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// Why `calls` are not acceptable answers to `req`: [`crate::tools::check`], plus each
    /// call's arguments checked against its parameter schema with this model's tokenizer.
    pub fn check_calls(
        &self,
        req: &ChatRequest,
        calls: &[crate::types::ToolCall],
    ) -> Result<(), crate::error::Invalid> {
        crate::tools::check(req, calls)?;
        // Without the `structured` feature the argument types go unchecked (no grammar).
        if cfg!(not(feature = "structured")) {
            return Ok(());
        }
        for c in calls {
            let Some(tool) = req.tools.iter().find(|t| t.name == c.name) else {
                continue;
            };
            let schema = crate::tools::parameters(tool)?;
            self.grammars()
                .map_err(|e| e.to_string())?
                .validate_schema(schema, &self.grammar_tokens(c.arguments.trim()))
                .map_err(|e| {
                    format!("the arguments of {:?} do not match its schema: {e}", c.name)
                })?;
        }
        Ok(())
    }

    /// Checks `text` against `format` with this model's tokenizer and the format's grammar:
    /// `Err` says where it fails.
    pub fn check_format(
        &self,
        format: &crate::types::ResponseFormat,
        text: &str,
    ) -> Result<(), crate::error::Invalid> {
        constraint::check_json(format, text)?;
        // Without the `structured` feature: the JSON's shape only (no grammar).
        if !matches!(format, crate::types::ResponseFormat::JsonSchema { .. })
            || cfg!(not(feature = "structured"))
        {
            return Ok(());
        }
        let tokens = self.grammar_tokens(text.trim());
        self.grammars()
            .map_err(|e| crate::error::Invalid(e.to_string()))?
            .validate(format, &tokens)
            .map_err(crate::error::Invalid)
    }
}

/// The context a model gets without `[local] n_ctx`: its training context, at most 4096 (and
/// at least 16). The memory check estimates with the same rule.
pub(super) fn default_n_ctx(n_ctx_train: u32) -> u32 {
    n_ctx_train.clamp(16, 4096)
}

enum Prompt<'a> {
    /// A conversation and the tools offered.
    Chat(&'a [ChatMessage], &'a [crate::types::Tool]),
    /// A conversation plus the start of the assistant's answer, to continue from.
    Continue(&'a [ChatMessage], &'a [crate::types::Tool], &'a str),
    Tokens(Vec<LlamaToken>),
}

impl LocalEngine {
    /// Validates and loads the model named by `cfg.model`. `progress` sees the load fraction.
    pub fn load(
        cfg: &LocalConfig,
        progress: Option<Box<dyn FnMut(f32) + Send>>,
    ) -> Result<Self, LocalError> {
        let path = cfg.model.clone().ok_or_else(|| {
            LocalError::InvalidRequest(
                "no local model configured: set [local] model or pass --model".into(),
            )
        })?;
        let gguf = gguf::validate(&path)?;
        // Before llama.cpp sees the file: a model that does not fit is an error, not an OOM kill.
        memory::check(&gguf, cfg)?;
        let backend = backend::backend()?;
        let t0 = Instant::now();
        let mut params = LlamaModelParams::default()
            .with_use_mmap(true)
            .with_n_gpu_layers(cfg.n_gpu_layers);
        if let Some(mut cb) = progress {
            // The callback runs inside llama.cpp's C loader: a panic in it must not unwind
            // there (it would abort the app). It cancels the load instead.
            params = params.with_progress_callback(move |p| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(p))).is_ok()
            });
        }
        let _ = backend::take_last_error();
        let model =
            LlamaModel::load_from_file(backend, &path, &params).map_err(|e| LocalError::Load {
                path: path.clone(),
                detail: backend::take_last_error().unwrap_or_else(|| e.to_string()),
            })?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        // A managed models folder notes the use, for its least-recently-used eviction.
        crate::models::Store::touch(&path);

        let (template, template_source) = choose_template(
            &model,
            cfg.chat_template.as_deref(),
            gguf.architecture.as_deref(),
        )?;
        // A configured template overrides the model's, tool section and all.
        let jinja = cfg
            .chat_template
            .is_none()
            .then(|| jinja::Jinja::for_model(&model))
            .flatten();
        let n_ctx_train = model.n_ctx_train();
        let n_ctx = cfg.n_ctx.unwrap_or_else(|| default_n_ctx(n_ctx_train));
        if n_ctx > n_ctx_train && n_ctx_train > 0 {
            log::warn!("n_ctx {n_ctx} exceeds the model's training context {n_ctx_train}; quality may suffer");
        }
        let batching = cfg.batching && cfg.parallel > 1;
        let (threads, threads_batch) = thread_counts(cfg, LocalConfig::default_threads());
        let name = gguf.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
        });
        let info = ModelInfo {
            path: path.clone(),
            name,
            architecture: gguf.architecture.clone().unwrap_or_default(),
            n_params: model.n_params(),
            size_bytes: model.size(),
            n_vocab: model.n_vocab().max(0) as u32,
            n_ctx_train,
            n_ctx,
            threads,
            threads_batch,
            chat_template: template_source,
            load_ms,
            gpu_offload: cfg.n_gpu_layers > 0 && backend.supports_gpu_offload(),
            cpu_backend: backend::cpu_backend().unwrap_or_default(),
        };
        let mut cfg = cfg.clone();
        cfg.n_ctx = Some(n_ctx);
        let engine = Self {
            grammars: std::sync::OnceLock::new(),
            pool: Mutex::new(Pool {
                free: Vec::new(),
                created: 0,
            }),
            returned: Condvar::new(),
            batcher: None,
            rendered: Mutex::new(None),
            template,
            jinja,
            info,
            cfg,
            model: Arc::new(model),
        };
        // Create the first context now, so a bad n_ctx or out-of-memory fails at load, not at the
        // first request. A batching engine creates single-sequence contexts only for scoring
        // and benchmarks, on demand.
        let mut engine = engine;
        if batching {
            engine.batcher = Some(batch::Batcher::start(
                Arc::clone(&engine.model),
                engine.context_spec(engine.cfg.parallel),
                engine.info.n_vocab,
            )?);
        } else {
            let slot = engine.new_slot()?;
            let mut pool = engine.pool.lock().expect("pool lock");
            pool.free.push(slot);
            pool.created = 1;
        }
        log::info!(
            "loaded {} ({}, {} params, n_ctx {}, {} threads) in {:.0} ms",
            engine.info.name,
            engine.info.architecture,
            engine.info.n_params,
            n_ctx,
            threads,
            load_ms
        );
        Ok(engine)
    }

    /// Facts about the loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The width of the model's hidden state.
    pub fn n_embd(&self) -> usize {
        self.model.n_embd().max(0) as usize
    }

    /// The graph tensor hidden states are read from (`result_norm`, the final one, unless an
    /// experiment set `EDGECASCADE_HIDDEN_LAYER`).
    pub fn hidden_tensor(&self) -> &'static str {
        hidden::tensor_name()
    }

    /// What continuous batching has done, when this engine batches (`parallel` > 1 and
    /// `batching`).
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(batch::Batcher::stats)
    }

    /// Context size of each slot.
    pub fn n_ctx(&self) -> u32 {
        self.info.n_ctx
    }

    /// Generates a reply to `req`, streaming each token to `on_token`, which may stop generation
    /// by returning `Break` (finish reason `Cancelled`). `cancel` is checked between tokens and
    /// between prompt batches.
    pub fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        self.generate_with(req, GenerateOptions::default(), cancel, on_token)
    }

    /// [`generate`](Self::generate), with the model's hidden states and an optional gate after
    /// the prompt.
    pub fn generate_with(
        &self,
        req: &ChatRequest,
        opts: GenerateOptions<'_>,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        validate_request(req)?;
        let constraint = self.matcher(req)?;
        self.run(
            Prompt::Chat(&req.messages, crate::tools::offered(req)),
            req.max_tokens,
            &req.sampling,
            &req.stop,
            RunOptions {
                constraint,
                hidden: opts,
                ..RunOptions::default()
            },
            cancel,
            on_token,
        )
    }

    /// Continues an assistant answer that stopped at `draft` (after a mid-stream escalation
    /// whose remote call failed). The draft's tokens are normally still in the slot's cache, so
    /// only new tokens are computed. The output text holds only the continuation.
    pub fn continue_answer(
        &self,
        req: &ChatRequest,
        draft: &str,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        validate_request(req)?;
        // A structured answer continues from where the draft left the grammar.
        let constraint = match self.matcher(req)? {
            Some(mut m) => {
                m.advance(&self.grammar_tokens(draft));
                Some(m)
            }
            None => None,
        };
        self.run(
            Prompt::Continue(&req.messages, crate::tools::offered(req), draft),
            req.max_tokens,
            &req.sampling,
            &req.stop,
            RunOptions {
                constraint,
                ..RunOptions::default()
            },
            cancel,
            on_token,
        )
    }
}

/// Decode and prompt threads per context, on a machine with `cores` cores. Separate parallel
/// contexts (`parallel` > 1 without batching) share the cores: by default each gets its share
/// for both, so they never oversubscribe the CPU (4 contexts x 2 threads on 2 cores ran at a
/// third of the speed). Prompt threads included: a context whose prompt pool is larger than its
/// decode pool keeps a second pool, whose workers spin on other contexts' cores after each
/// prompt. One context (alone, or batching all requests) uses every core.
fn thread_counts(cfg: &LocalConfig, cores: u32) -> (u32, u32) {
    let separate = !cfg.batching && cfg.parallel > 1;
    let share = if separate {
        (cores / cfg.parallel).max(1)
    } else {
        cores.max(1)
    };
    (
        cfg.threads.unwrap_or(share),
        cfg.threads_batch.unwrap_or(share),
    )
}

impl ChatRequest {
    /// Checks the request as the runtime does before any tier sees it (messages, sampling
    /// ranges, the response format's schema, the tools): `Err` is an `InvalidRequest` naming
    /// what is wrong. Whether a schema can be enforced is known only to a loaded model.
    pub fn validate(&self) -> Result<(), crate::error::Error> {
        Ok(validate_request(self)?)
    }
}

/// Rejects requests llama.cpp would misbehave on.
pub(crate) fn validate_request(req: &ChatRequest) -> Result<(), LocalError> {
    let bad = |m: String| Err(LocalError::InvalidRequest(m));
    if req.messages.is_empty() {
        return bad("messages must not be empty".into());
    }
    if req.max_tokens == 0 {
        return bad("max_tokens must be at least 1".into());
    }
    let s = &req.sampling;
    if !s.temperature.is_finite() || s.temperature < 0.0 {
        return bad(format!("temperature must be >= 0, got {}", s.temperature));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return bad(format!("top_p must be in (0, 1], got {}", s.top_p));
    }
    if !(0.0..=1.0).contains(&s.min_p) {
        return bad(format!("min_p must be in [0, 1], got {}", s.min_p));
    }
    if !s.repeat_penalty.is_finite() || s.repeat_penalty <= 0.0 {
        return bad(format!(
            "repeat_penalty must be > 0, got {}",
            s.repeat_penalty
        ));
    }
    constraint::schema_of(&req.response_format).map_err(LocalError::InvalidRequest)?;
    crate::tools::validate(req).map_err(LocalError::InvalidRequest)?;
    Ok(())
}

/// Checks a model file without loading it.
pub fn verify_model(path: &Path) -> Result<GgufInfo, GgufError> {
    gguf::validate(path)
}

#[cfg(test)]
mod tests {
    use super::{thread_counts, LocalConfig};

    fn cfg(parallel: u32, batching: bool) -> LocalConfig {
        LocalConfig {
            parallel,
            batching,
            ..LocalConfig::default()
        }
    }

    #[test]
    fn one_context_uses_every_core_for_both() {
        assert_eq!(thread_counts(&cfg(1, true), 2), (2, 2));
        assert_eq!(thread_counts(&cfg(1, false), 8), (8, 8));
        // One batched context serves all parallel requests.
        assert_eq!(thread_counts(&cfg(4, true), 2), (2, 2));
    }

    #[test]
    fn separate_contexts_share_the_cores_for_prompts_too() {
        // Two prompts at once on 2 cores: one thread each, not two pools of two.
        assert_eq!(thread_counts(&cfg(2, false), 2), (1, 1));
        assert_eq!(thread_counts(&cfg(4, false), 8), (2, 2));
        // Never zero.
        assert_eq!(thread_counts(&cfg(4, false), 2), (1, 1));
    }

    #[test]
    fn explicit_counts_win() {
        let mut c = cfg(2, false);
        c.threads = Some(3);
        c.threads_batch = Some(5);
        assert_eq!(thread_counts(&c, 2), (3, 5));
        let mut c = cfg(1, true);
        c.threads = Some(1);
        assert_eq!(
            thread_counts(&c, 4),
            (1, 4),
            "prompt threads keep their own default"
        );
    }
}
