//! The local tier: llama.cpp through llama-cpp-2.
//!
//! A [`LocalEngine`] owns one mmap-loaded model and a small pool of inference contexts
//! ("slots"). Each slot remembers the tokens in its KV cache, so a request whose prompt extends
//! an earlier one (the next turn of a chat) only evaluates the new tokens.

pub mod backend;
pub mod confidence;
pub mod gguf;
mod governor;
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

pub use confidence::TokenSignal;
pub use gguf::{GgufError, GgufInfo};

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
}

/// An inference context and the tokens its KV cache holds for sequence 0. The slot owns what
/// the context borrows (the model, its threadpools) and drops the context first (see `Drop`),
/// so its soundness does not rest on where the slot is kept or on field order elsewhere.
struct Slot {
    /// Borrows `model` and uses `_pools`; dropped explicitly before both.
    ctx: std::mem::ManuallyDrop<LlamaContext<'static>>,
    tokens: Vec<LlamaToken>,
    /// Leading cached tokens that were computed exactly as a cold run computes them: whole
    /// `n_batch`-aligned chunks of prompt evaluation (see `PrefixCache::Exact`).
    exact_rows: usize,
    /// Adapts the decode thread count to contention (when the context pointer is usable).
    governor: Option<(governor::Governor, threadpool::RawContext)>,
    _pools: Vec<threadpool::Threadpool>,
    _model: Arc<LlamaModel>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: `ctx` is dropped exactly once, here, while the model and threadpools it
        // refers to are still alive (they are fields, dropped after this body).
        unsafe { std::mem::ManuallyDrop::drop(&mut self.ctx) };
    }
}

/// A pool of slots; requests beyond `max` wait.
struct Pool {
    free: Vec<Slot>,
    created: usize,
}

