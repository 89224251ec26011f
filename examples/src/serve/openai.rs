//! The OpenAI chat-completions wire format: what we accept and what we send.

use edgecascade::{
    ChatMessage, ChatRequest, FinishReason, PolicyOverride, Response, ResponseFormat, Role,
    Sampling,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// `POST /v1/chat/completions` body. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub messages: Vec<WireMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {name, schema, strict}}`.
    pub response_format: Option<Value>,
    /// Our extension: routing controls.
    pub edgecascade: Option<Extension>,
}

/// OpenAI's `response_format`, or a 400 naming what is wrong.
fn response_format(v: Option<Value>) -> Result<ResponseFormat, ApiError> {
    let bad = |m: String| ApiError::invalid(m, Some("response_format"));
    let Some(v) = v else {
        return Ok(ResponseFormat::Text);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let js = v
                .get("json_schema")
                .ok_or_else(|| bad("response_format.json_schema is missing".into()))?;
            let name = js
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("response")
                .to_owned();
            let schema = js.get("schema").filter(|s| s.is_object()).ok_or_else(|| {
                bad("response_format.json_schema.schema must be an object".into())
            })?;
            Ok(ResponseFormat::JsonSchema {
                name,
                schema: schema.to_string(),
                strict: js.get("strict").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        other => Err(bad(format!(
            "response_format.type {other:?} must be text, json_object or json_schema"
        ))),
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize, Default)]
pub struct Extension {
    /// "local" or "remote".
    pub force: Option<String>,
    #[serde(default)]
    pub private: bool,
    /// The task hint: "choice", "number", "exact" or "yesno".
    pub task: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// A string, or an array of parts of which the text ones are used.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

/// A request error in OpenAI's shape, with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            param,
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl CompletionRequest {
    /// Our request, or a 400 saying what is wrong.
    #[allow(clippy::too_many_lines)]
    pub fn into_chat(self) -> Result<(ChatRequest, bool, bool), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "'messages' must contain at least one message",
                Some("messages"),
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role {other:?} is not supported (system, developer, user, assistant)"),
                        Some("messages"),
                    ))
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
            };
            messages.push(ChatMessage { role, content });
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                format!("temperature {temperature} is not in [0, 2]"),
                Some("temperature"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                format!("top_p {top_p} is not in (0, 1]"),
                Some("top_p"),
            ));
        }
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(u32::MAX);
        if max_tokens == 0 {
            return Err(ApiError::invalid(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) if v.len() <= 4 => v,
            Some(Stop::Many(_)) => {
                return Err(ApiError::invalid("at most 4 stop sequences", Some("stop")))
            }
        };
        let ext = self.edgecascade.unwrap_or_default();
        let policy = match ext.force.as_deref() {
            None => PolicyOverride::Auto,
            Some("local") => PolicyOverride::ForceLocal,
            Some("remote") => PolicyOverride::ForceRemote,
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("edgecascade.force {other:?} must be local or remote"),
                    Some("edgecascade"),
                ))
            }
        };
        let task_hint = match ext.task.as_deref() {
            None => None,
            Some(t) => Some(edgecascade::Kind::parse(t).ok_or_else(|| {
                ApiError::invalid(
                    format!("edgecascade.task {t:?} must be choice, number, exact or yesno"),
                    Some("edgecascade"),
                )
            })?),
        };
        let sampling = Sampling {
            temperature,
            top_p,
            top_k: 0,
            min_p: 0.0,
            seed: self.seed.map(|s| s as u32),
            ..Sampling::default()
        };
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        let response_format = response_format(self.response_format)?;
        Ok((
            ChatRequest {
                messages,
                max_tokens,
                sampling,
                stop,
                policy,
                private: ext.private,
                task_hint,
                // OpenAI clients cannot take text back: in cascade mode the local draft is
                // held until the route is settled.
                hold_draft: true,
                response_format,
            },
            self.stream,
            include_usage,
        ))
    }
}

pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

pub fn usage(r: &Response) -> Value {
    json!({
        "prompt_tokens": r.usage.prompt_tokens,
        "completion_tokens": r.usage.completion_tokens,
        "total_tokens": r.usage.prompt_tokens + r.usage.completion_tokens,
    })
}

/// Route, reason, confidence, cost and timings: the contract JSON without the text.
pub fn extension(r: &Response) -> Value {
    let mut v = r.to_contract_json();
    if let Some(o) = v.as_object_mut() {
        o.remove("text");
    }
    v
}

pub fn completion(id: &str, created: u64, model: &str, r: &Response) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": r.text},
            "logprobs": null,
            "finish_reason": finish_reason(r.finish_reason),
        }],
        "usage": usage(r),
        "edgecascade": extension(r),
    })
}

pub fn chunk(id: &str, created: u64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}
