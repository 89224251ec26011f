//! Structured output on the local tier: a JSON schema (or "any JSON object") compiled by
//! llguidance into a token mask that drives the sampler, so every answer parses and
//! validates; and the same grammar checking an answer's tokens after the fact (a truncated
//! local answer, or a remote one).
//!
//! A constrained answer also fits its token budget: near `max_tokens` the decoder measures how
//! many tokens the grammar still needs to be complete (a greedy walk that prefers tokens
//! closing strings, objects and arrays) and, when the budget barely covers that, steers the
//! answer to close. A long string value is then cut and closed rather than left as broken JSON.
//!
//! Without the `structured` feature (a smaller mobile library) there is no grammar: requests
//! that need one are refused with a clear error, and answers are checked for their JSON shape
//! only.

use serde_json::Value;

use crate::types::ResponseFormat;

#[cfg(feature = "structured")]
pub(crate) use grammar::{Constraint, Grammars};
#[cfg(not(feature = "structured"))]
pub(crate) use lean::{Constraint, Grammars};

/// The JSON schema a format asks for, if it asks for JSON. Unless the schema says otherwise
/// (`x-guidance`), the JSON is compact on one line: with free whitespace between tokens a small
/// model can spend its whole token budget on newlines.
pub(crate) fn schema_of(format: &ResponseFormat) -> Result<Option<Value>, String> {
    let compact = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.entry("x-guidance").or_insert_with(|| {
                serde_json::json!({
                    "whitespace_flexible": false,
                    "item_separator": ", ",
                    "key_separator": ": "
                })
            });
        }
        v
    };
    match format {
        ResponseFormat::Text => Ok(None),
        ResponseFormat::JsonObject => Ok(Some(compact(serde_json::json!({"type": "object"})))),
        ResponseFormat::JsonSchema { schema, name, .. } => {
            let v: Value = serde_json::from_str(schema)
                .map_err(|e| format!("response_format json_schema {name:?} is not JSON: {e}"))?;
            if !(v.is_object() || v.is_boolean()) {
                return Err(format!(
                    "response_format json_schema {name:?} must be a JSON object"
                ));
            }
            Ok(Some(compact(v)))
        }
    }
}

/// Whether `text` is JSON of the right shape for `format` (parse only; no schema check).
pub(crate) fn check_json(format: &ResponseFormat, text: &str) -> Result<(), String> {
    if matches!(format, ResponseFormat::Text) {
        return Ok(());
    }
    let v: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the answer is not valid JSON: {e}"))?;
    if matches!(format, ResponseFormat::JsonObject) && !v.is_object() {
        return Err("the answer is JSON but not an object".into());
    }
    Ok(())
}

#[cfg(feature = "structured")]
mod grammar {
    use std::sync::Arc;

    use llama_cpp_2::model::LlamaModel;
    use llama_cpp_2::sampling::LlamaSampler;
    use llama_cpp_2::token::data::LlamaTokenData;
    use llama_cpp_2::token::data_array::LlamaTokenDataArray;
    use llama_cpp_2::token::LlamaToken;
    use llguidance::api::TopLevelGrammar;
    use llguidance::toktrie::SimpleVob;
    use llguidance::{Matcher, ParserFactory};
    use serde_json::Value;

    use super::schema_of;
    use crate::error::LocalError;
    use crate::types::ResponseFormat;

    /// The grammar compiler for one model's vocabulary (built once, on the first structured
    /// request: walking the vocabulary takes a while).
    pub(crate) struct Grammars {
        factory: ParserFactory,
        closers: Arc<Closers>,
    }

