//! Beyond chat: scoring options by likelihood (for `eval`'s cloze and score modes) and the
//! benchmark repetition behind `edgecascade bench`.

use super::{
    confidence, prefill, AtomicBool, ChatMessage, ControlFlow, LlamaBatch, LlamaToken, LocalEngine,
    LocalError, LocalOutput, Prompt, RunOptions, Sampling,
};

impl LocalEngine {
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
        let (tokens, _) = self.fit_prompt(messages, &[])?;
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
            ..RunOptions::default()
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
}
