//! Tool calls: checking a request's tools, writing them into a prompt for a chat template that
//! has no tool support of its own, reading calls back out of a local answer, the grammar that
//! forces a call, and the checks that make a bad call escalate.
//!
//! The wire format on the local tier is the one Qwen2.5, Hermes and many other open models
//! were trained on: a JSON object `{"name": ..., "arguments": {...}}` inside `<tool_call>` tags.
//! A bare object of that shape as the whole answer (Llama 3.x style) is read as a call too.

use serde_json::{json, Value};

use crate::types::{ChatMessage, ChatRequest, Role, Tool, ToolCall, ToolChoice};

/// The tag that opens a call in a local answer.
pub(crate) const OPEN: &str = "<tool_call>";
/// The tag that closes it.
pub(crate) const CLOSE: &str = "</tool_call>";

/// The tools a request offers the model: none when it has none or says `tool_choice: none`.
pub(crate) fn offered(req: &ChatRequest) -> &[Tool] {
    if req.tool_choice == ToolChoice::None {
        &[]
    } else {
        &req.tools
    }
}

/// The request's tools, checked: names valid and unique, parameters an object schema, the
/// named choice one of them, messages' calls well formed. `Err` is for the caller (a 400).
pub(crate) fn validate(req: &ChatRequest) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in req.tools.iter().enumerate() {
        let ok = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok {
            return Err(format!(
                "tools[{i}].function.name {:?} must be 1 to 64 letters, digits, '_', '-' or '.'",
                crate::error::clip(&t.name)
            ));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(format!("tools[{i}]: the name {:?} is used twice", t.name));
        }
        parameters(t).map_err(|e| format!("tools[{i}].function.parameters: {e}"))?;
    }
    match &req.tool_choice {
        ToolChoice::Required if req.tools.is_empty() => {
            return Err("tool_choice is \"required\" but the request has no tools".into())
        }
        ToolChoice::Function { name } if !req.tools.iter().any(|t| &t.name == name) => {
            return Err(format!(
                "tool_choice names the function {:?}, which is not in tools",
                crate::error::clip(name)
            ))
        }
        _ => {}
    }
    for (i, m) in req.messages.iter().enumerate() {
        if !m.tool_calls.is_empty() && m.role != Role::Assistant {
            return Err(format!(
                "messages[{i}]: only assistant messages carry tool_calls"
            ));
        }
        for (j, c) in m.tool_calls.iter().enumerate() {
            let args: Value = serde_json::from_str(&c.arguments).map_err(|e| {
                format!("messages[{i}].tool_calls[{j}].function.arguments is not JSON: {e}")
            })?;
            if !args.is_object() {
                return Err(format!(
                    "messages[{i}].tool_calls[{j}].function.arguments must be a JSON object"
                ));
            }
        }
    }
    Ok(())
}

/// A tool's parameter schema: an object schema (an empty one when none is given).
pub(crate) fn parameters(tool: &Tool) -> Result<Value, String> {
    if tool.parameters.trim().is_empty() {
        return Ok(json!({"type": "object", "properties": {}}));
    }
    let v: Value = serde_json::from_str(&tool.parameters).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("must be a JSON schema object".into());
    }
    if let Some(t) = v.get("type") {
        if t != "object" {
            return Err(format!("the type must be \"object\", not {t}"));
        }
    }
    Ok(v)
}

/// A tool as OpenAI writes it (`{"type": "function", "function": {...}}`), for prompts and the
/// remote tier.
pub(crate) fn openai_tool(tool: &Tool) -> Value {
    let mut f = json!({"name": tool.name});
    if let Some(d) = &tool.description {
        f["description"] = json!(d);
    }
    f["parameters"] = parameters(tool).unwrap_or_else(|_| json!({"type": "object"}));
    json!({"type": "function", "function": f})
}