/// The on-device model. `Send + Sync`: concurrent requests share the weights and are served by
/// up to `parallel` contexts; further ones queue.
pub struct LocalEngine {
    pool: Mutex<Pool>,
    returned: Condvar,
    /// The last rendered conversation and its tokens.
    rendered: Mutex<Option<(Vec<ChatMessage>, Vec<LlamaToken>)>>,
    template: LlamaChatTemplate,
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
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunOptions {
    /// Keep generating past end-of-turn tokens (benchmarks).
    pub ignore_eos: bool,
    /// Do not reuse a slot's cached prefix (benchmarks, cold measurements).
    pub cold: bool,
}

enum Prompt<'a> {
    Chat(&'a [ChatMessage]),
    /// A conversation plus the start of the assistant's answer, to continue from.
    Continue(&'a [ChatMessage], &'a str),
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

        let (template, template_source) = choose_template(
            &model,
            cfg.chat_template.as_deref(),
            gguf.architecture.as_deref(),
        )?;
        let n_ctx_train = model.n_ctx_train();
        let n_ctx = cfg.n_ctx.unwrap_or_else(|| n_ctx_train.clamp(16, 4096));
        if n_ctx > n_ctx_train && n_ctx_train > 0 {
            log::warn!("n_ctx {n_ctx} exceeds the model's training context {n_ctx_train}; quality may suffer");
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u32;
        // Parallel contexts share the cores: by default each gets its share, so they never
        // oversubscribe the CPU (4 contexts x 2 threads on 2 cores ran at a third of the speed).
        let threads = cfg
            .threads
            .unwrap_or_else(|| (LocalConfig::default_threads() / cfg.parallel).max(1));
        let threads_batch = cfg.threads_batch.unwrap_or(cores);
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
        };
        let mut cfg = cfg.clone();
        cfg.n_ctx = Some(n_ctx);
        let engine = Self {
            pool: Mutex::new(Pool {
                free: Vec::new(),
                created: 0,
            }),
            returned: Condvar::new(),
            rendered: Mutex::new(None),
            template,
            info,
            cfg,
            model: Arc::new(model),
        };
        // Create the first context now, so a bad n_ctx or out-of-memory fails at load, not at the
        // first request.
        let slot = engine.new_slot()?;
        let mut pool = engine.pool.lock().expect("pool lock");
        pool.free.push(slot);
        pool.created = 1;
        drop(pool);
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

    /// Context size of each slot.
    pub fn n_ctx(&self) -> u32 {
        self.info.n_ctx
    }

    /// Forgets every idle slot's cached prefix (the next request starts cold). Slots in use are
    /// untouched.
    pub fn clear_cache(&self) {
        if let Ok(mut pool) = self.pool.lock() {
            for slot in &mut pool.free {
                slot.ctx.clear_kv_cache();
                slot.tokens.clear();
                slot.exact_rows = 0;
            }
        }
    }

    /// Drops the cached rendering of `messages`, if that is what the one-entry render cache
    /// holds, so no conversation stays in memory after its request.
    pub fn forget_rendered(&self, messages: &[ChatMessage]) {
        if let Ok(mut cache) = self.rendered.lock() {
            if cache
                .as_ref()
                .is_some_and(|(m, _)| m.as_slice() == messages)
            {
                *cache = None;
            }
        }
    }

    /// Frees every idle context (with its KV cache) and the render cache; the model stays
    /// mapped. Contexts in use are untouched and return to the pool when their request ends.
    /// The next request creates the context it needs.
    pub fn trim(&self) {
        let idle = match self.pool.lock() {
            Ok(mut pool) => {
                pool.created -= pool.free.len();
                std::mem::take(&mut pool.free)
            }
            Err(_) => Vec::new(),
        };
        drop(idle);
        if let Ok(mut cache) = self.rendered.lock() {
            *cache = None;
        }
    }

    /// Contexts alive now (in use or idle).
    pub fn contexts(&self) -> usize {
        self.pool.lock().map_or(0, |p| p.created)
    }

    /// Tokens the chat template turns `messages` into (with the assistant prefix).
    pub fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<u32, LocalError> {
        Ok(self.render(messages)?.len() as u32)
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
        validate_request(req)?;
        self.run(
            Prompt::Chat(&req.messages),
            req.max_tokens,
            &req.sampling,
            &req.stop,
            RunOptions::default(),
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
        self.run(
            Prompt::Continue(&req.messages, draft),
            req.max_tokens,
            &req.sampling,
            &req.stop,
            RunOptions::default(),
            cancel,
            on_token,
        )
    }

    /// Scores each of `options` as the start of the assistant's answer to `messages`: the
    /// mean log-probability per token of its text. The prompt is evaluated once; each option is
    /// evaluated on top of it and removed again. For choosing among labels (classification,
    /// multiple choice) by likelihood rather than by generating a label, which small models do
    /// far better.
    pub fn score_options(
        &self,
        messages: &[ChatMessage],
        options: &[String],
        cancel: &AtomicBool,
    ) -> Result<Vec<f64>, LocalError> {
        if messages.is_empty() {
            return Err(LocalError::InvalidRequest(
                "messages must not be empty".into(),
            ));
        }
        let (tokens, _) = self.fit_prompt(messages)?;
        let vocab = self.model.vocab();
        let option_tokens: Vec<Vec<LlamaToken>> = options
            .iter()
            .map(|o| vocab.tokenize(o.as_bytes(), false, false))
            .collect();
        if let Some(i) = option_tokens.iter().position(Vec::is_empty) {
            return Err(LocalError::InvalidRequest(format!("option {i} is empty")));
        }
        let longest = option_tokens.iter().map(Vec::len).max().unwrap_or(0);
        let n_ctx = self.info.n_ctx;
        if (tokens.len() + longest) as u32 >= n_ctx {
            return Err(LocalError::ContextOverflow {
                prompt_tokens: (tokens.len() + longest) as u32,
                n_ctx,
            });
        }
        let Some(mut guard) = self.acquire(&tokens, cancel)? else {
            return Err(LocalError::Cancelled);
        };
        let slot = guard.slot.as_mut().expect("slot present");
        let n_batch = slot.ctx.n_batch() as usize;
        if longest > n_batch {
            return Err(LocalError::InvalidRequest(format!(
                "an option of {longest} tokens is longer than n_batch ({n_batch})"
            )));
        }
        // A cold evaluation of the prompt, in aligned chunks: its rows are exact afterwards.
        slot.tokens.clear();
        slot.exact_rows = 0;
        slot.ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(n_batch.max(1), 1);
        if prefill(&mut slot.ctx, &mut batch, &tokens, 0, n_batch, cancel)?.is_some() {
            return Err(LocalError::Cancelled);
        }
        let first = slot.ctx.get_logits_ith(batch.n_tokens() - 1).to_vec();
        let mut scores = Vec::with_capacity(options.len());
        for ot in &option_tokens {
            let mut lp = f64::from(confidence::token_signal(&first, ot[0].0 as usize).logprob);
            if ot.len() > 1 {
                batch.clear();
                for (i, &t) in ot[..ot.len() - 1].iter().enumerate() {
                    let pos = tokens.len() + i;
                    batch
                        .add(t, pos as i32, &[0], true)
                        .map_err(|e| LocalError::Decode {
                            pos: pos as u32,
                            detail: e.to_string(),
                        })?;
                }
                if let Err(e) = slot.ctx.decode(&mut batch) {
                    slot.ctx.clear_kv_cache();
                    return Err(LocalError::Decode {
                        pos: tokens.len() as u32,
                        detail: e.to_string(),
                    });
                }
                for (j, t) in ot.iter().enumerate().skip(1) {
                    let logits = slot.ctx.get_logits_ith((j - 1) as i32);
                    lp += f64::from(confidence::token_signal(logits, t.0 as usize).logprob);
                }
                let removed = slot
                    .ctx
                    .clear_kv_cache_seq(Some(0), Some(tokens.len() as u32), None)
                    .unwrap_or(false);
                if !removed {
                    slot.ctx.clear_kv_cache();
                    return Err(LocalError::InvalidRequest(
                        "the context could not drop an option's cache rows".into(),
                    ));
                }
            }
            scores.push(lp / ot.len() as f64);
        }
        slot.exact_rows = tokens.len() / n_batch * n_batch;
        slot.tokens = tokens;
        Ok(scores)
    }

    /// One benchmark repetition: a cold prompt of exactly `prompt_tokens` tokens, then exactly
    /// `gen_tokens` greedy tokens, through the same path as a real request.
    pub fn bench_once(
        &self,
        prompt_tokens: u32,
        gen_tokens: u32,
    ) -> Result<LocalOutput, LocalError> {
        let vocab = self.model.vocab();
        let seed_text = "The quick brown fox jumps over the lazy dog while the engineers measure tokens per second. ";
        let mut tokens = Vec::with_capacity(prompt_tokens as usize);
        if vocab.should_add_bos() {
            tokens.push(vocab.bos());
        }
        let piece = vocab.tokenize(seed_text.as_bytes(), false, false);
        while tokens.len() < prompt_tokens as usize {
            tokens.extend(
                piece
                    .iter()
                    .copied()
                    .take(prompt_tokens as usize - tokens.len()),
            );
        }
        let sampling = Sampling {
            temperature: 0.0,
            ..Sampling::default()
        };
        let opts = RunOptions {
            ignore_eos: true,
            cold: true,
        };
        self.run(
            Prompt::Tokens(tokens),
            gen_tokens,
            &sampling,
            &[],
            opts,
            &AtomicBool::new(false),
            &mut |_| ControlFlow::Continue(()),
        )
    }

    fn new_slot(&self) -> Result<Slot, LocalError> {
        let n_ctx = self.info.n_ctx;
        let n_batch = self.cfg.n_batch.min(n_ctx);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(self.info.threads as i32)
            .with_n_threads_batch(self.info.threads_batch as i32);
        let backend = backend::backend()?;
        let ctx = self
            .model
            .new_context(backend, params)
            .map_err(|e| LocalError::Context {
                n_ctx,
                detail: backend::take_last_error().unwrap_or_else(|| e.to_string()),
            })?;
        // SAFETY: the context borrows the model behind `self.model`'s `Arc`. The slot keeps a
        // clone of that `Arc` and drops the context before it (`Slot`'s `Drop`), so the model
        // outlives the context wherever the slot goes.
        let ctx: LlamaContext<'static> =
            unsafe { std::mem::transmute::<LlamaContext<'_>, LlamaContext<'static>>(ctx) };
        let (threads, threads_batch, poll) =
            (self.info.threads, self.info.threads_batch, self.cfg.poll);
        let mut pools = Vec::new();
        if let Some(decode) = threadpool::Threadpool::new(threads, poll) {
            let batch = if threads_batch == threads {
                None
            } else {
                threadpool::Threadpool::new(threads_batch, poll)
            };
            if threadpool::Threadpool::attach(&ctx, &decode, batch.as_ref()) {
                pools.push(decode);
                pools.extend(batch);
            }
        }
        let governor = if self.cfg.adaptive_threads && threads > 1 && !pools.is_empty() {
            threadpool::RawContext::of(&ctx).map(|raw| (governor::Governor::new(threads), raw))
        } else {
            None
        };
        Ok(Slot {
            ctx: std::mem::ManuallyDrop::new(ctx),
            tokens: Vec::new(),
            exact_rows: 0,
            governor,
            _pools: pools,
            _model: Arc::clone(&self.model),
        })
    }

    /// Takes the free slot whose cache shares the longest prefix with `prompt`, creates one if the
    /// pool has room, or waits for one. `Ok(None)` when `cancel` is set while waiting: the
    /// request leaves the queue at once.
    fn acquire(
        &self,
        prompt: &[LlamaToken],
        cancel: &AtomicBool,
    ) -> Result<Option<SlotGuard<'_>>, LocalError> {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if !pool.free.is_empty() {
                let best = (0..pool.free.len())
                    .max_by_key(|&i| common_prefix(&pool.free[i].tokens, prompt))
                    .unwrap_or(0);
                let slot = pool.free.swap_remove(best);
                return Ok(Some(SlotGuard {
                    engine: self,
                    slot: Some(slot),
                }));
            }
            if pool.created < self.cfg.parallel as usize {
                // Context creation mutates the model in llama.cpp: keep it under the pool lock.
                let slot = self.new_slot()?;
                pool.created += 1;
                return Ok(Some(SlotGuard {
                    engine: self,
                    slot: Some(slot),
                }));
            }
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            // Returned slots wake a waiter; the timeout only bounds how late a cancel is seen.
            pool = self
                .returned
                .wait_timeout(pool, std::time::Duration::from_millis(10))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Renders through a one-entry cache: the runtime counts a request's prompt tokens for the
    /// router, then generation renders the same messages; the second call is a lookup.
    fn render(&self, messages: &[ChatMessage]) -> Result<Vec<LlamaToken>, LocalError> {
        if let Ok(cache) = self.rendered.lock() {
            if let Some((m, t)) = cache.as_ref() {
                if m.as_slice() == messages {
                    return Ok(t.clone());
                }
            }
        }
        let tokens = self.render_uncached(messages)?;
        if let Ok(mut cache) = self.rendered.lock() {
            *cache = Some((messages.to_vec(), tokens.clone()));
        }
        Ok(tokens)
    }

    fn render_uncached(&self, messages: &[ChatMessage]) -> Result<Vec<LlamaToken>, LocalError> {
        let msgs = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.as_str().to_owned(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LocalError::InvalidRequest(format!("message contains a NUL byte: {e}")))?;
        let text = self
            .model
            .apply_chat_template(&self.template, &msgs, true)
            .map_err(|e| LocalError::Template(e.to_string()))?;
        // The template already holds BOS where the model wants it; special tokens are parsed.
        let vocab = self.model.vocab();
        let mut tokens = vocab.tokenize(text.as_bytes(), false, true);
        if vocab.should_add_bos() && tokens.first() != Some(&vocab.bos()) {
            tokens.insert(0, vocab.bos());
        }
        Ok(tokens)
    }

    /// Renders the conversation, dropping the oldest turns if the policy allows.
    fn fit_prompt(&self, messages: &[ChatMessage]) -> Result<(Vec<LlamaToken>, u32), LocalError> {
        let n_ctx = self.info.n_ctx;
        let tokens = self.render(messages)?;
        if (tokens.len() as u32) < n_ctx {
            return Ok((tokens, 0));
        }
        if self.cfg.context_policy == ContextPolicy::TruncateOldest {
            // Keep system messages and the last message; drop the oldest others one at a time.
            let mut kept: Vec<ChatMessage> = messages.to_vec();
            let mut dropped = 0u32;
            while let Some(i) = kept.iter().position(|m| m.role != Role::System) {
                if i + 1 >= kept.len() {
                    break;
                }
                kept.remove(i);
                dropped += 1;
                let t = self.render(&kept)?;
                if (t.len() as u32) < n_ctx {
                    log::info!(
                        "dropped the {dropped} oldest messages to fit the {n_ctx}-token context"
                    );
                    return Ok((t, dropped));
                }
            }
        }
        Err(LocalError::ContextOverflow {
            prompt_tokens: tokens.len() as u32,
            n_ctx,
        })
    }

    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    fn run(
        &self,
        prompt: Prompt<'_>,
        max_tokens: u32,
        sampling: &Sampling,
        stop: &[String],
        opts: RunOptions,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        let t0 = Instant::now();
        let n_ctx = self.info.n_ctx;
        let (tokens, truncated) = match prompt {
            Prompt::Chat(messages) => self.fit_prompt(messages)?,
            Prompt::Continue(messages, draft) => {
                let (mut t, n) = self.fit_prompt(messages)?;
                t.extend(self.model.vocab().tokenize(draft.as_bytes(), false, false));
                if t.len() as u32 >= n_ctx {
                    return Err(LocalError::ContextOverflow {
                        prompt_tokens: t.len() as u32,
                        n_ctx,
                    });
                }
                (t, n)
            }
            Prompt::Tokens(t) => {
                if t.len() as u32 >= n_ctx {
                    return Err(LocalError::ContextOverflow {
                        prompt_tokens: t.len() as u32,
                        n_ctx,
                    });
                }
                (t, 0)
            }
        };
        if tokens.is_empty() {
            return Err(LocalError::InvalidRequest(
                "the prompt rendered to zero tokens".into(),
            ));
        }
        let Some(mut guard) = self.acquire(&tokens, cancel)? else {
            return Ok(empty_output(
                &tokens,
                0,
                truncated,
                t0,
                FinishReason::Cancelled,
            ));
        };
        let slot = guard.slot.as_mut().expect("slot present");

        // Prompts are evaluated in chunks aligned to multiples of n_batch, so a warm request
        // splits its new tokens exactly where a cold run would.
        let n_batch = slot.ctx.n_batch() as usize;
        let lcp = common_prefix(&slot.tokens, &tokens);
        let mode = if opts.cold {
            PrefixCache::Off
        } else {
            self.cfg.prefix_cache
        };
        let mut keep = match mode {
            PrefixCache::Off => 0,
            // At least the last prompt token is evaluated, for its logits.
            PrefixCache::Fast => lcp.min(tokens.len() - 1),
            PrefixCache::Exact => {
                lcp.min(slot.exact_rows).min(tokens.len() - 1) / n_batch * n_batch
            }
        };
        let removed = slot
            .ctx
            .clear_kv_cache_seq(Some(0), Some(keep as u32), None)
            .unwrap_or(false);
        if !removed {
            slot.ctx.clear_kv_cache();
            keep = 0;
        }
        let exact_before = slot.exact_rows;
        log::debug!("prefix cache {mode:?}: reusing {keep} of {} prompt tokens (common prefix {lcp}, exact rows {exact_before}, n_batch {n_batch})", tokens.len());
        // From here until success the slot's cache is in flux: mark it empty, so an error leaves
        // nothing stale behind.
        let mut cached = std::mem::take(&mut slot.tokens);
        cached.truncate(keep);
        slot.exact_rows = 0;

        let mut batch = LlamaBatch::new(n_batch.max(1), 1);
        let t_prefill = Instant::now();
        let to_eval = &tokens[keep..];
        if let Some(pos) = prefill(&mut slot.ctx, &mut batch, &tokens, keep, n_batch, cancel)? {
            return Ok(empty_output(
                &tokens,
                pos - keep,
                truncated,
                t0,
                FinishReason::Cancelled,
            ));
        }
        let mut pos = tokens.len();
        cached.extend_from_slice(to_eval);
        // Rows in whole aligned chunks are exact if everything before them was.
        let exact_rows = if keep <= exact_before && keep % n_batch == 0 {
            tokens.len() / n_batch * n_batch
        } else {
            exact_before.min(keep) / n_batch * n_batch
        };
        let prefill_ms = t_prefill.elapsed().as_secs_f64() * 1e3;

        let mut sampler = build_sampler(sampling, self.info.n_vocab as i32);
        let vocab = self.model.vocab();
        let mut stream = text::TextStream::new(stop);
        let mut text = String::new();
        let mut signals = Vec::with_capacity(max_tokens.min(4096) as usize);
        let mut piece = Vec::with_capacity(32);
        let room = n_ctx as usize - tokens.len();
        let limit = (max_tokens as usize).min(room);
        let mut logits_idx = batch.n_tokens() - 1;
        let mut ttft_ms = 0.0;
        let mut t_first = None;
        let mut finish = FinishReason::Length;
        let mut generated = 0u32;
        let mut confidence_ms = 0.0;
        let mut sample_ms = 0.0;
        let mut decode_call_ms = 0.0;
        if let Some((gov, _)) = slot.governor.as_mut() {
            gov.start_request();
        }
        while (generated as usize) < limit {
            // Greedy without penalties: the confidence pass already found the max logit, so skip
            // llama.cpp's sampler (it rebuilds an n_vocab candidate array every token).
            let t_sig = Instant::now();
            let logits = slot.ctx.get_logits_ith(logits_idx);
            let stats = confidence::stats(logits);
            let t_sample = Instant::now();
            confidence_ms += (t_sample - t_sig).as_secs_f64() * 1e3;
            let token = match sampler.as_mut() {
                None => LlamaToken(stats.argmax(logits) as i32),
                Some(s) => s.sample(&slot.ctx, logits_idx),
            };
            sample_ms += t_sample.elapsed().as_secs_f64() * 1e3;
            let signal = stats.signal(slot.ctx.get_logits_ith(logits_idx), token.0 as usize);
            if t_first.is_none() {
                ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
                t_first = Some(Instant::now());
            }
            if !opts.ignore_eos && vocab.is_eog(token) {
                finish = FinishReason::Stop;
                break;
            }
            generated += 1;
            signals.push(signal);
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let (emit, stopped) = match stream.push(&piece) {
                text::Pushed::Text(s) => (s, false),
                text::Pushed::Stopped(s) => (s, true),
            };
            text.push_str(&emit);
            let flow = on_token(TokenEvent {
                text: &emit,
                signal,
                index: generated,
            });
            if stopped {
                finish = FinishReason::Stop;
                break;
            }
            if flow.is_break() || cancel.load(Ordering::Relaxed) {
                finish = FinishReason::Cancelled;
                break;
            }
            if generated as usize == limit {
                break;
            }
            batch.clear();
            batch
                .add(token, pos as i32, &[0], true)
                .map_err(|e| LocalError::Decode {
                    pos: pos as u32,
                    detail: e.to_string(),
                })?;
            let t_dec = Instant::now();
            let decoded = slot.ctx.decode(&mut batch);
            let step_ms = t_dec.elapsed().as_secs_f64() * 1e3;
            decode_call_ms += step_ms;
            if let Some((gov, raw)) = slot.governor.as_mut() {
                if let Some(n) = gov.record(step_ms) {
                    log::debug!("decode threads now {n}");
                    raw.set_threads(n, self.info.threads_batch);
                }
            }
            if let Err(e) = decoded {
                slot.ctx.clear_kv_cache();
                return Err(LocalError::Decode {
                    pos: pos as u32,
                    detail: e.to_string(),
                });
            }
            cached.push(token);
            pos += 1;
            logits_idx = 0;
        }
        {
            let tail = stream.finish();
            if !tail.is_empty() {
                text.push_str(&tail);
                let _ = on_token(TokenEvent {
                    text: &tail,
                    signal: signals.last().copied().unwrap_or(ZERO_SIGNAL),
                    index: generated,
                });
            }
        }
        slot.tokens = cached;
        slot.exact_rows = exact_rows;
        let decode_ms = t_first.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
        Ok(LocalOutput {
            text,
            finish_reason: finish,
            prompt_tokens: tokens.len() as u32,
            prompt_tokens_evaluated: to_eval.len() as u32,
            completion_tokens: generated,
            signals,
            ttft_ms,
            prefill_ms,
            decode_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            confidence_ms,
            sample_ms,
            decode_call_ms,
            truncated_messages: truncated,
        })
    }
}

const ZERO_SIGNAL: TokenSignal = TokenSignal {
    logprob: 0.0,
    entropy: 0.0,
    margin: 0.0,
    top_logprob: 0.0,
};

fn empty_output(
    tokens: &[LlamaToken],
    evaluated: usize,
    truncated: u32,
    t0: Instant,
    finish: FinishReason,
) -> LocalOutput {
    LocalOutput {
        text: String::new(),
        finish_reason: finish,
        prompt_tokens: tokens.len() as u32,
        prompt_tokens_evaluated: evaluated as u32,
        completion_tokens: 0,
        signals: Vec::new(),
        ttft_ms: 0.0,
        prefill_ms: 0.0,
        decode_ms: 0.0,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        confidence_ms: 0.0,
        sample_ms: 0.0,
        decode_call_ms: 0.0,
        truncated_messages: truncated,
    }
}

/// Returns a slot to the pool on drop, waking one waiter.
struct SlotGuard<'e> {
    engine: &'e LocalEngine,
    slot: Option<Slot>,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if let Ok(mut pool) = self.engine.pool.lock() {
                pool.free.push(slot);
            }
            self.engine.returned.notify_one();
        }
    }
}

