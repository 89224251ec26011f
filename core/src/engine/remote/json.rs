//! The non-streaming answer: one JSON object, its tool calls and its finish reason.

use std::time::Instant;

use serde_json::Value;

use super::{estimate_usage, RemoteEngine, RemoteOutput};
use crate::error::RemoteError;
use crate::types::{ChatRequest, FinishReason};

impl RemoteEngine {
    /// A non-streaming answer: one JSON object.
    pub(super) fn read_json(
        &self,
        text: &str,
        req: &ChatRequest,
        t0: Instant,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError> {
        let url = &self.url;
        let v: Value = serde_json::from_str(text).map_err(|e| RemoteError::Malformed {
            url: url.clone(),
            detail: format!(
                "response is not JSON ({e}): {}",
                text.chars().take(120).collect::<String>()
            ),
        })?;
        let choice = &v["choices"][0];
        let tool_calls = read_tool_calls(&choice["message"]["tool_calls"]).map_err(|detail| {
            RemoteError::Malformed {
                url: url.clone(),
                detail,
            }
        })?;
        // A message that only calls tools may have a null content.
        let content = match choice["message"]["content"].as_str() {
            Some(c) => c,
            None if !tool_calls.is_empty() => "",
            None => {
                return Err(RemoteError::Malformed {
                    url: url.clone(),
                    detail: "no choices[0].message.content".into(),
                })
            }
        };
        let ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
        on_text(content);
        let usage = v.get("usage").filter(|u| !u.is_null());
        let (est_prompt, est_completion) = estimate_usage(req, content);
        Ok(RemoteOutput {
            text: content.to_owned(),
            finish_reason: finish_reason(choice["finish_reason"].as_str()),
            prompt_tokens: usage
                .and_then(|u| u["prompt_tokens"].as_u64())
                .map_or(est_prompt, |n| n as u32),
            completion_tokens: usage
                .and_then(|u| u["completion_tokens"].as_u64())
                .map_or(est_completion, |n| n as u32),
            usage_estimated: usage.is_none(),
            ttft_ms,
            total_ms: 0.0,
            attempts: 1,
            server_ttft_ms: v["edgecascade"]["timings"]["ttft_ms"].as_f64(),
            tool_calls,
        })
    }
}

/// A server's `finish_reason`.
pub(super) fn finish_reason(s: Option<&str>) -> FinishReason {
    match s {
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// A message's `tool_calls` (absent or null: none). Arguments stay the JSON text the server
/// sent; whether they are valid is the runtime's check, so a bad call is reported, not lost.
fn read_tool_calls(v: &Value) -> Result<Vec<crate::types::ToolCall>, String> {
    let Some(calls) = v.as_array() else {
        return if v.is_null() {
            Ok(Vec::new())
        } else {
            Err("message.tool_calls is not an array".into())
        };
    };
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c["function"]["name"]
                .as_str()
                .ok_or_else(|| format!("tool_calls[{i}] has no function.name"))?;
            let arguments = match &c["function"]["arguments"] {
                Value::String(s) => s.clone(),
                Value::Null => "{}".into(),
                other => other.to_string(),
            };
            Ok(crate::types::ToolCall {
                id: c["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{i}"), str::to_owned),
                name: name.to_owned(),
                arguments,
            })
        })
        .collect()
}
