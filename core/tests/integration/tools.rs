//! Tool calls through real llama.cpp on both chat-template paths (SmolLM2's template has no tool
//! section, so the tools are written into its system turn; Qwen2.5's has one, rendered with
//! minijinja), and through the remote tier against a scripted HTTP server on 127.0.0.1.

use std::sync::{Arc, Mutex, OnceLock};

use edgecascade::config::RemoteConfig;
use edgecascade::{
    ChatMessage, ChatRequest, Config, Event, FinishReason, PolicyOverride, Reason, Route, Runtime,
    Tool, ToolChoice,
};
use serde_json::{json, Value};

use crate::fault_server::{Behavior, FaultServer};

fn weather() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Current weather in a city".into()),
        parameters: json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": false
        })
        .to_string(),
    }
}

/// Nested objects, an array, integers, a boolean, required keys.
fn order() -> Tool {
    Tool {
        name: "place_order".into(),
        description: Some("Order items for delivery".into()),
        parameters: json!({
            "type": "object",
            "properties": {
                "items": {"type": "array", "maxItems": 3, "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "maxLength": 12},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 9}
                    },
                    "required": ["sku", "quantity"],
                    "additionalProperties": false
                }},
                "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                            "required": ["city"], "additionalProperties": false},
                "express": {"type": "boolean"}
            },
            "required": ["items", "address", "express"],
            "additionalProperties": false
        })
        .to_string(),
    }
}

fn qwen() -> std::path::PathBuf {
    crate::model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen05")
}

fn local(model: std::path::PathBuf) -> Runtime {
    let mut c = crate::config_for(model);
    c.local.n_ctx = Some(2048);
    Runtime::new(c).expect("load")
}

fn qwen_rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| local(qwen()))
}

fn smol_rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| local(crate::smollm2()))
}

fn args(r: &edgecascade::Response, i: usize) -> Value {
    serde_json::from_str(&r.tool_calls[i].arguments).expect("arguments are JSON")
}

fn check_order(v: &Value) {
    let o = v.as_object().expect("object");
    assert_eq!(o.len(), 3, "{v}");
    let items = o["items"].as_array().expect("items");
    assert!(items.len() <= 3, "{v}");
    for it in items {
        assert!(it["sku"].is_string(), "{v}");
        assert!(
            it["quantity"]
                .as_i64()
                .is_some_and(|q| (1..=9).contains(&q)),
            "{v}"
        );
        assert_eq!(it.as_object().unwrap().len(), 2, "{v}");
    }
    assert!(o["address"]["city"].is_string(), "{v}");
    assert!(o["express"].is_boolean(), "{v}");
}

#[test]
fn forced_calls_are_valid_on_both_template_paths() {
    for (name, rt) in [("smollm2", smol_rt()), ("qwen", qwen_rt())] {
        for choice in [
            ToolChoice::Required,
            ToolChoice::Function {
                name: "place_order".into(),
            },
        ] {
            let req = ChatRequest {
                tools: vec![weather(), order()],
                tool_choice: choice.clone(),
                max_tokens: 200,
                ..ChatRequest::user("Send two boxes of tea (sku TEA-1) to Lyon, express.")
            };
            let r = rt.chat(&req, &edgecascade::NullSink).expect("answer");
            assert_eq!(r.format_error, None, "{name} {choice:?}: {r:?}");
            assert_eq!(r.tool_calls.len(), 1, "{name} {choice:?}: {r:?}");
            assert_eq!(r.finish_reason, FinishReason::ToolCalls, "{name}");
            let call = &r.tool_calls[0];
            if matches!(choice, ToolChoice::Function { .. }) {
                assert_eq!(call.name, "place_order", "{name}");
            }
            let v = args(&r, 0);
            match call.name.as_str() {
                "place_order" => check_order(&v),
                "get_weather" => {
                    assert!(v["city"].is_string(), "{v}");
                    assert!(["celsius", "fahrenheit"].contains(&v["unit"].as_str().unwrap()));
                }
                other => panic!("{name}: a call to {other}"),
            }
        }
    }
}