/// Evaluates `tokens[from..]` in chunks aligned to multiples of `n_batch` (so a warm request
/// splits where a cold run would), with logits for the last token only. `Ok(Some(pos))` if
/// cancelled before `pos`. On cancellation or error the context's cache is cleared.
fn prefill(
    ctx: &mut LlamaContext<'static>,
    batch: &mut LlamaBatch,
    tokens: &[LlamaToken],
    from: usize,
    n_batch: usize,
    cancel: &AtomicBool,
) -> Result<Option<usize>, LocalError> {
    let mut pos = from;
    while pos < tokens.len() {
        if cancel.load(Ordering::Relaxed) {
            ctx.clear_kv_cache();
            return Ok(Some(pos));
        }
        let end = ((pos / n_batch + 1) * n_batch).min(tokens.len());
        batch.clear();
        for (i, &tok) in tokens[pos..end].iter().enumerate() {
            let want_logits = pos + i == tokens.len() - 1;
            batch
                .add(tok, (pos + i) as i32, &[0], want_logits)
                .map_err(|e| LocalError::Decode {
                    pos: (pos + i) as u32,
                    detail: e.to_string(),
                })?;
        }
        if let Err(e) = ctx.decode(batch) {
            ctx.clear_kv_cache();
            return Err(LocalError::Decode {
                pos: pos as u32,
                detail: e.to_string(),
            });
        }
        pos = end;
    }
    Ok(None)
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The built-in llama.cpp template for a model without a usable one of its own: the family's
/// own format where llama.cpp knows it, chatml otherwise.
fn fallback_template_name(architecture: Option<&str>) -> &'static str {
    match architecture.unwrap_or_default() {
        a if a.starts_with("gemma") => "gemma",
        a if a.starts_with("phi3") => "phi3",
        "llama4" => "llama4",
        "deepseek2" | "deepseek3" => "deepseek3",
        _ => "chatml",
    }
}

