//! The library built without its `structured` feature (the smaller mobile build): requests that
//! need a grammar are refused with an error that says so, and the rest still works. Only
//! compiled in that build (`scripts/test.sh` runs it as the `lean` suite). A test binary of its
//! own, so that the lean build compiles this file and not the whole integration suite.
#![cfg(not(feature = "structured"))]
#![allow(missing_docs)]

mod support;

use edgecascade::error::ErrorKind;
use edgecascade::{ChatMessage, ChatRequest, ResponseFormat, Tool, ToolChoice};

fn area() -> Tool {
    Tool {
        name: "triangle_area".into(),
        description: Some("Area of a triangle".into()),
        parameters: r#"{"type":"object","properties":{"base":{"type":"integer"},"height":{"type":"integer"}},"required":["base","height"]}"#.into(),
    }
}

#[test]
fn grammar_requests_are_refused_plainly_and_the_rest_still_answers() {
    let rt = support::shared();
    let ask = |req: ChatRequest| rt.chat(&req, &edgecascade::NullSink);
    let base = ChatRequest {
        messages: vec![ChatMessage::user(
            "Area of a triangle with base 4 and height 3?",
        )],
        max_tokens: 24,
        ..ChatRequest::default()
    };
    let schema = ResponseFormat::JsonSchema {
        name: "area".into(),
        schema: r#"{"type":"object","properties":{"area":{"type":"integer"}},"required":["area"]}"#
            .into(),
        strict: true,
    };
    let refused = [
        ChatRequest {
            response_format: schema,
            ..base.clone()
        },
        ChatRequest {
            response_format: ResponseFormat::JsonObject,
            ..base.clone()
        },
        ChatRequest {
            tools: vec![area()],
            tool_choice: ToolChoice::Required,
            ..base.clone()
        },
        ChatRequest {
            tools: vec![area()],
            tool_choice: ToolChoice::Function {
                name: "triangle_area".into(),
            },
            ..base.clone()
        },
    ];
    for req in refused {
        let e = ask(req).expect_err("needs a grammar");
        assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{e}");
        assert!(e.to_string().contains("`structured` feature"), "{e}");
    }
    // Free text, and tools under `auto` (checked for names, not argument types), still answer;
    // and the runtime is unharmed by the refusals.
    let text = ask(base.clone()).expect("text");
    assert!(text.usage.completion_tokens > 0);
    ask(ChatRequest {
        tools: vec![area()],
        ..base
    })
    .expect("auto tools");
}
