//! Structured output on the local tier, through real llama.cpp and SmolLM2: constrained
//! decoding makes every answer parse and validate.

use std::sync::atomic::AtomicBool;

use edgecascade::engine::local::LocalEngine;
use edgecascade::{ChatRequest, ResponseFormat, Sampling};
use serde_json::Value;

const PERSON: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0},
    "colour": {"enum": ["red", "green", "blue"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    "height_m": {"type": "number"},
    "alive": {"type": "boolean"},
    "address": {
      "type": "object",
      "properties": {"city": {"type": "string", "maxLength": 40}},
      "required": ["city"],
      "additionalProperties": false
    }
  },
  "required": ["name", "age", "colour", "alive", "address"],
  "additionalProperties": false
}"#;

fn engine() -> LocalEngine {
    let cfg = crate::config_for(crate::smollm2());
    LocalEngine::load(&cfg.local, None).expect("load SmolLM2")
}

fn person() -> ResponseFormat {
    ResponseFormat::JsonSchema {
        name: "person".into(),
        schema: PERSON.into(),
        strict: true,
    }
}

fn ask(
    e: &LocalEngine,
    prompt: &str,
    format: ResponseFormat,
    sampling: Sampling,
) -> edgecascade::LocalOutput {
    let req = ChatRequest {
        max_tokens: 160,
        sampling,
        response_format: format,
        ..ChatRequest::user(prompt)
    };
    e.generate(&req, &AtomicBool::new(false), &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .expect("generate")
}

fn check_person(v: &Value) {
    let o = v.as_object().expect("an object");
    assert!(o["name"].is_string(), "{v}");
    assert!(o["age"].as_i64().is_some_and(|a| a >= 0), "{v}");
    assert!(
        ["red", "green", "blue"].contains(&o["colour"].as_str().unwrap()),
        "{v}"
    );
    assert!(o["alive"].is_boolean(), "{v}");
    assert!(o["address"]["city"].is_string(), "{v}");
    assert_eq!(o["address"].as_object().unwrap().len(), 1, "{v}");
    let allowed = [
        "name", "age", "colour", "tags", "height_m", "alive", "address",
    ];
    assert!(o.keys().all(|k| allowed.contains(&k.as_str())), "{v}");
    if let Some(t) = o.get("tags") {
        let t = t.as_array().unwrap();
        assert!(
            t.len() <= 3
                && t.iter()
                    .all(|s| s.as_str().is_some_and(|s| s.chars().count() <= 20)),
            "{v}"
        );
    }
    assert!(o["name"].as_str().unwrap().chars().count() <= 40, "{v}");
    if let Some(h) = o.get("height_m") {
        assert!(h.is_number(), "{v}");
    }
}

#[test]
fn every_local_answer_parses_and_matches_the_schema() {
    let e = engine();
    let prompts = [
        "Describe a fictional person as JSON.",
        "Who is Marie Curie? Answer in JSON.",
        "Tell me a joke.",
    ];
    let mut n = 0;
    for (i, prompt) in prompts.iter().enumerate() {
        for sampling in [
            Sampling {
                temperature: 0.0,
                ..Sampling::default()
            },
            Sampling {
                temperature: 0.9,
                seed: Some(i as u32 + 7),
                ..Sampling::default()
            },
        ] {
            let t = sampling.temperature;
            let out = ask(&e, prompt, person(), sampling);
            eprintln!("{prompt} t={t}: {:?} {}", out.finish_reason, out.text);
            assert!(
                matches!(
                    out.finish_reason,
                    edgecascade::FinishReason::Stop | edgecascade::FinishReason::Length
                ),
                "{}",
                out.text
            );
            let v: Value =
                serde_json::from_str(&out.text).unwrap_or_else(|err| panic!("{err}: {}", out.text));
            check_person(&v);
            e.check_format(&person(), &out.text)
                .expect("the grammar accepts its own answer");
            n += 1;
        }
    }
    assert_eq!(n, 6);
    // Any JSON object: unbounded, so SmolLM2 rambles past max_tokens (seen: ever longer keys);
    // Qwen2.5-Coder-0.5B closes its object.
    let mut cfg = crate::config_for(crate::model_path(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen05",
    ));
    cfg.local.n_ctx = Some(512);
    let qwen = LocalEngine::load(&cfg.local, None).expect("load Qwen");
    let greedy = Sampling {
        temperature: 0.0,
        ..Sampling::default()
    };
    let out = ask(
        &qwen,
        "Give the capital of France as a JSON object.",
        ResponseFormat::JsonObject,
        greedy,
    );
    assert_eq!(
        out.finish_reason,
        edgecascade::FinishReason::Stop,
        "{}",
        out.text
    );
    assert!(
        serde_json::from_str::<Value>(&out.text)
            .unwrap()
            .is_object(),
        "{}",
        out.text
    );
    // Cut short by max_tokens, the JSON is incomplete, and the check says so.
    let req = ChatRequest {
        max_tokens: 5,
        response_format: person(),
        ..ChatRequest::user("Describe a person.")
    };
    let cut = e
        .generate(&req, &AtomicBool::new(false), &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(cut.finish_reason, edgecascade::FinishReason::Length);
    let why = e.check_format(&person(), &cut.text).unwrap_err();
    assert!(why.0.contains("not valid JSON"), "{why}: {}", cut.text);
}

/// A long string value near `max_tokens` is closed, with the keys still required after it, so
/// the answer stays valid; it reports `length`, since the budget cut it.
#[test]
fn answers_close_within_the_token_budget() {
    let e = engine();
    let story = ResponseFormat::JsonSchema {
        name: "story".into(),
        schema: r#"{"type": "object", "properties": {
            "story": {"type": "string"},
            "moral": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "rating": {"type": "integer"},
            "done": {"type": "boolean"}},
          "required": ["story", "moral", "tags", "rating", "done"]}"#
            .into(),
        strict: true,
    };
    let mut closed = 0;
    for (i, max_tokens) in [32u32, 48, 64].into_iter().enumerate() {
        for (format, prompt) in [
            (
                story.clone(),
                "Write a very long story about a dragon, in JSON.",
            ),
            (
                ResponseFormat::JsonObject,
                "List every country in the world with its capital as a JSON object.",
            ),
        ] {
            for temperature in [0.0, 0.8] {
                let req = ChatRequest {
                    max_tokens,
                    response_format: format.clone(),
                    sampling: Sampling {
                        temperature,
                        seed: Some(i as u32),
                        ..Sampling::default()
                    },
                    ..ChatRequest::user(prompt)
                };
                let out = e
                    .generate(&req, &AtomicBool::new(false), &mut |_| {
                        std::ops::ControlFlow::Continue(())
                    })
                    .unwrap();
                eprintln!(
                    "{max_tokens} tokens, t={temperature}: {:?}, {} tokens: {}",
                    out.finish_reason, out.completion_tokens, out.text
                );
                assert!(out.completion_tokens <= max_tokens, "{}", out.text);
                e.check_format(&format, &out.text).unwrap_or_else(|why| {
                    panic!("{max_tokens} tokens, t={temperature}: {why}: {}", out.text)
                });
                if out.finish_reason == edgecascade::FinishReason::Length {
                    closed += 1;
                }
            }
        }
    }
    // These prompts run long: most answers needed closing (each is valid either way).
    assert!(closed >= 6, "{closed} of 12 closed by the budget");
}