fn choose_template(
    model: &LlamaModel,
    configured: Option<&str>,
    architecture: Option<&str>,
) -> Result<(LlamaChatTemplate, String), LocalError> {
    let probe = [
        LlamaChatMessage::new("system".into(), "s".into()),
        LlamaChatMessage::new("user".into(), "u".into()),
    ]
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| LocalError::Template(e.to_string()))?;
    let named =
        |name: &str| LlamaChatTemplate::new(name).map_err(|e| LocalError::Template(e.to_string()));
    if let Some(name) = configured {
        let t = named(name)?;
        model.apply_chat_template(&t, &probe, true).map_err(|e| {
            LocalError::Template(format!(
                "configured chat_template {name:?} is not one llama.cpp knows: {e}"
            ))
        })?;
        return Ok((t, format!("config:{name}")));
    }
    let fallback = fallback_template_name(architecture);
    match model.chat_template(None) {
        Ok(t) if model.apply_chat_template(&t, &probe, true).is_ok() => Ok((t, "model".into())),
        Ok(_) => {
            log::warn!("the model's chat template is not one llama.cpp's built-in engine supports; using {fallback}");
            Ok((named(fallback)?, format!("fallback:{fallback}")))
        }
        Err(_) => {
            log::warn!("the model has no chat template; using {fallback} (set [local] chat_template to choose)");
            Ok((named(fallback)?, format!("fallback:{fallback}")))
        }
    }
}

/// The llama.cpp sampler chain, or `None` for plain greedy decoding, which the engine does itself
/// from the confidence pass (same rule as llama.cpp's greedy sampler: the first largest logit).
fn build_sampler(s: &Sampling, n_vocab: i32) -> Option<LlamaSampler> {
    let penalised = (s.repeat_penalty - 1.0).abs() > f32::EPSILON;
    if s.temperature <= 0.0 && !penalised {
        return None;
    }
    let mut chain = Vec::new();
    if penalised {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            s.repeat_last_n as i32,
            s.repeat_penalty,
            0.0,
            0.0,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k as i32));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        let seed = s.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        });
        chain.push(LlamaSampler::dist(seed));
    }
    Some(LlamaSampler::chain_simple(chain))
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
    Ok(())
}

/// Checks a model file without loading it.
pub fn verify_model(path: &Path) -> Result<GgufInfo, GgufError> {
    gguf::validate(path)
}
