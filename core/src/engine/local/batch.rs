//! Continuous batching: with `parallel` > 1 (and `batching` on), one context holds a sequence
//! per request and a worker thread advances all of them together, one llama.cpp decode per
//! step: each generating sequence's next token, and prompt chunks of newly admitted requests in
//! whatever room the batch has left (`n_batch` tokens per step), so a long prompt never stalls
//! the others for more than one chunk.
//!
//! Callers block in [`LocalEngine::generate`] as before: the request goes to the worker, and
//! its tokens come back over a channel to the caller's thread, where `on_token` runs. Sampling,
//! confidence signals, stop sequences and the text stream are per sequence ([`Gen`]), exactly
//! as on the single-context path. Cancellation (the caller's flag, or `Break` from `on_token`)
//! reaches the worker within one step.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::decode::Gen;
use super::pool::{common_prefix, make_slot, ContextSpec, Slot};
use super::{
    Arc, AtomicBool, ControlFlow, FinishReason, Instant, LlamaBatch, LlamaModel, LlamaToken,
    LocalError, LocalOutput, Ordering, Sampling, TokenEvent, TokenSignal,
};

/// Batched contexts keep one KV stream per sequence rather than one buffer shared by all:
/// attention then never sees (masked) cells of other requests, so an answer does not depend on
/// what else is running. A shared buffer measured no faster (docs/adr/0005).
pub(super) const KV_UNIFIED: bool = false;

/// How often a waiting caller looks at its own cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(5);

/// A generation request for the worker.
pub(super) struct Job {
    pub(super) tokens: Vec<LlamaToken>,
    pub(super) truncated: u32,
    pub(super) max_tokens: u32,
    pub(super) sampling: Sampling,
    pub(super) stop: Vec<String>,
    pub(super) constraint: Option<super::constraint::Constraint>,
    pub(super) reuse_prefix: bool,
    pub(super) t0: Instant,
}

/// What the worker sends back to the caller of one job.
enum Msg {
    Token {
        text: String,
        signal: TokenSignal,
        index: u32,
    },
    Done(Result<LocalOutput, LocalError>),
}

enum Command {
    Run(Box<Job>, Arc<AtomicBool>, mpsc::Sender<Msg>),
    /// Forget idle sequences' cached prefixes.
    ClearCache,
    /// Free the context if nothing runs (it is created again on the next request).
    Trim(mpsc::Sender<()>),
}

/// What the batch worker has done since load (counters only grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// llama.cpp decode calls.
    pub steps: u64,
    /// Tokens evaluated in them (prompt chunks and generated tokens).
    pub tokens: u64,
    /// Tokens sampled from them (one per generating sequence per step).
    pub sampled: u64,
    /// The most sequences sampled in one step.
    pub max_sampled: u64,
}

#[derive(Default)]
struct Counters {
    steps: AtomicU64,
    tokens: AtomicU64,
    sampled: AtomicU64,
    max_sampled: AtomicU64,
}