/// A message as OpenAI writes it: role, content, an assistant turn's `tool_calls`, a tool
/// turn's `tool_call_id`. The wire carries arguments as JSON text; chat templates index them
/// as an object (`as_object`).
pub(crate) fn openai_message(m: &ChatMessage, as_object: bool) -> Value {
    let mut v = json!({"role": m.role.as_str(), "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                let arguments = if as_object {
                    serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}))
                } else {
                    json!(c.arguments)
                };
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": arguments}})
            })
            .collect();
    }
    if m.role == Role::Tool {
        if let Some(id) = &m.tool_call_id {
            v["tool_call_id"] = json!(id);
        }
    }
    v
}

/// JSON with Python's separators (`", "` and `": "`), as the templates' `tojson` writes it in
/// the texts models were trained on.
pub(crate) fn to_json(v: &Value) -> String {
    struct Spaced;
    /// The separator before every item but the first.
    fn comma<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            comma(w, first)
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            comma(w, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    serde::Serialize::serialize(v, &mut ser).expect("a Value serialises");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// One call as the local wire format writes it (without the tags).
fn call_json(call: &ToolCall) -> String {
    let args: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
    to_json(&json!({"name": call.name, "arguments": args}))
}

/// The conversation rewritten for a chat template without tool support: the tools and the
/// call format in the system message, earlier calls as tagged text in assistant turns, and
/// tool results as user turns in `<tool_response>` tags.
pub(crate) fn lower(messages: &[ChatMessage], tools: &[Tool]) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if !tools.is_empty() {
        let mut system = match messages.first() {
            Some(m) if m.role == Role::System => {
                rest = &messages[1..];
                format!("{}\n\n", m.content)
            }
            _ => String::new(),
        };
        system.push_str(
            "# Tools\n\nYou can call functions to help answer. Their signatures are listed \
             inside <tools></tools> tags:\n<tools>",
        );
        for t in tools {
            system.push('\n');
            system.push_str(&to_json(&openai_tool(t)));
        }
        system.push_str(
            "\n</tools>\n\nTo call a function, answer with a JSON object holding its name and \
             arguments inside <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": \
             <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
        );
        out.push(ChatMessage::system(system));
    }
    let mut i = 0;
    while i < rest.len() {
        let m = &rest[i];
        match m.role {
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(OPEN);
                    text.push('\n');
                    text.push_str(&call_json(c));
                    text.push('\n');
                    text.push_str(CLOSE);
                }
                out.push(ChatMessage::assistant(text));
            }
            Role::Tool => {
                // Consecutive results share one user turn, as the trained templates do.
                let mut text = String::new();
                while i < rest.len() && rest[i].role == Role::Tool {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str("<tool_response>\n");
                    text.push_str(&rest[i].content);
                    text.push_str("\n</tool_response>");
                    i += 1;
                }
                out.push(ChatMessage::user(text));
                continue;
            }
            _ => out.push(ChatMessage::new(m.role, m.content.clone())),
        }
        i += 1;
    }
    out
}

/// The conversation has tool turns (calls or results), so it needs a tool-aware rendering
/// even when this request offers no tools.
pub(crate) fn has_tool_turns(messages: &[ChatMessage]) -> bool {
    messages
        .iter()
        .any(|m| m.role == Role::Tool || !m.tool_calls.is_empty())
}

/// A local answer split into what it said and the calls it made.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// The text outside the calls.
    pub content: String,
    /// The calls, in order, with generated ids.
    pub calls: Vec<ToolCall>,
    /// Why a call could not be read (bad JSON, no name, unclosed at the end).
    pub error: Option<String>,
}

/// The JSON object of one call: `name` and `arguments` (or `parameters`, as Llama 3.x writes).
fn read_call(v: &Value) -> Result<(String, String), String> {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the call has no \"name\" string")?;
    let args = match v.get("arguments").or_else(|| v.get("parameters")) {
        None => json!({}),
        // Some models write the arguments as a JSON string, as the OpenAI API carries them.
        Some(Value::String(s)) => serde_json::from_str(s)
            .map_err(|e| format!("the arguments of {name:?} are not JSON: {e}"))?,
        Some(v) => v.clone(),
    };
    if !args.is_object() {
        return Err(format!("the arguments of {name:?} are not a JSON object"));
    }
    Ok((name.to_owned(), args.to_string()))
}