#[test]
fn answers_outside_the_schema_are_caught_and_unenforceable_schemas_refused() {
    let e = engine();
    for bad in [
        r#"{"name": "Ann", "age": 30, "colour": "red", "alive": true}"#,
        r#"{"name": "Ann", "age": "thirty", "colour": "red", "alive": true, "address": {"city": "Oslo"}}"#,
        r#"{"name": "Ann", "age": 30, "colour": "pink", "alive": true, "address": {"city": "Oslo"}}"#,
        r#"{"name": "Ann", "age": 30, "colour": "red", "alive": true, "address": {"city": "Oslo"}, "x": 1}"#,
        r#"{"name": "Ann", "age": 30, "colour": "red", "alive": true, "address": {"city": "Os"#,
        "not json at all",
    ] {
        assert!(e.check_format(&person(), bad).is_err(), "accepted: {bad}");
    }
    let good = r#"{"name": "Ann", "age": 30, "colour": "red", "alive": true, "address": {"city": "Oslo"}}"#;
    e.check_format(&person(), good).expect("valid");
    for (schema, why) in [
        (
            r#"{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "patternProperties": {"^x": {}}, "not": {"type": "null"}}"#,
            "not",
        ),
        ("[1, 2]", "JSON object"),
        ("{not json", "not JSON"),
    ] {
        let f = ResponseFormat::JsonSchema {
            name: "bad".into(),
            schema: schema.into(),
            strict: true,
        };
        let req = ChatRequest {
            response_format: f,
            ..ChatRequest::user("hi")
        };
        let err = e
            .generate(&req, &AtomicBool::new(false), &mut |_| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap_err()
            .to_string();
        eprintln!("{why}: {err}");
        assert!(err.contains("response_format"), "{err}");
    }
}

/// Found by the interop run against llama-server, which pretty-prints its JSON: an answer
/// checked after the fact may have any whitespace; only local decoding is held to the compact
/// form. A value of the wrong type is still caught.
#[test]
fn answers_checked_after_the_fact_may_have_any_whitespace() {
    let e = engine();
    let pretty = "{\n  \"name\": \"Ann\",\n  \"age\": 30,\n  \"colour\": \"red\",\n  \"alive\": true,\n  \"address\": {\"city\":\"Oslo\"}\n}";
    e.check_format(&person(), pretty)
        .expect("pretty-printed and valid");
    let wrong = "{\n  \"name\": \"Ann\",\n  \"age\": \"thirty\",\n  \"colour\": \"red\",\n  \"alive\": true,\n  \"address\": {\"city\": \"Oslo\"}\n}";
    assert!(e.check_format(&person(), wrong).is_err());
}
