//! The OpenAI chat-completions wire format: what we accept and what we send.

use edgecascade::{
    ChatMessage, ChatRequest, FinishReason, PolicyOverride, Response, ResponseFormat, Role,
    Sampling, Tool, ToolCall, ToolChoice,
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
    /// `[{"type": "function", "function": {name, description, parameters}}]`.
    pub tools: Option<Value>,
    /// `"auto" | "none" | "required" | {"type": "function", "function": {"name": ...}}`.
    pub tool_choice: Option<Value>,
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

/// OpenAI's `tools`, or a 400 naming what is wrong.
pub fn tools(v: Option<Value>) -> Result<Vec<Tool>, ApiError> {
    let bad = |m: String| ApiError::invalid(m, Some("tools"));
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| bad("tools must be an array".into()))?;
    if list.len() > 128 {
        return Err(bad(format!("{} tools; at most 128", list.len())));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad(format!("tools[{i}].type must be \"function\"")));
            }
            let f = t
                .get("function")
                .filter(|f| f.is_object())
                .ok_or_else(|| bad(format!("tools[{i}].function must be an object")))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("tools[{i}].function.name must be a string")))?;
            let description = match f.get("description") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) => Some(d.clone()),
                Some(_) => {
                    return Err(bad(format!(
                        "tools[{i}].function.description must be a string"
                    )))
                }
            };
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => String::new(),
                Some(p) if p.is_object() => p.to_string(),
                Some(_) => {
                    return Err(bad(format!(
                        "tools[{i}].function.parameters must be an object"
                    )))
                }
            };
            Ok(Tool {
                name: name.to_owned(),
                description,
                parameters,
            })
        })
        .collect()
}

/// OpenAI's `tool_choice`, or a 400.
pub fn tool_choice(v: Option<Value>) -> Result<ToolChoice, ApiError> {
    let bad = |m: String| ApiError::invalid(m, Some("tool_choice"));
    match v {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(bad(format!(
                "tool_choice {other:?} must be auto, none, required or a function"
            ))),
        },
        Some(o) => match o["function"]["name"].as_str() {
            Some(name) if o["type"] == "function" => Ok(ToolChoice::Function {
                name: name.to_owned(),
            }),
            _ => Err(bad(
                "tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}"
                    .into(),
            )),
        },
    }
}

/// One call as OpenAI writes it, in a message or (with `index`) a streamed delta.
pub fn tool_call(index: usize, c: &ToolCall) -> Value {
    json!({"index": index, "id": c.id, "type": "function",
           "function": {"name": c.name, "arguments": c.arguments}})
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
    /// The task: "choice", "number", "exact" or "yesno" also hint the answer kind; any name
    /// selects the hidden-state probe's per-task terms.
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
    /// An assistant turn's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<WireToolCall>>,
    /// A tool turn's call id.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireToolCall {
    pub id: String,
    pub function: WireFunction,
}

#[derive(Debug, Deserialize)]
pub struct WireFunction {
    pub name: String,
    /// JSON text, as OpenAI sends it (an object is accepted too).
    pub arguments: Value,
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
                "tool" => Role::Tool,
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role {other:?} is not supported (system, developer, user, assistant, tool)"),
                        Some("messages"),
                    ))
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match p.get("type").and_then(Value::as_str) {
                            Some("text") => text.push_str(
                                p.get("text").and_then(Value::as_str).ok_or_else(|| {
                                    ApiError::invalid(
                                        format!("messages[{i}].content[{j}].text must be a string"),
                                        Some("messages"),
                                    )
                                })?,
                            ),
                            // Content the models cannot read is refused, never dropped.
                            other => {
                                return Err(ApiError::invalid(
                                    format!(
                                        "messages[{i}].content[{j}] is of type {}: this server reads text only",
                                        other.map_or_else(|| "(none)".to_owned(), |t| format!("{t:?}"))
                                    ),
                                    Some("messages"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            let mut message = ChatMessage::new(role, content);
            if role == Role::Tool {
                message.tool_call_id = m.tool_call_id;
            }
            for c in m.tool_calls.unwrap_or_default() {
                let arguments = match c.function.arguments {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                message.tool_calls.push(ToolCall {
                    id: c.id,
                    name: c.function.name,
                    arguments,
                });
            }
            messages.push(message);
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
        if ext
            .task
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > 256)
        {
            return Err(ApiError::invalid(
                "edgecascade.task must be a name of 1 to 256 bytes",
                Some("edgecascade"),
            ));
        }
        let task_hint = ext.task.as_deref().and_then(edgecascade::Kind::parse);
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
        let tools = tools(self.tools)?;
        let tool_choice = tool_choice(self.tool_choice)?;
        Ok((
            ChatRequest {
                messages,
                max_tokens,
                sampling,
                stop,
                policy,
                private: ext.private,
                task_hint,
                task: ext.task,
                // OpenAI clients cannot take text back: in cascade mode the local draft is
                // held until the route is settled.
                hold_draft: true,
                response_format,
                tools,
                tool_choice,
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
        FinishReason::ToolCalls => "tool_calls",
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
            "message": message(r),
            "logprobs": null,
            "finish_reason": finish_reason(r.finish_reason),
        }],
        "usage": usage(r),
        "edgecascade": extension(r),
    })
}

/// The answer's message: its text, and its tool calls when it made some (then an empty text
/// is `null`, as OpenAI sends it).
fn message(r: &Response) -> Value {
    if r.tool_calls.is_empty() {
        return json!({"role": "assistant", "content": r.text});
    }
    let content = if r.text.is_empty() {
        Value::Null
    } else {
        json!(r.text)
    };
    let calls: Vec<Value> = r
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = tool_call(i, c);
            v.as_object_mut().map(|o| o.remove("index"));
            v
        })
        .collect();
    json!({"role": "assistant", "content": content, "tool_calls": calls})
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
