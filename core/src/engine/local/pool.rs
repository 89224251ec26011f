//! The context pool: slots (a llama.cpp context, its threadpools and the tokens its KV cache
//! holds), created on demand up to `parallel`, shared by prefix, returned on drop.

use super::{
    backend, governor, hidden, threadpool, Arc, AtomicBool, LlamaContext, LlamaContextParams,
    LlamaModel, LlamaToken, LocalEngine, LocalError, NonZeroU32, Ordering,
};

/// An inference context and the tokens its KV cache holds for sequence 0. The slot owns what
/// the context borrows (the model, its threadpools) and drops the context first (see `Drop`),
/// so its soundness does not rest on where the slot is kept or on field order elsewhere.
pub(super) struct Slot {
    /// Borrows `model` and uses `_pools`; dropped explicitly before both.
    pub(super) ctx: std::mem::ManuallyDrop<LlamaContext<'static>>,
    pub(super) tokens: Vec<LlamaToken>,
    /// Leading cached tokens that were computed exactly as a cold run computes them: whole
    /// `n_batch`-aligned chunks of prompt evaluation (see `PrefixCache::Exact`).
    pub(super) exact_rows: usize,
    /// Adapts the decode thread count to contention (when the context pointer is usable).
    pub(super) governor: Option<(governor::Governor, threadpool::RawContext)>,
    /// Reads the final hidden state while the graph computes (single-sequence contexts, when
    /// the callback could be installed). Outlives the context (see `Drop`).
    pub(super) tap: Option<Box<hidden::Tap>>,
    pub(super) _pools: Vec<threadpool::Threadpool>,
    pub(super) _model: Arc<LlamaModel>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: `ctx` is dropped exactly once, here, while the model and threadpools it
        // refers to are still alive (they are fields, dropped after this body).
        unsafe { std::mem::ManuallyDrop::drop(&mut self.ctx) };
    }
}

/// A pool of slots; requests beyond `max` wait.
pub(super) struct Pool {
    pub(super) free: Vec<Slot>,
    pub(super) created: usize,
}

/// Returns a slot to the pool on drop, waking one waiter.
pub(super) struct SlotGuard<'e> {
    pub(super) engine: &'e LocalEngine,
    pub(super) slot: Option<Slot>,
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

impl LocalEngine {
    /// Forgets every idle slot's cached prefix (the next request starts cold). Slots in use are
    /// untouched.
    pub fn clear_cache(&self) {
        if let Some(b) = &self.batcher {
            b.clear_cache();
        }
        if let Ok(mut pool) = self.pool.lock() {
            for slot in &mut pool.free {
                slot.ctx.clear_kv_cache();
                slot.tokens.clear();
                slot.exact_rows = 0;
            }
        }
    }

    /// Frees every idle context (with its KV cache) and the render cache; the model stays
    /// mapped. Contexts in use are untouched and return to the pool when their request ends.
    /// The next request creates the context it needs.
    pub fn trim(&self) {
        if let Some(b) = &self.batcher {
            b.trim();
        }
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

    pub(super) fn new_slot(&self) -> Result<Slot, LocalError> {
        make_slot(&self.model, &self.context_spec(1))
    }

    /// The context this engine's configuration asks for, holding `n_seq` sequences of
    /// `n_ctx` tokens each.
    pub(super) fn context_spec(&self, n_seq: u32) -> ContextSpec {
        let n_ctx = self.info.n_ctx;
        ContextSpec {
            n_ctx,
            n_seq,
            n_batch: self.cfg.n_batch.min(n_ctx),
            threads: self.info.threads,
            threads_batch: self.info.threads_batch,
            poll: self.cfg.poll,
            // Step times vary with the batch's make-up, which the governor would read as
            // contention: it runs for single-sequence contexts only.
            adaptive: self.cfg.adaptive_threads && n_seq == 1,
        }
    }

    /// Takes the free slot whose cache shares the longest prefix with `prompt`, creates one if the
    /// pool has room, or waits for one. `Ok(None)` when `cancel` is set while waiting: the
    /// request leaves the queue at once.
    pub(super) fn acquire(
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
}

/// What a context is created with.
#[derive(Debug, Clone, Copy)]
pub(super) struct ContextSpec {
    /// Tokens per sequence.
    pub(super) n_ctx: u32,
    /// Sequences (each with its own KV stream).
    pub(super) n_seq: u32,
    pub(super) n_batch: u32,
    pub(super) threads: u32,
    pub(super) threads_batch: u32,
    pub(super) poll: u32,
    pub(super) adaptive: bool,
}

/// A context (with its threadpools and governor) for `model`, owned by the returned slot.
pub(super) fn make_slot(model: &Arc<LlamaModel>, spec: &ContextSpec) -> Result<Slot, LocalError> {
    let n_ctx = spec.n_ctx;
    let total = n_ctx.saturating_mul(spec.n_seq.max(1));
    let mut params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total))
        .with_n_batch(spec.n_batch)
        .with_n_ubatch(spec.n_batch)
        .with_n_threads(spec.threads as i32)
        .with_n_threads_batch(spec.threads_batch as i32);
    if spec.n_seq > 1 {
        params = params
            .with_n_seq_max(spec.n_seq)
            .with_kv_unified(super::batch::KV_UNIFIED);
    }
    // The hidden-state tap, for single-sequence contexts (a batch's output rows cannot be told
    // apart by sequence in the callback).
    // `EDGECASCADE_HIDDEN_TAP=off` leaves it out (benchmarks measure its cost against that).
    let mut tap = None;
    let off = std::env::var("EDGECASCADE_HIDDEN_TAP").is_ok_and(|v| v == "off");
    if spec.n_seq <= 1 && !off {
        let t = hidden::Tap::new(model.n_embd().max(0) as usize);
        if let Some(p) = t.install(&params) {
            params = p;
            tap = Some(t);
        }
    }
    let backend = backend::backend()?;
    let ctx = model
        .new_context(backend, params)
        .map_err(|e| LocalError::Context {
            n_ctx: total,
            detail: backend::take_last_error().unwrap_or_else(|| e.to_string()),
        })?;
    // SAFETY: the context borrows the model behind the `Arc`. The slot keeps a clone of that
    // `Arc` and drops the context before it (`Slot`'s `Drop`), so the model outlives the
    // context wherever the slot goes.
    let ctx: LlamaContext<'static> =
        unsafe { std::mem::transmute::<LlamaContext<'_>, LlamaContext<'static>>(ctx) };
    let (threads, threads_batch, poll) = (spec.threads, spec.threads_batch, spec.poll);
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
    let governor = if spec.adaptive && threads > 1 && !pools.is_empty() {
        threadpool::RawContext::of(&ctx).map(|raw| (governor::Governor::new(threads), raw))
    } else {
        None
    };
    Ok(Slot {
        ctx: std::mem::ManuallyDrop::new(ctx),
        tokens: Vec::new(),
        exact_rows: 0,
        governor,
        tap,
        _pools: pools,
        _model: Arc::clone(model),
    })
}

pub(super) fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
