//! The model's own Jinja chat template, rendered with minijinja, for conversations with tools:
//! llama.cpp's built-in template engine knows a fixed list of formats and none of their tool
//! sections. Used only when the model's template mentions tools; everything else keeps the
//! built-in engine.
//!
//! The template comes from the model file, so it is untrusted: rendering runs on a fuel budget
//! (no endless loops), and any failure falls back to the lowered conversation
//! ([`crate::tools::lower`]) rather than failing the request.

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};

use crate::tools;
use crate::types::{ChatMessage, Tool};

/// Instructions a render may spend: the templates seen take a few thousand per message.
const FUEL: u64 = 5_000_000;

pub(super) struct Jinja {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// The template's own call format uses `<tool_call>` tags.
    pub(super) tagged: bool,
}

impl std::fmt::Debug for Jinja {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jinja")
    }
}

/// `tojson` as the Python templates have it: Python's separators, optional `indent`, no HTML
/// escaping. (minijinja hands filters their keyword arguments by value.)
#[allow(clippy::needless_pass_by_value)]
fn tojson(value: &Value, kwargs: minijinja::value::Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(&v, &mut ser)
                .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8(out).unwrap_or_default()
        }
        None => tools::to_json(&v),
    };
    Ok(Value::from_safe_string(text))
}

impl Jinja {
    /// The model's own template, when it has a tool section and compiles.
    pub(super) fn for_model(model: &llama_cpp_2::model::LlamaModel) -> Option<Self> {
        let template = model.chat_template(None).ok()?;
        let piece = |t| {
            let bytes = model.vocab().token_to_piece(t, true, None);
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Self::new(
            template.to_str().ok()?,
            piece(model.vocab().bos()),
            piece(model.vocab().eos()),
        )
    }

    /// Compiles `source` if it is a template with a tool section; `None` otherwise (or when it
    /// does not compile, which is logged).
    pub(super) fn new(source: &str, bos: String, eos: String) -> Option<Self> {
        if !source.contains("tools") {
            return None;
        }
        let mut env = Environment::new();
        // The settings of Hugging Face's template environment.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> Value {
            // Templates print today's date into the system turn; a fixed date keeps the prompt
            // (and its cached prefix) stable across days.
            Value::from("01 Jan 2026")
        });
        if let Err(e) = env.add_template_owned("chat", source.to_owned()) {
            log::warn!("the model's chat template does not compile for tool calls ({e}); tools are described in the system turn instead");
            return None;
        }
        Some(Self {
            env,
            bos,
            eos,
            tagged: source.contains(tools::OPEN),
        })
    }

    /// Renders the conversation with its tools and the assistant prefix.
    pub(super) fn render(
        &self,
        messages: &[ChatMessage],
        offered: &[Tool],
    ) -> Result<String, String> {
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| tools::openai_message(m, true))
            .collect();
        let tools: Option<Vec<serde_json::Value>> =
            (!offered.is_empty()).then(|| offered.iter().map(tools::openai_tool).collect());
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| e.to_string())
    }
}
