//! Prompt rendering: the chat template (the model's own or a fallback), tokenisation through a
//! one-entry cache shared by the router's count and generation, and fitting to the context.

use super::{
    ChatMessage, ContextPolicy, LlamaChatMessage, LlamaChatTemplate, LlamaModel, LlamaToken,
    LocalEngine, LocalError, Role,
};
use crate::types::{ChatRequest, Tool};

impl LocalEngine {
    /// Drops the cached rendering of `messages`, if that is what the one-entry render cache
    /// holds, so no conversation stays in memory after its request.
    pub fn forget_rendered(&self, messages: &[ChatMessage]) {
        if let Ok(mut cache) = self.rendered.lock() {
            if cache
                .as_ref()
                .is_some_and(|(m, _, _)| m.as_slice() == messages)
            {
                *cache = None;
            }
        }
    }

    /// Tokens the chat template turns `messages` into (with the assistant prefix).
    pub fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<u32, LocalError> {
        Ok(self.render(messages, &[])?.len() as u32)
    }

    /// Tokens a request's prompt renders to, its tools included.
    pub fn count_request_tokens(&self, req: &ChatRequest) -> Result<u32, LocalError> {
        Ok(self
            .render(&req.messages, crate::tools::offered(req))?
            .len() as u32)
    }

    /// Renders through a one-entry cache: the runtime counts a request's prompt tokens for the
    /// router, then generation renders the same messages; the second call is a lookup.
    fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
    ) -> Result<Vec<LlamaToken>, LocalError> {
        if let Ok(cache) = self.rendered.lock() {
            if let Some((m, t, tokens)) = cache.as_ref() {
                if m.as_slice() == messages && t.as_slice() == tools {
                    return Ok(tokens.clone());
                }
            }
        }
        let tokens = if tools.is_empty() && !crate::tools::has_tool_turns(messages) {
            self.render_uncached(messages)?
        } else {
            self.render_tools(messages, tools)?
        };
        if let Ok(mut cache) = self.rendered.lock() {
            *cache = Some((messages.to_vec(), tools.to_vec(), tokens.clone()));
        }
        Ok(tokens)
    }

    /// A conversation with tools: the model's own template where it has a tool section, else
    /// the tools written into the system turn for the built-in template.
    fn render_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
    ) -> Result<Vec<LlamaToken>, LocalError> {
        if let Some(jinja) = &self.jinja {
            match jinja.render(messages, tools) {
                Ok(text) => {
                    if text.contains('\0') {
                        return Err(LocalError::InvalidRequest(
                            "message contains a NUL byte".into(),
                        ));
                    }
                    return Ok(self.tokenize_prompt(&text));
                }
                Err(e) => log::warn!(
                    "the model's chat template failed on this conversation ({e}); tools are described in the system turn instead"
                ),
            }
        }
        self.render_uncached(&crate::tools::lower(messages, tools))
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
        Ok(self.tokenize_prompt(&text))
    }

    /// A rendered prompt's tokens. The template already holds BOS where the model wants it;
    /// special tokens are parsed.
    fn tokenize_prompt(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut tokens = vocab.tokenize(text.as_bytes(), false, true);
        if vocab.should_add_bos() && tokens.first() != Some(&vocab.bos()) {
            tokens.insert(0, vocab.bos());
        }
        tokens
    }

    /// Renders the conversation, dropping the oldest turns if the policy allows.
    pub(super) fn fit_prompt(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
    ) -> Result<(Vec<LlamaToken>, u32), LocalError> {
        let n_ctx = self.info.n_ctx;
        let tokens = self.render(messages, tools)?;
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
                let t = self.render(&kept, tools)?;
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

pub(super) fn choose_template(
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