/// The inside of a Markdown code fence that is the whole text (```` ```json ... ``` ````).
fn unfence(t: &str) -> &str {
    let Some(inner) = t.strip_prefix("```").and_then(|r| r.strip_suffix("```")) else {
        return t;
    };
    inner
        .split_once('\n')
        .map_or(inner, |(_lang, body)| body)
        .trim()
}

/// Reads the calls out of a local answer. `id` makes each call's id (`call_<id>_<n>`).
pub fn parse(text: &str, id: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let push = |parsed: &mut Parsed, name: String, arguments: String| {
        let n = parsed.calls.len();
        parsed.calls.push(ToolCall {
            id: format!("call_{id}_{n}"),
            name,
            arguments,
        });
    };
    let Some(start) = text.find(OPEN) else {
        // A bare call object as the whole answer, perhaps in a code fence.
        let t = unfence(text.trim());
        if t.starts_with('{') {
            if let Ok(v) = serde_json::from_str::<Value>(t) {
                if v.get("name").is_some()
                    && (v.get("arguments").is_some() || v.get("parameters").is_some())
                {
                    match read_call(&v) {
                        Ok((name, args)) => push(&mut parsed, name, args),
                        Err(e) => parsed.error = Some(e),
                    }
                    return parsed;
                }
            }
        }
        text.clone_into(&mut parsed.content);
        return parsed;
    };
    text[..start].trim_end().clone_into(&mut parsed.content);
    let mut rest = &text[start..];
    while let Some(body) = rest.strip_prefix(OPEN) {
        // The call ends after its JSON value and the closing tag (an argument may hold the
        // tag itself); failing that, at the first closing tag.
        let value_then_tag = json_prefix(body).and_then(|end| {
            let tail = body[end..].trim_start();
            tail.strip_prefix(CLOSE).map(|after| (&body[..end], after))
        });
        let (inner, after, closed) = match (value_then_tag, body.find(CLOSE)) {
            (Some((inner, after)), _) => (inner, after, true),
            (None, Some(end)) => (&body[..end], &body[end + CLOSE.len()..], true),
            (None, None) => (body, "", false),
        };
        let n = parsed.calls.len() + 1;
        match serde_json::from_str::<Value>(inner.trim()) {
            Ok(v) => match read_call(&v) {
                Ok((name, args)) => push(&mut parsed, name, args),
                Err(e) => {
                    parsed.error.get_or_insert(format!("tool call {n}: {e}"));
                }
            },
            Err(e) => {
                let why = if closed {
                    format!("tool call {n} is not JSON: {e}")
                } else {
                    format!("tool call {n} is cut short: {e}")
                };
                parsed.error.get_or_insert(why);
            }
        }
        rest = after.trim_start();
        if !rest.starts_with(OPEN) {
            // Text after the calls is kept with the content.
            if !rest.trim().is_empty() {
                if !parsed.content.is_empty() {
                    parsed.content.push('\n');
                }
                parsed.content.push_str(rest.trim());
            }
            break;
        }
    }
    parsed
}

/// The byte length of the JSON value at the start of `s` (after whitespace), if one is there.
fn json_prefix(s: &str) -> Option<usize> {
    let lead = s.len() - s.trim_start().len();
    let mut values =
        serde_json::Deserializer::from_str(&s[lead..]).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => Some(lead + values.byte_offset()),
        _ => None,
    }
}