    impl std::fmt::Debug for Grammars {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Grammars")
        }
    }

    impl Grammars {
        pub(crate) fn new(model: &LlamaModel) -> Result<Self, LocalError> {
            let env = LlamaSampler::llguidance_tok_env(model);
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| {
                LocalError::InvalidRequest(format!("structured output is unavailable: {e}"))
            })?;
            factory.quiet();
            let closers = Arc::new(Closers::of(&factory));
            Ok(Self { factory, closers })
        }

        /// A fresh matcher for `format`; `None` for plain text. A schema llguidance cannot enforce
        /// (an unsupported keyword, a contradiction) is an `InvalidRequest` naming the reason.
        pub(crate) fn matcher(
            &self,
            format: &ResponseFormat,
        ) -> Result<Option<Constraint>, LocalError> {
            let Some(schema) = schema_of(format).map_err(LocalError::InvalidRequest)? else {
                return Ok(None);
            };
            self.compile(TopLevelGrammar::from_json_schema(schema))
                .map(|m| Some(self.constraint(m)))
                .map_err(|e| {
                    LocalError::InvalidRequest(format!(
                        "response_format: the schema cannot be enforced: {e}"
                    ))
                })
        }

        fn constraint(&self, matcher: Matcher) -> Constraint {
            Constraint {
                matcher,
                closers: Arc::clone(&self.closers),
                scan: Scan::default(),
                check_below: usize::MAX,
                closed_early: false,
            }
        }

        /// A fresh matcher for a grammar.
        fn compile(&self, grammar: TopLevelGrammar) -> Result<Matcher, String> {
            let parser = self
                .factory
                .create_parser(grammar)
                .map_err(|e| e.to_string())?;
            Ok(Matcher::new(Ok(parser)))
        }

        /// A matcher for an llguidance Lark grammar (the forced tool call).
        pub(crate) fn lark_matcher(&self, grammar: String) -> Result<Constraint, LocalError> {
            self.compile(TopLevelGrammar::from_lark(grammar))
                .map(|m| self.constraint(m))
                .map_err(|e| {
                    LocalError::InvalidRequest(format!(
                        "tools: the parameter schemas cannot be enforced: {e}"
                    ))
                })
        }

        /// Checks JSON text, as tokens of this model's vocabulary, against a JSON schema, with
        /// any whitespace (for tool-call arguments, written however the model or server wrote them).
        pub(crate) fn validate_schema(
            &self,
            mut schema: Value,
            tokens: &[u32],
        ) -> Result<(), String> {
            if let Some(o) = schema.as_object_mut() {
                o.remove("x-guidance");
            }
            let m = self
                .compile(TopLevelGrammar::from_json_schema(schema))
                .map_err(|e| format!("the schema cannot be checked: {e}"))?;
            Self::consume_all(m, tokens)
        }

        /// Checks an answer, as tokens of this model's vocabulary, against `format`: every token
        /// allowed, and the grammar complete at the end.
        pub(crate) fn validate(
            &self,
            format: &ResponseFormat,
            tokens: &[u32],
        ) -> Result<(), String> {
            // Any whitespace: a remote server (llama-server, say) may pretty-print its JSON; only
            // local decoding is held to the compact form.
            match schema_of(format)? {
                Some(schema) => self.validate_schema(schema, tokens),
                None => Ok(()),
            }
        }

        fn consume_all(mut m: Matcher, tokens: &[u32]) -> Result<(), String> {
            let n = m.try_consume_tokens(tokens).map_err(|e| e.to_string())?;
            if n < tokens.len() {
                return Err(format!(
                    "the answer leaves the schema at token {n} of {}",
                    tokens.len()
                ));
            }
            if !m.is_accepting().unwrap_or(false) {
                return Err("the answer stops before the schema is complete".into());
            }
            Ok(())
        }
    }

    /// Tokens that may end something (made only of `"`, `}` and `]`), longest first; item
    /// separators (`,` and `, `), for when a value ends but its container cannot yet; a few
    /// short complete values, for when a value must still be written; and every token's bytes.
    struct Closers {
        tokens: Vec<u32>,
        separators: Vec<u32>,
        fillers: Vec<u32>,
        env: llguidance::toktrie::TokEnv,
    }

    impl Closers {
        fn of(factory: &ParserFactory) -> Self {
            let env = factory.tok_env().clone();
            let trie = env.tok_trie();
            let n = trie.vocab_size() as u32;
            let mut tokens: Vec<u32> = (0..n)
                .filter(|&t| {
                    let b = trie.token(t);
                    !b.is_empty() && b.iter().all(|c| matches!(c, b'"' | b'}' | b']'))
                })
                .collect();
            tokens.sort_by_key(|&t| std::cmp::Reverse(trie.token(t).len()));
            let find = |words: &[&[u8]]| -> Vec<u32> {
                words
                    .iter()
                    .filter_map(|w| (0..n).find(|&t| trie.token(t) == *w))
                    .collect()
            };
            let separators = find(&[b", ", b","]);
            let fillers = find(&[b"0", b"[]", b"{}", b"false", b"null"]);
            Self {
                tokens,
                separators,
                fillers,
                env,
            }
        }

        fn bytes(&self, t: u32) -> &[u8] {
            self.env.tok_trie().token(t)
        }

        /// The tokens `mask` allows that only close what `scan` has open (a string, then
        /// objects and arrays, innermost first), longest first.
        fn closing<'a>(
            &'a self,
            scan: &'a Scan,
            mask: &'a SimpleVob,
        ) -> impl Iterator<Item = u32> + 'a {
            self.tokens
                .iter()
                .copied()
                .filter(move |&t| mask.is_allowed(t) && scan.closes(self.bytes(t)))
        }

        /// The walk's choice under `mask`: the longest closer, else a separator (a number
        /// could go on forever), else a short value, else the first token allowed.
        fn pick(&self, scan: &Scan, mask: &SimpleVob) -> Option<u32> {
            self.closing(scan, mask)
                .next()
                .or_else(|| {
                    self.separators
                        .iter()
                        .chain(&self.fillers)
                        .copied()
                        .find(|&t| mask.is_allowed(t))
                })
                .or_else(|| mask.first_bit_set().map(|t| t as u32))
        }
    }

    /// Where the JSON written so far stands: inside a string or not, and the brackets open.
    /// Text around the JSON (a tool call's tags) has neither quotes nor brackets.
    #[derive(Clone, Default)]
    struct Scan {
        in_string: bool,
        escaped: bool,
        open: Vec<u8>,
    }

    impl Scan {
        fn push(&mut self, bytes: &[u8]) {
            for &b in bytes {
                if self.in_string {
                    if self.escaped {
                        self.escaped = false;
                    } else if b == b'\\' {
                        self.escaped = true;
                    } else if b == b'"' {
                        self.in_string = false;
                    }
                } else {
                    match b {
                        b'"' => self.in_string = true,
                        b'{' => self.open.push(b'}'),
                        b'[' => self.open.push(b']'),
                        b'}' | b']' => {
                            self.open.pop();
                        }
                        _ => {}
                    }
                }
            }
        }

        /// Whether a string or a bracket is open.
        fn is_open(&self) -> bool {
            self.in_string || !self.open.is_empty()
        }

        /// Whether every byte of `bytes` closes something open: the string first, then the
        /// brackets from the innermost.
        fn closes(&self, bytes: &[u8]) -> bool {
            let mut in_string = self.in_string;
            let mut depth = self.open.len();
            for &b in bytes {
                if in_string {
                    if self.escaped || b != b'"' {
                        return false;
                    }
                    in_string = false;
                } else if depth > 0 && b == self.open[depth - 1] {
                    depth -= 1;
                } else {
                    return false;
                }
            }
            true
        }
    }

    /// Whether `token` only closes what `written` left open (for tests).
    #[cfg(test)]
    pub(super) fn scan_closes(written: &[u8], token: &[u8]) -> bool {
        let mut scan = Scan::default();
        scan.push(written);
        scan.closes(token)
    }

    /// How near the budget (in tokens beyond the closing cost) each of the model's tokens is
    /// checked: a token can open several things at once (`[{"`), so the check starts early.
    const WINDOW: usize = 16;

    /// A grammar driving one generation, and what it needs to close within the token budget.
    pub(crate) struct Constraint {
        matcher: Matcher,
        closers: Arc<Closers>,
        scan: Scan,
        /// Measure the closing cost again once this few tokens remain.
        check_below: usize,
        /// The budget changed the answer: a token was chosen to close it.
        closed_early: bool,
    }

    impl Constraint {
        /// Moves past tokens already written (a draft being continued), as far as the grammar
        /// allows them.
        pub(crate) fn advance(&mut self, tokens: &[u32]) {
            let n = self.matcher.try_consume_tokens(tokens).unwrap_or(0);
            for &t in &tokens[..n] {
                self.scan.push(self.closers.bytes(t));
            }
        }

        /// Whether the budget changed the answer (it was closed to fit `max_tokens`).
        pub(crate) fn closed_early(&self) -> bool {
            self.closed_early
        }

        /// Chooses the next token from `logits` (`argmax` is their first largest), allowed by
        /// the grammar, with `remaining` tokens left in the budget; through `sampler` when
        /// sampling, else greedily. Near the budget, a token after which the answer could no
        /// longer be completed in time is replaced by the first token of the shortest
        /// completion. The grammar moves past the token.
        pub(crate) fn pick(
            &mut self,
            logits: &[f32],
            argmax: usize,
            remaining: usize,
            mut sampler: Option<&mut LlamaSampler>,
        ) -> LlamaToken {
            let Ok(mask) = self.matcher.compute_mask_or_eos() else {
                // A grammar in error: decode freely; the answer is checked afterwards.
                log::warn!(
                    "structured output: the grammar failed ({}); decoding freely",
                    self.matcher.get_error().unwrap_or_default()
                );
                return match sampler {
                    Some(s) => {
                        let t = choose(logits, None, s);
                        s.accept(t);
                        t
                    }
                    None => LlamaToken(argmax as i32),
                };
            };
            let own = match sampler.as_deref_mut() {
                Some(s) => choose(logits, Some(&mask), s).0 as u32,
                None => greedy(logits, &mask, argmax) as u32,
            };
            let token = match self.closing(remaining) {
                Closing::Force(t) => t,
                Closing::Guard(t) if !self.affordable(own, remaining) => t,
                Closing::No | Closing::Guard(_) => own,
            };
            if token != own {
                self.closed_early = true;
            }
            if let Some(s) = sampler {
                s.accept(LlamaToken(token as i32));
            }
            if !self.matcher.is_stopped() {
                let _ = self.matcher.consume_token(token);
            }
            self.scan.push(self.closers.bytes(token));
            LlamaToken(token as i32)
        }

        /// Whether the budget must steer this token: `Force` the first token of the shortest
        /// completion when it needs every token left, `Guard` when near enough that the model's
        /// own token must leave room to complete.
        fn closing(&mut self, remaining: usize) -> Closing {
            if remaining > self.check_below
                || !self.scan.is_open()
                || self.matcher.is_accepting().unwrap_or(true)
            {
                // Far from the budget; or no JSON open yet, so the model has not committed to
                // anything the budget could close (under `auto`, a call it starts too late is
                // cut and reported rather than swapped for text); or complete already.
                return Closing::No;
            }
            let (cost, first) =
                self.closing_cost(self.matcher.deep_clone(), self.scan.clone(), remaining);
            self.check_below = remaining;
            match (cost, first) {
                (Some(c), _) if remaining > c + WINDOW => {
                    // Look again before the gap could close.
                    let gap = remaining - c - WINDOW;
                    self.check_below = remaining - (gap / 4).max(1);
                    Closing::No
                }
                (Some(c), Some(first)) if remaining > c => Closing::Guard(first),
                (_, Some(first)) => Closing::Force(first),
                (_, None) => Closing::No,
            }
        }

        /// Whether, after `token`, the answer can still be completed within `remaining - 1`.
        fn affordable(&self, token: u32, remaining: usize) -> bool {
            let mut m = self.matcher.deep_clone();
            if m.consume_token(token).is_err() || m.is_error() {
                return false;
            }
            let mut scan = self.scan.clone();
            scan.push(self.closers.bytes(token));
            let left = remaining - 1;
            matches!(self.closing_cost(m, scan, left).0, Some(c) if c <= left)
        }

        /// The fewest tokens that complete the grammar from here, as a greedy walk finds them
        /// (forced bytes, else [`Closers::pick`]), up to `cap`; and the walk's first
        /// token. `None` for the cost when the walk does not complete within `cap`.
        fn closing_cost(
            &self,
            mut m: Matcher,
            mut scan: Scan,
            cap: usize,
        ) -> (Option<usize>, Option<u32>) {
            let mut first = None;
            let mut n = 0;
            while n <= cap {
                if m.is_error() {
                    break;
                }
                if m.is_stopped() || m.is_accepting().unwrap_or(false) {
                    return (Some(n), first);
                }
                // Bytes the grammar forces (a required key, a closing tag), as tokens.
                let forced = m.compute_ff_bytes();
                let mut step = if forced.is_empty() {
                    Vec::new()
                } else {
                    self.closers.env.tokenize_bytes(&forced)
                };
                if !step.is_empty() {
                    let n = m.validate_tokens(&step).unwrap_or(0);
                    step.truncate(n);
                }
                if step.is_empty() {
                    let Ok(mask) = m.compute_mask() else { break };
                    let Some(t) = self.closers.pick(&scan, &mask) else {
                        break;
                    };
                    step.push(t);
                }
                first.get_or_insert(step[0]);
                if m.consume_tokens(&step).is_err() {
                    break;
                }
                for &t in &step {
                    scan.push(self.closers.bytes(t));
                }
                n += step.len();
            }
            (None, first)
        }
    }

    enum Closing {
        /// The model chooses under the grammar.
        No,
        /// The model chooses, if its token leaves room to complete; else this token, the first
        /// of the shortest completion.
        Guard(u32),
        /// This token, the first of the shortest completion.
        Force(u32),
    }

    /// The first largest logit among the tokens `mask` allows (`argmax`, the first largest
    /// overall, when it is allowed).
    fn greedy(logits: &[f32], mask: &SimpleVob, argmax: usize) -> usize {
        if mask.is_allowed(argmax as u32) {
            return argmax;
        }
        let mut best = (f32::NEG_INFINITY, usize::MAX);
        mask.iter_set_entries(|i| {
            if let Some(&l) = logits.get(i) {
                if l > best.0 || best.1 == usize::MAX {
                    best = (l, i);
                }
            }
        });
        if best.1 == usize::MAX {
            argmax
        } else {
            best.1
        }
    }

    /// Samples through `sampler` from the tokens `mask` allows (all when `None`). The caller
    /// lets the sampler see the token finally chosen (repetition penalties count it).
    fn choose(logits: &[f32], mask: Option<&SimpleVob>, sampler: &mut LlamaSampler) -> LlamaToken {
        let data: Vec<LlamaTokenData> = match mask {
            Some(m) => {
                let mut d = Vec::new();
                m.iter_set_entries(|i| {
                    if let Some(&l) = logits.get(i) {
                        d.push(LlamaTokenData::new(LlamaToken(i as i32), l, 0.0));
                    }
                });
                d
            }
            None => logits
                .iter()
                .enumerate()
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0))
                .collect(),
        };
        let fallback = data.first().map(LlamaTokenData::id);
        let mut array = LlamaTokenDataArray::new(data, false);
        array.apply_sampler(sampler);
        array.selected_token().or(fallback).unwrap_or(LlamaToken(0))
    }
}