/// The worker thread and its queue.
pub(super) struct Batcher {
    counters: Arc<Counters>,
    tx: Option<mpsc::Sender<Command>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

impl Batcher {
    /// Starts the worker, creating its context now so a bad configuration fails at load.
    pub(super) fn start(
        model: Arc<LlamaModel>,
        spec: ContextSpec,
        n_vocab: u32,
    ) -> Result<Self, LocalError> {
        let slot = make_slot(&model, &spec)?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        let worker = std::thread::Builder::new()
            .name("edgecascade-batch".into())
            .spawn(move || {
                Worker {
                    model,
                    spec,
                    n_vocab,
                    slot: Some(slot),
                    seqs: (0..spec.n_seq).map(|_| Seq::default()).collect(),
                    waiting: VecDeque::new(),
                    next_order: 0,
                    counters: shared,
                    batch: LlamaBatch::new((spec.n_batch as usize).max(1), 1),
                }
                .run(&rx);
            })
            .map_err(|e| LocalError::Context {
                n_ctx: spec.n_ctx,
                detail: format!("cannot start the batch worker: {e}"),
            })?;
        Ok(Self {
            counters,
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Runs `job` in the batch, streaming its tokens to `on_token` on this thread.
    pub(super) fn generate(
        &self,
        job: Job,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        let stopped = || LocalError::Decode {
            pos: 0,
            detail: "the batch worker stopped".into(),
        };
        let flag = Arc::new(AtomicBool::new(cancel.load(Ordering::Relaxed)));
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(Command::Run(Box::new(job), Arc::clone(&flag), tx))
            .map_err(|_| stopped())?;
        // After `Break` or the caller's cancel, the caller has its answer: what the worker makes
        // before it sees the flag is dropped, and the output holds exactly what was streamed.
        let mut cut: Option<u32> = None;
        let mut delivered = 0;
        let mut streamed = String::new();
        loop {
            match rx.recv_timeout(CANCEL_POLL) {
                Ok(Msg::Token {
                    text,
                    signal,
                    index,
                }) if cut.is_none() => {
                    streamed.push_str(&text);
                    delivered = index;
                    let flow = on_token(TokenEvent {
                        text: &text,
                        signal,
                        index,
                    });
                    if flow.is_break() {
                        cut = Some(index);
                    }
                }
                Ok(Msg::Token { .. }) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Msg::Done(result)) => {
                    let mut out = result?;
                    if let Some(n) = cut {
                        out.text = streamed;
                        out.finish_reason = FinishReason::Cancelled;
                        out.completion_tokens = n;
                        out.signals.truncate(n as usize);
                    }
                    return Ok(out);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(stopped()),
            }
            if cut.is_none() && cancel.load(Ordering::Relaxed) {
                cut = Some(delivered);
            }
            if cut.is_some() {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn stats(&self) -> BatchStats {
        let c = &self.counters;
        BatchStats {
            steps: c.steps.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            sampled: c.sampled.load(Ordering::Relaxed),
            max_sampled: c.max_sampled.load(Ordering::Relaxed),
        }
    }

    pub(super) fn clear_cache(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::ClearCache);
        }
    }

    pub(super) fn trim(&self) {
        if let Some(tx) = &self.tx {
            let (ack, done) = mpsc::channel();
            if tx.send(Command::Trim(ack)).is_ok() {
                let _ = done.recv();
            }
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the queue ends the worker once it is idle; joining frees its context before
        // the engine's model goes.
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// One sequence of the context: the tokens its KV cache holds, and the request using it.
#[derive(Default)]
struct Seq {
    cached: Vec<LlamaToken>,
    active: Option<Active>,
}

struct Active {
    job: Box<Job>,
    cancel: Arc<AtomicBool>,
    events: mpsc::Sender<Msg>,
    gen: Gen,
    /// Prompt tokens in the KV cache so far (the prompt is done at `job.tokens.len()`).
    pos: usize,
    /// Prompt tokens reused from the cache.
    reused: usize,
    /// A sampled token to decode next.
    next: Option<LlamaToken>,
    admitted: Instant,
    prefill_ms: f64,
    /// Admission order, for fair prompt chunking.
    order: u64,
}

struct Worker {
    model: Arc<LlamaModel>,
    spec: ContextSpec,
    n_vocab: u32,
    slot: Option<Slot>,
    seqs: Vec<Seq>,
    waiting: VecDeque<(Box<Job>, Arc<AtomicBool>, mpsc::Sender<Msg>)>,
    next_order: u64,
    counters: Arc<Counters>,
    /// Reused every step (cleared, never reallocated).
    batch: LlamaBatch<'static>,
}

impl Worker {
    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        loop {
            let busy = !self.waiting.is_empty() || self.seqs.iter().any(|s| s.active.is_some());
            let first = if busy {
                rx.try_recv().ok()
            } else {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            };
            for cmd in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                self.command(cmd);
            }
            // A panic here must not take the caller's app down with it, nor leave callers
            // waiting forever: fail what is running and start over with a fresh context.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            if step.is_err() {
                log::error!("the batch worker panicked; failing its running requests");
                self.fail_all("the batch worker failed");
                self.slot = None;
                for s in &mut self.seqs {
                    s.cached.clear();
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Run(job, cancel, events) => self.waiting.push_back((job, cancel, events)),
            Command::ClearCache => {
                for (i, s) in self.seqs.iter_mut().enumerate() {
                    if s.active.is_none() {
                        if let Some(slot) = self.slot.as_mut() {
                            let _ = slot.ctx.clear_kv_cache_seq(Some(i as u32), None, None);
                        }
                        s.cached.clear();
                    }
                }
            }
            Command::Trim(ack) => {
                if self.seqs.iter().all(|s| s.active.is_none()) {
                    self.slot = None;
                    for s in &mut self.seqs {
                        s.cached.clear();
                    }
                }
                let _ = ack.send(());
            }
        }
    }

    fn fail_all(&mut self, why: &str) {
        for s in &mut self.seqs {
            if let Some(a) = s.active.take() {
                let _ = a.events.send(Msg::Done(Err(LocalError::Decode {
                    pos: a.pos as u32,
                    detail: why.into(),
                })));
            }
        }
    }

    /// One round: drop cancelled waiters, admit, decode one batch, sample.
    #[allow(clippy::too_many_lines)]
    fn step(&mut self) {
        self.waiting.retain(|(job, cancel, events)| {
            if cancel.load(Ordering::Relaxed) {
                let _ = events.send(Msg::Done(Ok(super::decode::empty_output(
                    &job.tokens,
                    0,
                    job.truncated,
                    job.t0,
                    FinishReason::Cancelled,
                ))));
                false
            } else {
                true
            }
        });
        self.admit();
        // Cancelled sequences end before the batch is built (within one step).
        for i in 0..self.seqs.len() {
            let cancelled = self.seqs[i]
                .active
                .as_ref()
                .is_some_and(|a| a.cancel.load(Ordering::Relaxed));
            if cancelled {
                if let Some(a) = self.seqs[i].active.as_mut() {
                    a.gen.cancel();
                }
                self.finish(i);
            }
        }
        if self.seqs.iter().all(|s| s.active.is_none()) {
            return;
        }
        let Some(slot) = self.slot.as_mut() else {
            return;
        };
        let n_batch = self.spec.n_batch as usize;
        // One batch for the worker's life: llama_batch_init allocates per token slot.
        let batch = &mut self.batch;
        batch.clear();
        // (sequence, batch row) of every row whose logits are sampled after the decode.
        let mut rows: Vec<(usize, i32)> = Vec::new();
        let mut in_batch: Vec<usize> = Vec::new();
        let mut add_failed = None;
        for (i, s) in self.seqs.iter_mut().enumerate() {
            let Some(a) = s.active.as_mut() else { continue };
            if let Some(tok) = a.next {
                let pos = s.cached.len();
                if let Err(e) = batch.add(tok, pos as i32, &[i as i32], true) {
                    add_failed = Some(e.to_string());
                    break;
                }
                rows.push((i, batch.n_tokens() - 1));
                in_batch.push(i);
            }
        }
        // Prompt chunks, oldest request first, in the room left.
        let mut prefilling: Vec<usize> = (0..self.seqs.len())
            .filter(|&i| {
                self.seqs[i]
                    .active
                    .as_ref()
                    .is_some_and(|a| a.pos < a.job.tokens.len())
            })
            .collect();
        prefilling.sort_by_key(|&i| self.seqs[i].active.as_ref().map_or(0, |a| a.order));
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        for i in prefilling {
            let room = n_batch.saturating_sub(batch.n_tokens() as usize);
            if room == 0 || add_failed.is_some() {
                break;
            }
            let Some(a) = self.seqs[i].active.as_ref() else {
                continue;
            };
            let end = (a.pos + room).min(a.job.tokens.len());
            for p in a.pos..end {
                let last = p + 1 == a.job.tokens.len();
                if let Err(e) = batch.add(a.job.tokens[p], p as i32, &[i as i32], last) {
                    add_failed = Some(e.to_string());
                    break;
                }
                if last {
                    rows.push((i, batch.n_tokens() - 1));
                }
            }
            chunks.push((i, end));
            in_batch.push(i);
        }
        if let Some(detail) = add_failed {
            self.fail(&in_batch, &detail);
            return;
        }
        let t_dec = Instant::now();
        let decoded = slot.ctx.decode(batch);
        let step_ms = t_dec.elapsed().as_secs_f64() * 1e3;
        if let Err(e) = decoded {
            self.fail(&in_batch, &e.to_string());
            return;
        }
        let c = &self.counters;
        c.steps.fetch_add(1, Ordering::Relaxed);
        c.tokens
            .fetch_add(batch.n_tokens() as u64, Ordering::Relaxed);
        c.sampled.fetch_add(rows.len() as u64, Ordering::Relaxed);
        c.max_sampled
            .fetch_max(rows.len() as u64, Ordering::Relaxed);
        for &(i, end) in &chunks {
            let s = &mut self.seqs[i];
            if let Some(a) = s.active.as_mut() {
                s.cached.extend_from_slice(&a.job.tokens[a.pos..end]);
                a.pos = end;
                if end == a.job.tokens.len() {
                    a.prefill_ms = a.admitted.elapsed().as_secs_f64() * 1e3;
                }
            }
        }
        for s in &mut self.seqs {
            if let Some(a) = s.active.as_mut() {
                if let Some(tok) = a.next.take() {
                    s.cached.push(tok);
                    a.gen.decode_call_ms += step_ms;
                }
            }
        }
        let vocab = self.model.vocab();
        let Some(slot) = self.slot.as_ref() else {
            return;
        };
        let mut done = Vec::new();
        for (i, row) in rows {
            let Some(a) = self.seqs[i].active.as_mut() else {
                continue;
            };
            let events = &a.events;
            let mut send = |ev: TokenEvent<'_>| {
                let sent = events.send(Msg::Token {
                    text: ev.text.to_owned(),
                    signal: ev.signal,
                    index: ev.index,
                });
                if sent.is_ok() {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            };
            match a.gen.step(&slot.ctx, row, &vocab, &a.cancel, &mut send) {
                Some(tok) => a.next = Some(tok),
                None => done.push(i),
            }
        }
        for i in done {
            self.finish(i);
        }
    }

    /// Gives waiting requests free sequences, each the one whose cache shares the longest
    /// prefix with its prompt.
    fn admit(&mut self) {
        while !self.waiting.is_empty() {
            let free: Vec<usize> = (0..self.seqs.len())
                .filter(|&i| self.seqs[i].active.is_none())
                .collect();
            if free.is_empty() {
                return;
            }
            let Some((job, cancel, events)) = self.waiting.pop_front() else {
                return;
            };
            if self.slot.is_none() {
                match make_slot(&self.model, &self.spec) {
                    Ok(s) => self.slot = Some(s),
                    Err(e) => {
                        let _ = events.send(Msg::Done(Err(e)));
                        continue;
                    }
                }
            }
            let Some(slot) = self.slot.as_mut() else {
                return;
            };
            let i = free
                .iter()
                .copied()
                .max_by_key(|&i| common_prefix(&self.seqs[i].cached, &job.tokens))
                .unwrap_or(free[0]);
            let seq = &mut self.seqs[i];
            // At least the last prompt token is evaluated, for its logits.
            let mut keep = if job.reuse_prefix {
                common_prefix(&seq.cached, &job.tokens).min(job.tokens.len() - 1)
            } else {
                0
            };
            let removed = slot
                .ctx
                .clear_kv_cache_seq(Some(i as u32), Some(keep as u32), None)
                .unwrap_or(false);
            if !removed {
                let _ = slot.ctx.clear_kv_cache_seq(Some(i as u32), None, None);
                keep = 0;
            }
            seq.cached.truncate(keep);
            log::debug!(
                "batch: sequence {i} reuses {keep} of {} prompt tokens",
                job.tokens.len()
            );
            let room = self.spec.n_ctx as usize - job.tokens.len();
            let mut job = job;
            let gen = Gen::new(
                &job.sampling,
                self.n_vocab,
                job.constraint.take(),
                &job.stop,
                (job.max_tokens as usize).min(room),
                false,
                job.t0,
            );
            seq.active = Some(Active {
                job,
                cancel,
                events,
                gen,
                pos: keep,
                reused: keep,
                next: None,
                admitted: Instant::now(),
                prefill_ms: 0.0,
                order: self.next_order,
            });
            self.next_order += 1;
        }
    }

    /// Fails the requests in `seqs` (their caches are dropped: a failed decode leaves them
    /// unknown).
    fn fail(&mut self, seqs: &[usize], detail: &str) {
        for &i in seqs {
            if let Some(slot) = self.slot.as_mut() {
                let _ = slot.ctx.clear_kv_cache_seq(Some(i as u32), None, None);
            }
            self.seqs[i].cached.clear();
            if let Some(a) = self.seqs[i].active.take() {
                let _ = a.events.send(Msg::Done(Err(LocalError::Decode {
                    pos: a.pos as u32,
                    detail: detail.into(),
                })));
            }
        }
    }

    /// Ends sequence `i`'s request: held text out, then its output.
    fn finish(&mut self, i: usize) {
        let Some(mut a) = self.seqs[i].active.take() else {
            return;
        };
        let events = a.events.clone();
        a.gen.flush(&mut |ev: TokenEvent<'_>| {
            let _ = events.send(Msg::Token {
                text: ev.text.to_owned(),
                signal: ev.signal,
                index: ev.index,
            });
            ControlFlow::Continue(())
        });
        // A request cancelled mid-prompt leaves a partial prompt in the cache, which is still
        // a valid prefix.
        let evaluated = a.pos.saturating_sub(a.reused) as u32;
        let prefill_ms = if a.pos == a.job.tokens.len() {
            a.prefill_ms
        } else {
            a.admitted.elapsed().as_secs_f64() * 1e3
        };
        let out = a.gen.output(
            a.job.tokens.len() as u32,
            evaluated,
            prefill_ms,
            a.job.truncated,
        );
        let _ = a.events.send(Msg::Done(Ok(out)));
    }
}