/// Why `calls` are not acceptable answers to `req` (name unknown, a required argument missing,
/// an argument not allowed, none made when one was required). Type checks of the argument
/// values belong to the caller that holds a grammar.
pub(crate) fn check(req: &ChatRequest, calls: &[ToolCall]) -> Result<(), String> {
    let tools = offered(req);
    if calls.is_empty() {
        return match &req.tool_choice {
            ToolChoice::Required => Err("no tool call, but tool_choice is \"required\"".into()),
            ToolChoice::Function { name } => {
                Err(format!("no call to {name:?}, which tool_choice requires"))
            }
            _ => Ok(()),
        };
    }
    if tools.is_empty() {
        return Err("a tool call, but the request offers no tools".into());
    }
    for c in calls {
        let Some(tool) = tools.iter().find(|t| t.name == c.name) else {
            return Err(format!(
                "a call to {:?}, which is not one of the request's tools",
                crate::error::clip(&c.name)
            ));
        };
        if let ToolChoice::Function { name } = &req.tool_choice {
            if &c.name != name {
                return Err(format!(
                    "a call to {:?}, but tool_choice names {name:?}",
                    c.name
                ));
            }
        }
        let args: Value = serde_json::from_str(&c.arguments)
            .map_err(|e| format!("the arguments of {:?} are not JSON: {e}", c.name))?;
        let Some(args) = args.as_object() else {
            return Err(format!(
                "the arguments of {:?} are not a JSON object",
                c.name
            ));
        };
        let schema = parameters(tool).unwrap_or_else(|_| json!({}));
        for key in schema["required"].as_array().into_iter().flatten() {
            if let Some(key) = key.as_str() {
                if !args.contains_key(key) {
                    return Err(format!(
                        "the call to {:?} lacks the required argument {key:?}",
                        c.name
                    ));
                }
            }
        }
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            let known = schema["properties"].as_object();
            if let Some(extra) = args
                .keys()
                .find(|k| !known.is_some_and(|p| p.contains_key(*k)))
            {
                return Err(format!(
                    "the call to {:?} has the argument {extra:?}, which its schema does not allow",
                    c.name
                ));
            }
        }
    }
    Ok(())
}

/// Closes every object schema that lists its properties and says nothing of others
/// (`additionalProperties: false`), down through properties and array items. For decoding
/// only: a small model given an open object can wander off a declared key into an invented one
/// (BFCL, Qwen2.5-0.5B: `"year': 2020}}</tool_call>..."` written as one key, which put a
/// closing tag inside the call), while an app's function takes only the arguments it declares.
/// The after-the-fact check keeps the schema as written.
fn closed(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        if o.contains_key("properties") && !o.contains_key("additionalProperties") {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
        if let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut) {
            for p in props.values_mut() {
                *p = closed(p.take());
            }
        }
        if let Some(items) = o.get_mut("items") {
            *items = closed(items.take());
        }
    }
    v
}

/// The JSON schema of one call to any of `tools`: `{"name": <const>, "arguments": <params>}`,
/// the parameters closed to the arguments they declare.
pub(crate) fn call_schema(tools: &[&Tool]) -> Value {
    let one = |t: &Tool| {
        json!({
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": parameters(t).map_or_else(|_| json!({"type": "object"}), closed),
            },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    };
    let mut schema = if tools.len() == 1 {
        one(tools[0])
    } else {
        json!({"anyOf": tools.iter().map(|t| one(t)).collect::<Vec<_>>()})
    };
    schema["x-guidance"] = json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": "
    });
    schema
}

/// Whether the local tier decodes `req` under a grammar: a JSON response format, or a forced
/// call to one of its tools.
pub fn constrained(req: &ChatRequest) -> bool {
    !matches!(req.response_format, crate::types::ResponseFormat::Text)
        || !forced_tools(req).is_empty()
}

/// The tools `req` forces a call to: all of them under `required`, the named one, else none.
fn forced_tools(req: &ChatRequest) -> Vec<&Tool> {
    match &req.tool_choice {
        ToolChoice::Required => req.tools.iter().collect(),
        ToolChoice::Function { name } => req.tools.iter().filter(|t| &t.name == name).collect(),
        _ => Vec::new(),
    }
}