/// Without the `structured` feature: no grammar can be built, so none exists.
#[cfg(not(feature = "structured"))]
mod lean {
    use llama_cpp_2::model::LlamaModel;
    use serde_json::Value;

    use crate::error::LocalError;
    use crate::types::ResponseFormat;

    /// A constraint cannot be built without the feature.
    pub(crate) enum Constraint {}

    impl Constraint {
        pub(crate) fn advance(&mut self, _: &[u32]) {
            match *self {}
        }
        pub(crate) fn closed_early(&self) -> bool {
            match *self {}
        }
        pub(crate) fn pick(
            &mut self,
            _: &[f32],
            _: usize,
            _: usize,
            _: Option<&mut llama_cpp_2::sampling::LlamaSampler>,
        ) -> llama_cpp_2::token::LlamaToken {
            match *self {}
        }
    }

    /// Never built: [`Grammars::new`] says why.
    #[derive(Debug)]
    pub(crate) enum Grammars {}

    pub(crate) const NOT_BUILT: &str = "structured output (JSON schemas and forced tool calls on the local model) is not built into this library: build edgecascade with its `structured` feature";

    impl Grammars {
        pub(crate) fn new(_: &LlamaModel) -> Result<Self, LocalError> {
            Err(LocalError::InvalidRequest(NOT_BUILT.into()))
        }
        pub(crate) fn matcher(&self, _: &ResponseFormat) -> Result<Option<Constraint>, LocalError> {
            match *self {}
        }
        pub(crate) fn lark_matcher(&self, _: String) -> Result<Constraint, LocalError> {
            match *self {}
        }
        pub(crate) fn validate_schema(&self, _: Value, _: &[u32]) -> Result<(), String> {
            match *self {}
        }
        pub(crate) fn validate(&self, _: &ResponseFormat, _: &[u32]) -> Result<(), String> {
            match *self {}
        }
    }
}

#[cfg(all(test, feature = "structured"))]
mod tests {
    use super::grammar::scan_closes;

    #[test]
    fn closers_close_the_string_first_then_the_innermost_bracket() {
        let case = |written: &str, token: &str| scan_closes(written.as_bytes(), token.as_bytes());
        assert!(case(r#"{"a": "xy"#, r#""}"#));
        assert!(case(r#"{"a": ["xy"#, r#""]}"#));
        // Inside a string a bracket is content, and outside one a quote opens a string.
        assert!(!case(r#"{"a": "xy"#, "]"));
        assert!(!case(r#"{"a": 1"#, r#"""#));
        // Brackets close innermost first; an escaped quote closes nothing.
        assert!(!case(r#"{"a": [1"#, "}"));
        assert!(!case(r#"{"a": "x\"#, r#"""#));
        // A quote or bracket inside a string does not count.
        assert!(case(r#"{"a": "[{\"", "b": 2"#, "}"));
    }
}