/// SmolLM2's template has no tool section: under `auto` it decodes under the constrained
/// fallback, so a text answer stays text and a call, once started, is valid.
#[test]
fn under_auto_a_template_without_tools_gets_text_or_a_valid_call() {
    let rt = smol_rt();
    let engine = rt.local_engine().expect("local");
    let req = ChatRequest {
        tools: vec![weather(), order()],
        max_tokens: 160,
        ..ChatRequest::user("Send two boxes of tea (sku TEA-1) to Lyon, express.")
    };
    // What the model writes on its own: either is fine, and either is valid.
    let r = rt.chat(&req, &edgecascade::NullSink).expect("answer");
    assert_eq!(r.format_error, None, "{r:?}");
    assert!(
        r.tool_calls.len() == 1 || !r.text.trim().is_empty(),
        "{r:?}"
    );
    // Once a call has started (the answer continued from its opening tag), the grammar holds
    // it to a valid call to one of the tools, whatever the model would rather write.
    let draft = "<tool_call>\n";
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let out = engine
        .continue_answer(&req, draft, &cancel, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .expect("continue");
    let text = format!("{draft}{}", out.text);
    let parsed = edgecascade::tools::parse(&text, "t");
    assert_eq!(parsed.error, None, "{text}");
    assert_eq!(parsed.calls.len(), 1, "{text}");
    engine
        .check_calls(&req, &parsed.calls)
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    // A text answer cannot start with the tag's first character, so no half-written markup.
    assert!(!r.text.starts_with('<'), "{r:?}");
}

#[test]
fn qwen_calls_in_its_own_format_and_reads_the_result() {
    let rt = qwen_rt();
    let req = ChatRequest {
        tools: vec![weather(), order()],
        max_tokens: 80,
        ..ChatRequest::user("What's the weather in Paris, in celsius?")
    };
    let events = Mutex::new(String::new());
    let sink = |e: Event| {
        if let Event::Token { text, .. } = e {
            events.lock().unwrap().push_str(&text);
        }
    };
    let r = rt.chat(&req, &sink).expect("answer");
    assert_eq!(r.format_error, None, "{r:?}");
    assert_eq!(r.tool_calls.len(), 1, "{r:?}");
    assert_eq!(r.tool_calls[0].name, "get_weather");
    assert_eq!(args(&r, 0)["city"], "Paris");
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    // The call's markup never reaches the stream.
    assert!(!events.lock().unwrap().contains("tool_call"));

    // The second step: the call and its result in the history, the model answers in words.
    let mut next = req.clone();
    next.messages.push(ChatMessage::assistant_calls(
        r.text.clone(),
        r.tool_calls.clone(),
    ));
    next.messages.push(ChatMessage::tool_result(
        r.tool_calls[0].id.clone(),
        r#"{"temperature": 18, "sky": "cloudy"}"#,
    ));
    next.tool_choice = ToolChoice::None;
    let r2 = rt.chat(&next, &edgecascade::NullSink).expect("answer");
    assert!(r2.tool_calls.is_empty(), "{r2:?}");
    assert_eq!(r2.finish_reason, FinishReason::Stop, "{r2:?}");
    assert!(r2.text.contains("18"), "{}", r2.text);
}

#[test]
fn a_tool_the_schema_cannot_enforce_and_a_bad_choice_are_clear_errors() {
    let rt = smol_rt();
    let mut bad = weather();
    bad.parameters = r#"{"type":"object","properties":{"x":{"type":"string","format":"no-such-format"}},"required":["x"]}"#.into();
    let req = ChatRequest {
        tools: vec![bad],
        tool_choice: ToolChoice::Required,
        ..ChatRequest::user("hi")
    };
    let e = rt.chat(&req, &edgecascade::NullSink).unwrap_err();
    assert_eq!(e.kind(), edgecascade::ErrorKind::InvalidRequest, "{e}");
    assert!(e.to_string().contains("tools"), "{e}");
    let req = ChatRequest {
        tools: vec![weather()],
        tool_choice: ToolChoice::Function {
            name: "launch".into(),
        },
        ..ChatRequest::user("hi")
    };
    let e = rt.chat(&req, &edgecascade::NullSink).unwrap_err();
    assert!(e.to_string().contains("\"launch\""), "{e}");
}

fn remote_rt(server: &FaultServer, model: Option<std::path::PathBuf>, stream: bool) -> Runtime {
    let mut c = match model {
        Some(m) => crate::config_for(m),
        None => Config::default(),
    };
    c.remote = Some(RemoteConfig {
        base_url: server.url.clone(),
        model: "remote-model".into(),
        stream,
        max_retries: 0,
        total_timeout_s: 30.0,
        ..RemoteConfig::default()
    });
    Runtime::new(c).expect("runtime")
}

fn delta(d: Value, finish: Option<&str>) -> String {
    json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
           "choices": [{"index": 0, "delta": d, "finish_reason": finish}]})
    .to_string()
}

