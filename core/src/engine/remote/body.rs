//! The request body: the OpenAI chat-completions JSON for one request.

use serde_json::{json, Value};

use super::RemoteEngine;
use crate::types::ChatRequest;

impl RemoteEngine {
    pub(super) fn body(&self, req: &ChatRequest) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| crate::tools::openai_message(m, false))
            .collect();
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": self.stream,
            "temperature": req.sampling.temperature,
            "max_tokens": req.max_tokens,
        });
        if self.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if req.sampling.temperature > 0.0 && req.sampling.top_p < 1.0 {
            body["top_p"] = json!(req.sampling.top_p);
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if let Some(seed) = req.sampling.seed {
            body["seed"] = json!(seed);
        }
        if !req.tools.is_empty() {
            body["tools"] = req.tools.iter().map(crate::tools::openai_tool).collect();
            body["tool_choice"] = match &req.tool_choice {
                crate::types::ToolChoice::Auto => json!("auto"),
                crate::types::ToolChoice::None => json!("none"),
                crate::types::ToolChoice::Required => json!("required"),
                crate::types::ToolChoice::Function { name } => {
                    json!({"type": "function", "function": {"name": name}})
                }
            };
        }
        match &req.response_format {
            crate::types::ResponseFormat::Text => {}
            crate::types::ResponseFormat::JsonObject => {
                body["response_format"] = json!({"type": "json_object"});
            }
            crate::types::ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => {
                // The schema was checked to be JSON when the request was validated.
                let schema: Value = serde_json::from_str(schema).unwrap_or(Value::Null);
                body["response_format"] = json!({"type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": strict}});
            }
        }
        body
    }
}
