//! The decode loop: prefix reuse, chunked prefill, sampling, confidence signals, stop
//! sequences, cancellation, the thread governor, timings.

use super::{
    common_prefix, confidence, text, AtomicBool, ControlFlow, FinishReason, Instant, LlamaBatch,
    LlamaContext, LlamaSampler, LlamaToken, LocalEngine, LocalError, LocalOutput, Ordering,
    PrefixCache, Prompt, RunOptions, Sampling, TokenEvent, TokenSignal,
};

impl LocalEngine {
    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    pub(super) fn run(
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

        let mut sampler = build_sampler(sampling, self.info.n_vocab as i32, opts.constraint);
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
/// A structured-output constraint goes first, masking what the grammar forbids.
fn build_sampler(
    s: &Sampling,
    n_vocab: i32,
    constraint: Option<LlamaSampler>,
) -> Option<LlamaSampler> {
    let penalised = (s.repeat_penalty - 1.0).abs() > f32::EPSILON;
    if s.temperature <= 0.0 && !penalised && constraint.is_none() {
        return None;
    }
    let mut chain: Vec<LlamaSampler> = constraint.into_iter().collect();
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