#[test]
fn remote_calls_are_read_from_streamed_deltas_and_whole_answers_and_checked() {
    // Streamed: the arguments arrive in three pieces, as OpenAI sends them.
    let events = vec![
        delta(json!({"role": "assistant", "content": null}), None),
        delta(
            json!({"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]}),
            None,
        ),
        delta(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Par"}}]}),
            None,
        ),
        delta(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "is\", \"unit\": \"celsius\"}"}}]}),
            None,
        ),
        delta(json!({}), Some("tool_calls")),
    ];
    let server = FaultServer::start(vec![Behavior::Events(events)]);
    let rt = remote_rt(&server, None, true);
    let req = ChatRequest {
        tools: vec![weather()],
        tool_choice: ToolChoice::Required,
        ..ChatRequest::user("weather in Paris?")
    };
    let r = rt.chat(&req, &edgecascade::NullSink).expect("answer");
    assert_eq!(r.route, Route::Remote);
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "call_abc");
    assert_eq!(args(&r, 0), json!({"city": "Paris", "unit": "celsius"}));
    assert_eq!(r.format_error, None);
    // The request carried the tools and the choice in OpenAI's shape.
    let body: Value = serde_json::from_str(&server.bodies.lock().unwrap()[0]).unwrap();
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(body["tool_choice"], "required");

    // Whole (not streamed), and naming a tool the request does not offer: reported, not lost.
    let whole = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "c9", "type": "function",
        "function": {"name": "get_time", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8}})
    .to_string();
    let body: &'static str = Box::leak(whole.into_boxed_str());
    let server = FaultServer::start(vec![Behavior::Json(body)]);
    let rt = remote_rt(&server, None, false);
    let req = ChatRequest {
        tools: vec![weather()],
        ..ChatRequest::user("weather in Paris?")
    };
    let r = rt.chat(&req, &edgecascade::NullSink).expect("answer");
    assert_eq!(r.tool_calls[0].name, "get_time");
    assert!(
        r.format_error
            .as_deref()
            .is_some_and(|e| e.contains("get_time")),
        "{r:?}"
    );
}

#[test]
fn a_local_call_cut_short_escalates_and_the_history_reaches_the_remote_tier() {
    let answer = delta(
        json!({"tool_calls": [{"index": 0, "id": "r1", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\", \"unit\": \"celsius\"}"}}]}),
        Some("tool_calls"),
    );
    let server = FaultServer::start(vec![Behavior::Events(vec![answer])]);
    let rt = remote_rt(&server, Some(crate::smollm2()), true);
    let req = ChatRequest {
        messages: vec![
            ChatMessage::user("weather in Paris?"),
            ChatMessage::assistant_calls(
                "",
                vec![edgecascade::ToolCall {
                    id: "c1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city": "Paris", "unit": "celsius"}"#.into(),
                }],
            ),
            ChatMessage::tool_result("c1", "21 C"),
            ChatMessage::user("and in Lyon?"),
        ],
        tools: vec![weather()],
        tool_choice: ToolChoice::Required,
        // Too few tokens for a whole call: the forced local call is cut short.
        max_tokens: 6,
        policy: PolicyOverride::Auto,
        ..ChatRequest::default()
    };
    let r = Arc::new(rt)
        .chat(&req, &edgecascade::NullSink)
        .expect("answer");
    assert_eq!(
        (r.route, r.reason),
        (Route::Escalated, Reason::InvalidOutput),
        "{r:?}"
    );
    assert_eq!(args(&r, 0)["city"], "Lyon");
    let body: Value = serde_json::from_str(&server.bodies.lock().unwrap()[0]).unwrap();
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["tool_calls"][0]["id"], "c1");
    assert_eq!(msgs[1]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(msgs[2]["role"], "tool");
    assert_eq!(msgs[2]["tool_call_id"], "c1");
}

#[test]
fn an_invalid_remote_call_is_asked_for_once_more_and_both_calls_count() {
    let call = |name: &str, args: &str| {
        vec![
            delta(
                json!({"tool_calls": [{"index": 0, "id": "c", "type": "function",
                       "function": {"name": name, "arguments": args}}]}),
                Some("tool_calls"),
            ),
            json!({"id": "x", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 30, "completion_tokens": 10}})
            .to_string(),
        ]
    };
    // First a call without its required "unit", then a valid one.
    let server = FaultServer::start(vec![
        Behavior::Events(call("get_weather", r#"{"city": "Paris"}"#)),
        Behavior::Events(call(
            "get_weather",
            r#"{"city": "Paris", "unit": "celsius"}"#,
        )),
    ]);
    let rt = remote_rt(&server, None, true);
    let req = ChatRequest {
        tools: vec![weather()],
        ..ChatRequest::user("weather in Paris?")
    };
    let r = rt.chat(&req, &edgecascade::NullSink).expect("answer");
    assert_eq!(server.count(), 2);
    assert_eq!(r.format_error, None, "{r:?}");
    assert_eq!(args(&r, 0)["unit"], "celsius");
    assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (60, 20));

    // Invalid twice: one retry only, and the fault is reported.
    let server = FaultServer::start(vec![Behavior::Events(call("get_weather", "{}"))]);
    let rt = remote_rt(&server, None, true);
    let r = rt.chat(&req, &edgecascade::NullSink).expect("answer");
    assert_eq!(server.count(), 2);
    assert!(r.format_error.is_some_and(|e| e.contains("\"city\"")));
}
