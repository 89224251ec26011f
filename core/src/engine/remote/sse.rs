//! The streamed answer: a bounded line reader and the SSE events it yields, with their
//! streamed tool-call deltas.

use std::io::{BufRead, Read};
use std::time::Instant;

use serde_json::Value;

use super::json::finish_reason;
use super::{estimate_usage, RemoteOutput};
use crate::error::RemoteError;
use crate::types::{ChatRequest, FinishReason};

/// The longest SSE line accepted; a longer one is a malformed stream, not a reason to buffer
/// without bound.
pub(super) const MAX_LINE: usize = 1 << 20;

/// Reads one `\n`-terminated line of at most `max` bytes (line endings stripped, invalid
/// UTF-8 replaced). `Ok(None)` at the end of the stream; an error for a longer line.
pub(super) fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<String>> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(max as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an SSE line is longer than {max} bytes"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(buf).into_owned()))
}

/// The state of one SSE stream being read.
pub(super) struct Sse {
    pub(super) out: RemoteOutput,
    finish: Option<FinishReason>,
    data: String,
    pub(super) chunks: u32,
    t0: Instant,
}

impl Sse {
    pub(super) fn new(t0: Instant) -> Self {
        Self {
            out: RemoteOutput {
                text: String::new(),
                finish_reason: FinishReason::Stop,
                prompt_tokens: 0,
                completion_tokens: 0,
                usage_estimated: true,
                ttft_ms: 0.0,
                total_ms: 0.0,
                attempts: 1,
                server_ttft_ms: None,
                tool_calls: Vec::new(),
            },
            finish: None,
            data: String::new(),
            chunks: 0,
            t0,
        }
    }

    /// Takes one line; true once the stream is complete (`[DONE]`).
    pub(super) fn line(
        &mut self,
        line: &str,
        url: &str,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<bool, RemoteError> {
        if !line.is_empty() {
            if let Some(d) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
            // Comments (":") and other fields (event:, id:, retry:) are ignored.
            return Ok(false);
        }
        // End of one SSE event.
        if self.data.is_empty() {
            return Ok(false);
        }
        let event = std::mem::take(&mut self.data);
        if event == "[DONE]" {
            return Ok(true);
        }
        self.chunks += 1;
        let chunks = self.chunks;
        let malformed = |detail: String| RemoteError::Malformed {
            url: url.to_owned(),
            detail,
        };
        let v: Value = serde_json::from_str(&event).map_err(|e| {
            malformed(format!(
                "chunk {chunks} is not JSON ({e}): {}",
                event.chars().take(120).collect::<String>()
            ))
        })?;
        if let Some(err) = v.get("error") {
            return Err(RemoteError::Status {
                url: url.to_owned(),
                status: 500,
                body: err["message"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .chars()
                    .take(300)
                    .collect(),
            });
        }
        if let Some(t) = v["edgecascade"]["timings"]["ttft_ms"].as_f64() {
            self.out.server_ttft_ms = Some(t);
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as u32;
            self.out.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as u32;
            self.out.usage_estimated = false;
        }
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return Err(malformed(format!("chunk {chunks} has no choices")));
        };
        if let Some(c) = choices.first() {
            if let Some(t) = c["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                if self.out.text.is_empty() {
                    self.out.ttft_ms = self.t0.elapsed().as_secs_f64() * 1e3;
                    log::debug!("remote first text after {:.2} ms", self.out.ttft_ms);
                }
                self.out.text.push_str(t);
                on_text(t);
            }
            if let Some(deltas) = c["delta"]["tool_calls"].as_array() {
                self.tool_deltas(deltas)
                    .map_err(|e| malformed(format!("chunk {chunks}: {e}")))?;
            }
            if let Some(f) = c["finish_reason"].as_str() {
                self.finish = Some(finish_reason(Some(f)));
            }
        }
        Ok(false)
    }

    /// Streamed tool-call pieces: the first piece of a call (by `index`) brings its id and
    /// name, later ones append to its arguments.
    fn tool_deltas(&mut self, deltas: &[Value]) -> Result<(), String> {
        for d in deltas {
            let calls = &mut self.out.tool_calls;
            let index = d["index"]
                .as_u64()
                .map_or(calls.len().saturating_sub(1), |i| i as usize);
            if index > calls.len() || index > 128 {
                return Err(format!("tool call index {index} skips a call"));
            }
            if index == calls.len() {
                calls.push(crate::types::ToolCall {
                    id: format!("call_{index}"),
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let call = &mut calls[index];
            if let Some(id) = d["id"].as_str() {
                id.clone_into(&mut call.id);
            }
            if let Some(name) = d["function"]["name"].as_str() {
                call.name.push_str(name);
            }
            if let Some(a) = d["function"]["arguments"].as_str() {
                call.arguments.push_str(a);
            }
            if call.arguments.len() > MAX_LINE * 8 {
                return Err("tool call arguments over 8 MiB".into());
            }
        }
        Ok(())
    }

    /// The output of a stream that ended with `[DONE]`.
    pub(super) fn finish(
        mut self,
        req: &ChatRequest,
        url: &str,
    ) -> Result<RemoteOutput, RemoteError> {
        let Some(finish) = self.finish else {
            return Err(RemoteError::Cut {
                url: url.to_owned(),
                detail: "[DONE] without a finish_reason".into(),
            });
        };
        self.out.finish_reason = finish;
        if self.out.usage_estimated {
            (self.out.prompt_tokens, self.out.completion_tokens) =
                estimate_usage(req, &self.out.text);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_are_bounded() {
        let mut buf = Vec::new();
        let mut ok = std::io::Cursor::new(b"data: a\r\n\nlast".to_vec());
        assert_eq!(
            read_line_bounded(&mut ok, &mut buf, 16).unwrap().as_deref(),
            Some("data: a")
        );
        assert_eq!(
            read_line_bounded(&mut ok, &mut buf, 16).unwrap().as_deref(),
            Some("")
        );
        assert_eq!(
            read_line_bounded(&mut ok, &mut buf, 16).unwrap().as_deref(),
            Some("last")
        );
        assert_eq!(read_line_bounded(&mut ok, &mut buf, 16).unwrap(), None);
        let mut long = std::io::Cursor::new(vec![b'x'; 100]);
        let e = read_line_bounded(&mut long, &mut buf, 16).unwrap_err();
        assert!(e.to_string().contains("longer than 16"), "{e}");
    }
}