/// The llguidance (Lark) grammar that forces one call, for `required` or a named function:
/// `<tool_call>\n{...}\n</tool_call>` when `tagged`, else the bare object. `None` when the
/// request does not force a call.
pub(crate) fn forced_grammar(req: &ChatRequest, tagged: bool) -> Option<String> {
    let tools = forced_tools(req);
    if tools.is_empty() {
        return None;
    }
    let schema = call_schema(&tools);
    Some(if tagged {
        format!("start: \"{OPEN}\\n\" call \"\\n{CLOSE}\"\ncall: %json {schema}\n")
    } else {
        format!("start: call\ncall: %json {schema}\n")
    })
}

/// The constrained fallback under `auto`, for a model whose chat template has no tool section
/// (the tools are described in its system turn): the answer is free text that does not start
/// with `<`, or one call in `<tool_call>` tags whose JSON the grammar holds to the tools'
/// schemas. The model still chooses, at its first token; once it starts a call, the call is
/// valid. `None` unless `req` offers tools under `auto` with a text response format.
pub(crate) fn auto_grammar(req: &ChatRequest) -> Option<String> {
    if req.tools.is_empty()
        || req.tool_choice != ToolChoice::Auto
        || !matches!(req.response_format, crate::types::ResponseFormat::Text)
    {
        return None;
    }
    let tools: Vec<&Tool> = req.tools.iter().collect();
    let schema = call_schema(&tools);
    Some(format!(
        "start: TEXT | \"{OPEN}\\n\" call \"\\n{CLOSE}\"\nTEXT: /[^<](?s:.*)/\ncall: %json {schema}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_closes_open_objects_and_keeps_what_the_schema_says() {
        let t = Tool {
            name: "f".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {
                "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "b": {"type": "array", "items": {"type": "object", "properties": {"y": {"type": "string"}}}},
                "c": {"type": "object", "properties": {}, "additionalProperties": true},
                "d": {"type": "object"}
            }})
            .to_string(),
        };
        let s = call_schema(&[&t]);
        let args = &s["properties"]["arguments"];
        assert_eq!(args["additionalProperties"], false, "{s}");
        assert_eq!(args["properties"]["a"]["additionalProperties"], false);
        assert_eq!(
            args["properties"]["b"]["items"]["additionalProperties"],
            false
        );
        // Said explicitly, or an object without listed properties: left as it is.
        assert_eq!(args["properties"]["c"]["additionalProperties"], true);
        assert!(args["properties"]["d"]
            .get("additionalProperties")
            .is_none());
        // The check reads the schema as written.
        assert!(parameters(&t)
            .unwrap()
            .get("additionalProperties")
            .is_none());
    }

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: r#"{"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["c","f"]}},"required":["city"],"additionalProperties":false}"#.into(),
        }
    }

    fn req(choice: ToolChoice) -> ChatRequest {
        ChatRequest {
            tools: vec![weather()],
            tool_choice: choice,
            ..ChatRequest::user("weather in Paris?")
        }
    }

    #[test]
    fn tagged_calls_are_read_with_the_text_around_them() {
        let p = parse(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}\n</tool_call>",
            "r1",
        );
        assert_eq!(p.error, None);
        assert_eq!(p.content, "Let me check.");
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[0].id, "call_r1_0");
        assert_eq!(p.calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(p.calls[1].arguments, r#"{"city":"Rome"}"#);
    }

    #[test]
    fn bare_call_objects_and_plain_text() {
        let p = parse(
            r#" {"name": "get_weather", "parameters": {"city": "Oslo"}}"#,
            "x",
        );
        assert_eq!(p.calls[0].name, "get_weather");
        assert_eq!(p.content, "");
        let p = parse("```json\n{\"name\": \"f\", \"arguments\": {}}\n```", "x");
        assert_eq!((p.calls[0].name.as_str(), p.error), ("f", None));
        let p = parse(r#"{"city": "Oslo"}"#, "x");
        assert!(p.calls.is_empty());
        assert_eq!(p.content, r#"{"city": "Oslo"}"#);
        let p = parse("It is sunny.", "x");
        assert_eq!(
            p,
            Parsed {
                content: "It is sunny.".into(),
                ..Parsed::default()
            }
        );
    }

    #[test]
    fn a_closing_tag_inside_an_argument_does_not_end_the_call() {
        let p = parse(
            "<tool_call>\n{\"name\": \"note\", \"arguments\": {\"text\": \"a</tool_call>b\"}}\n</tool_call>\nDone.",
            "x",
        );
        assert_eq!(p.error, None);
        assert_eq!(p.calls.len(), 1);
        assert_eq!(p.calls[0].arguments, r#"{"text":"a</tool_call>b"}"#);
        assert_eq!(p.content, "Done.");
        // JSON followed by something other than the tag: read up to the tag, as before.
        let p = parse("<tool_call>{\"name\": \"f\"} x</tool_call>", "x");
        assert!(p.error.unwrap().contains("not JSON"));
    }

    #[test]
    fn broken_calls_are_errors_not_text() {
        let p = parse("<tool_call>\n{\"name\": \"get_weather\", \"argu", "x");
        assert!(p.error.unwrap().contains("cut short"));
        let p = parse("<tool_call>\nnot json\n</tool_call>", "x");
        assert!(p.error.unwrap().contains("not JSON"));
        let p = parse("<tool_call>{\"arguments\": {}}</tool_call>", "x");
        assert!(p.error.unwrap().contains("no \"name\""));
    }

    #[test]
    fn checks_name_required_and_extra_arguments() {
        let call = |name: &str, args: &str| ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments: args.into(),
        };
        let r = req(ToolChoice::Auto);
        assert_eq!(
            check(&r, &[call("get_weather", r#"{"city":"Paris"}"#)]),
            Ok(())
        );
        assert_eq!(check(&r, &[]), Ok(()));
        assert!(check(&r, &[call("get_time", "{}")])
            .unwrap_err()
            .contains("not one of"));
        assert!(check(&r, &[call("get_weather", "{}")])
            .unwrap_err()
            .contains("\"city\""));
        assert!(check(&r, &[call("get_weather", r#"{"city":"P","x":1}"#)])
            .unwrap_err()
            .contains("\"x\""));
        assert!(check(&req(ToolChoice::Required), &[]).is_err());
        assert!(check(
            &req(ToolChoice::None),
            &[call("get_weather", r#"{"city":"P"}"#)]
        )
        .is_err());
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut r = req(ToolChoice::Function {
            name: "nope".into(),
        });
        assert!(validate(&r).unwrap_err().contains("tool_choice"));
        r.tool_choice = ToolChoice::Auto;
        r.tools[0].parameters = r#"{"type":"string"}"#.into();
        assert!(validate(&r).unwrap_err().contains("parameters"));
        r.tools[0].parameters = String::new();
        r.tools.push(weather());
        r.tools[1].parameters = String::new();
        assert!(validate(&r).unwrap_err().contains("twice"));
        r.tools.pop();
        r.tools[0].name = "has space".into();
        assert!(validate(&r).unwrap_err().contains("name"));
    }

    #[test]
    fn lowering_puts_tools_in_the_system_turn_and_results_in_user_turns() {
        let msgs = vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("weather?"),
            ChatMessage::assistant_calls(
                "",
                vec![ToolCall {
                    id: "c1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
            ),
            ChatMessage::tool_result("c1", "18 C"),
            ChatMessage::tool_result("c2", "rain"),
        ];
        let out = lower(&msgs, &[weather()]);
        assert_eq!(out.len(), 4);
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert!(out[0].content.contains(r#""name": "get_weather""#));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        );
        assert_eq!(out[3].role, Role::User);
        assert!(out[3]
            .content
            .contains("18 C\n</tool_response>\n<tool_response>\nrain"));
    }

    #[test]
    fn the_forced_grammar_names_only_the_chosen_tool() {
        assert!(forced_grammar(&req(ToolChoice::Auto), true).is_none());
        let g = forced_grammar(&req(ToolChoice::Required), true).unwrap();
        assert!(g.starts_with("start: \"<tool_call>\\n\" call"));
        assert!(g.contains(r#""const":"get_weather""#), "{g}");
    }
}
