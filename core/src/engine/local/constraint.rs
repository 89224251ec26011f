//! Structured output on the local tier: a JSON schema (or "any JSON object") compiled by
//! llguidance into a token mask that drives the sampler, so every answer parses and
//! validates; and the same grammar checking an answer's tokens after the fact (a truncated
//! local answer, or a remote one).
//!
//! Without the `structured` feature (a smaller mobile library) there is no grammar: requests
//! that need one are refused with a clear error, and answers are checked for their JSON shape
//! only.

use llama_cpp_2::sampling::LlamaSampler;
use serde_json::Value;

use crate::types::ResponseFormat;

#[cfg(feature = "structured")]
pub(crate) use grammar::{Grammars, Matcher};
#[cfg(not(feature = "structured"))]
pub(crate) use lean::{Grammars, Matcher};

/// The sampler that applies a constraint.
pub(crate) fn sampler(m: Matcher) -> LlamaSampler {
    #[cfg(feature = "structured")]
    return LlamaSampler::from(m);
    #[cfg(not(feature = "structured"))]
    match m {}
}

/// Moves a constraint past tokens already written (a draft being continued), as far as the
/// grammar allows them.
pub(crate) fn advance(m: &mut Matcher, tokens: &[u32]) {
    #[cfg(feature = "structured")]
    let _ = m.try_consume_tokens(tokens);
    #[cfg(not(feature = "structured"))]
    {
        let _ = tokens;
        match *m {}
    }
}

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
    use llama_cpp_2::model::LlamaModel;
    use llama_cpp_2::sampling::LlamaSampler;
    use llguidance::api::TopLevelGrammar;
    pub(crate) use llguidance::Matcher;
    use llguidance::ParserFactory;
    use serde_json::Value;

    use super::schema_of;
    use crate::error::LocalError;
    use crate::types::ResponseFormat;

    /// The grammar compiler for one model's vocabulary (built once, on the first structured
    /// request: walking the vocabulary takes a while).
    pub(crate) struct Grammars {
        factory: ParserFactory,
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
            Ok(Self { factory })
        }

        /// A fresh matcher for `format`; `None` for plain text. A schema llguidance cannot enforce
        /// (an unsupported keyword, a contradiction) is an `InvalidRequest` naming the reason.
        pub(crate) fn matcher(
            &self,
            format: &ResponseFormat,
        ) -> Result<Option<Matcher>, LocalError> {
            let Some(schema) = schema_of(format).map_err(LocalError::InvalidRequest)? else {
                return Ok(None);
            };
            self.compile(TopLevelGrammar::from_json_schema(schema))
                .map(Some)
                .map_err(|e| {
                    LocalError::InvalidRequest(format!(
                        "response_format: the schema cannot be enforced: {e}"
                    ))
                })
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
        pub(crate) fn lark_matcher(&self, grammar: String) -> Result<Matcher, LocalError> {
            self.compile(TopLevelGrammar::from_lark(grammar))
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
}

/// Without the `structured` feature: no grammar can be built, so none exists.
#[cfg(not(feature = "structured"))]
mod lean {
    use llama_cpp_2::model::LlamaModel;
    use serde_json::Value;

    use crate::error::LocalError;
    use crate::types::ResponseFormat;

    /// A constraint cannot be built without the feature.
    pub(crate) enum Matcher {}

    /// Never built: [`Grammars::new`] says why.
    #[derive(Debug)]
    pub(crate) enum Grammars {}

    pub(crate) const NOT_BUILT: &str = "structured output (JSON schemas and forced tool calls on the local model) is not built into this library: build edgecascade with its `structured` feature";

    impl Grammars {
        pub(crate) fn new(_: &LlamaModel) -> Result<Self, LocalError> {
            Err(LocalError::InvalidRequest(NOT_BUILT.into()))
        }
        pub(crate) fn matcher(&self, _: &ResponseFormat) -> Result<Option<Matcher>, LocalError> {
            match *self {}
        }
        pub(crate) fn lark_matcher(&self, _: String) -> Result<Matcher, LocalError> {
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
