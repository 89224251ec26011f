//! The decode loop: prefix reuse, chunked prefill, sampling, confidence signals, stop
//! sequences, cancellation, the thread governor, timings.

use super::{
    common_prefix, confidence, hidden, text, AtomicBool, ControlFlow, FinishReason, HiddenStates,
    Instant, LlamaBatch, LlamaContext, LlamaSampler, LlamaToken, LocalEngine, LocalError,
    LocalOutput, Ordering, PrefixCache, Prompt, RunOptions, Sampling, TokenEvent, TokenSignal,
};

impl LocalEngine {
    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    pub(super) fn run(
        &self,
        prompt: Prompt<'_>,
        max_tokens: u32,
        sampling: &Sampling,
        stop: &[String],
        mut opts: RunOptions<'_>,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        let t0 = Instant::now();
        let n_ctx = self.info.n_ctx;
        let (tokens, truncated) = match prompt {
            Prompt::Chat(messages, tools) => self.fit_prompt(messages, tools)?,
            Prompt::Continue(messages, tools, draft) => {
                let (mut t, n) = self.fit_prompt(messages, tools)?;
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
        let wants_hidden = opts.hidden.hidden || opts.hidden.gate.is_some();
        if let Some(batcher) = self
            .batcher
            .as_ref()
            .filter(|_| !opts.cold && !opts.ignore_eos && !wants_hidden)
        {
            let job = super::batch::Job {
                tokens,
                truncated,
                max_tokens,
                sampling: sampling.clone(),
                stop: stop.to_vec(),
                constraint: opts.constraint,
                // Exact reuse promises output bit-identical to a cold run, which a batch
                // (whose numerics depend on its neighbours) cannot: it starts cold.
                reuse_prefix: self.cfg.prefix_cache == PrefixCache::Fast,
                t0,
            };
            return batcher.generate(job, cancel, on_token);
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
        // The tap copies the final hidden state of each decode's last token while on.
        let tap = slot.tap.as_deref().filter(|_| wants_hidden);
        if wants_hidden && tap.is_none() {
            return Err(LocalError::InvalidRequest(
                "hidden states are unavailable in this build (the evaluation callback could not be installed)".into(),
            ));
        }
        if let Some(t) = tap {
            t.enable(true);
        }
        let _off = tap.map(|t| scopeguard::guard((), move |()| t.enable(false)));
        if let Some((gov, raw)) = slot.governor.as_ref() {
            raw.set_threads(gov.current(), gov.prefill_threads(self.info.threads_batch));
        }
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
        let hidden_prompt = tap.and_then(hidden::Tap::take);
        if wants_hidden && hidden_prompt.is_none() {
            slot.ctx.clear_kv_cache();
            return Err(LocalError::Decode {
                pos: tokens.len() as u32,
                detail: format!("the model's graph has no {} tensor: hidden states are unavailable for this architecture", hidden::tensor_name()),
            });
        }
        if let (Some(gate), Some(h)) = (opts.hidden.gate.as_mut(), hidden_prompt.as_deref()) {
            if gate(h, tokens.len() as u32) {
                slot.tokens = cached;
                slot.exact_rows = exact_rows;
                let mut out = empty_output(
                    &tokens,
                    to_eval.len(),
                    truncated,
                    t0,
                    FinishReason::Cancelled,
                );
                out.prefill_ms = prefill_ms;
                out.gated = true;
                out.hidden = hidden_prompt.map(|p| HiddenStates {
                    answer: p.clone(),
                    prompt: p,
                });
                return Ok(out);
            }
        }

        let room = n_ctx as usize - tokens.len();
        let mut gen = Gen::new(
            sampling,
            self.info.n_vocab,
            opts.constraint,
            stop,
            (max_tokens as usize).min(room),
            opts.ignore_eos,
            t0,
        );
        let vocab = self.model.vocab();
        let mut logits_idx = batch.n_tokens() - 1;
        if let Some((gov, _)) = slot.governor.as_mut() {
            gov.start_request();
        }
        while let Some(token) = gen.step(&slot.ctx, logits_idx, &vocab, cancel, on_token) {
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
            gen.decode_call_ms += step_ms;
            if let Some((gov, raw)) = slot.governor.as_mut() {
                if let Some(n) = gov.record(step_ms) {
                    log::debug!("decode threads now {n}");
                    raw.set_threads(n, gov.prefill_threads(self.info.threads_batch));
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
        gen.flush(on_token);
        slot.tokens = cached;
        slot.exact_rows = exact_rows;
        let mut out = gen.output(
            tokens.len() as u32,
            to_eval.len() as u32,
            prefill_ms,
            truncated,
        );
        // The answer's state: the last decode's, or the prompt's when no token was fed back.
        out.hidden = hidden_prompt.map(|p| HiddenStates {
            answer: tap.and_then(hidden::Tap::take).unwrap_or_else(|| p.clone()),
            prompt: p,
        });
        Ok(out)
    }
}

const ZERO_SIGNAL: TokenSignal = TokenSignal {
    logprob: 0.0,
    entropy: 0.0,
    margin: 0.0,
    top_logprob: 0.0,
};

pub(super) fn empty_output(
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
        hidden: None,
        gated: false,
    }
}

/// One sequence's generation: sampling, confidence signals, end-of-turn and stop sequences,
/// the text so far and its timings. The single-context loop and the batch worker both drive
/// it, one sampled token per step.
pub(super) struct Gen {
    sampler: Option<LlamaSampler>,
    constraint: Option<super::constraint::Constraint>,
    stream: text::TextStream,
    text: String,
    signals: Vec<TokenSignal>,
    piece: Vec<u8>,
    limit: usize,
    ignore_eos: bool,
    generated: u32,
    finish: FinishReason,
    t0: Instant,
    ttft_ms: f64,
    t_first: Option<Instant>,
    confidence_ms: f64,
    sample_ms: f64,
    /// Milliseconds inside llama.cpp's decode for this sequence's generated tokens.
    pub(super) decode_call_ms: f64,
}

impl Gen {
    /// A generation of at most `limit` tokens (at least one), timed from `t0`.
    pub(super) fn new(
        sampling: &Sampling,
        n_vocab: u32,
        constraint: Option<super::constraint::Constraint>,
        stop: &[String],
        limit: usize,
        ignore_eos: bool,
        t0: Instant,
    ) -> Self {
        Self {
            sampler: build_sampler(sampling, n_vocab as i32),
            constraint,
            stream: text::TextStream::new(stop),
            text: String::new(),
            signals: Vec::with_capacity(limit.min(4096)),
            piece: Vec::with_capacity(32),
            limit,
            ignore_eos,
            generated: 0,
            finish: FinishReason::Length,
            t0,
            ttft_ms: 0.0,
            t_first: None,
            confidence_ms: 0.0,
            sample_ms: 0.0,
            decode_call_ms: 0.0,
        }
    }

    /// Samples from the logits in row `idx` of `ctx`'s last decode and emits what became text.
    /// `Some(token)`: feed it back and call again; `None`: the generation is over (end of
    /// turn, a stop sequence, the limit, `Break` from `on_token`, or `cancel`).
    pub(super) fn step(
        &mut self,
        ctx: &LlamaContext<'_>,
        idx: i32,
        vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Option<LlamaToken> {
        // Greedy without penalties: the confidence pass already found the max logit, so skip
        // llama.cpp's sampler (it rebuilds an n_vocab candidate array every token).
        let t_sig = Instant::now();
        let logits = ctx.get_logits_ith(idx);
        let stats = confidence::stats(logits);
        let t_sample = Instant::now();
        self.confidence_ms += (t_sample - t_sig).as_secs_f64() * 1e3;
        let token = match (self.constraint.as_mut(), self.sampler.as_mut()) {
            (Some(c), s) => {
                let remaining = self.limit.saturating_sub(self.generated as usize);
                c.pick(logits, stats.argmax(logits), remaining, s)
            }
            (None, None) => LlamaToken(stats.argmax(logits) as i32),
            (None, Some(s)) => s.sample(ctx, idx),
        };
        self.sample_ms += t_sample.elapsed().as_secs_f64() * 1e3;
        let signal = stats.signal(ctx.get_logits_ith(idx), token.0 as usize);
        if self.t_first.is_none() {
            self.ttft_ms = self.t0.elapsed().as_secs_f64() * 1e3;
            self.t_first = Some(Instant::now());
        }
        if !self.ignore_eos && vocab.is_eog(token) {
            self.finish = FinishReason::Stop;
            return None;
        }
        self.generated += 1;
        self.signals.push(signal);
        self.piece.clear();
        vocab.token_to_piece_into(token, &mut self.piece, false, None);
        let (emit, stopped) = match self.stream.push(&self.piece) {
            text::Pushed::Text(s) => (s, false),
            text::Pushed::Stopped(s) => (s, true),
        };
        self.text.push_str(&emit);
        let flow = on_token(TokenEvent {
            text: &emit,
            signal,
            index: self.generated,
        });
        if stopped {
            self.finish = FinishReason::Stop;
            return None;
        }
        if flow.is_break() || cancel.load(Ordering::Relaxed) {
            self.finish = FinishReason::Cancelled;
            return None;
        }
        if self.generated as usize >= self.limit {
            return None;
        }
        Some(token)
    }

    /// Ends the generation as cancelled (the batch worker saw the flag between steps).
    pub(super) fn cancel(&mut self) {
        self.finish = FinishReason::Cancelled;
    }

    /// Emits text still held back (an incomplete character or a possible stop prefix).
    pub(super) fn flush(&mut self, on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>) {
        let tail = self.stream.finish();
        if !tail.is_empty() {
            self.text.push_str(&tail);
            let _ = on_token(TokenEvent {
                text: &tail,
                signal: self.signals.last().copied().unwrap_or(ZERO_SIGNAL),
                index: self.generated,
            });
        }
    }

    pub(super) fn output(
        self,
        prompt_tokens: u32,
        evaluated: u32,
        prefill_ms: f64,
        truncated: u32,
    ) -> LocalOutput {
        // An answer the budget closed early is complete, but cut short by `max_tokens`.
        let closed = self
            .constraint
            .as_ref()
            .is_some_and(super::constraint::Constraint::closed_early);
        let finish_reason = if closed && self.finish == FinishReason::Stop {
            FinishReason::Length
        } else {
            self.finish
        };
        LocalOutput {
            text: self.text,
            finish_reason,
            prompt_tokens,
            prompt_tokens_evaluated: evaluated,
            completion_tokens: self.generated,
            signals: self.signals,
            ttft_ms: self.ttft_ms,
            prefill_ms,
            decode_ms: self
                .t_first
                .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3),
            total_ms: self.t0.elapsed().as_secs_f64() * 1e3,
            confidence_ms: self.confidence_ms,
            sample_ms: self.sample_ms,
            decode_call_ms: self.decode_call_ms,
            truncated_messages: truncated,
            hidden: None,
            gated: false,
        }
    }
}

/// Evaluates `tokens[from..]` in chunks aligned to multiples of `n_batch` (so a warm request
/// splits where a cold run would), with logits for the last token only. `Ok(Some(pos))` if
/// cancelled before `pos`. On cancellation or error the context's cache is cleared.
pub(super) fn prefill(
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

/// The llama.cpp sampler chain, or `None` for plain greedy decoding, which the engine does itself
/// from the confidence pass (same rule as llama.cpp's greedy sampler: the first largest logit).
/// A structured-output constraint masks what the grammar forbids before the chain sees the
/// candidates.
fn build_sampler(s: &Sampling, n_vocab: i32) -> Option<LlamaSampler> {
    let penalised = (s.repeat_penalty - 1.0).abs() > f32::EPSILON;
    if s.temperature <= 0.0 && !penalised {
        return None;
    }
    let mut chain: Vec<LlamaSampler> = Vec::new();
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
