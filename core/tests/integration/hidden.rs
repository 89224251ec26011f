//! The local model's final hidden states: read while the graph computes, equal with and
//! without prefix reuse, and the gate after the prompt decodes no token.

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;

use edgecascade::engine::local::{GenerateOptions, LocalEngine};
use edgecascade::{ChatMessage, ChatRequest};

use crate::{config_for, smollm2};

fn engine(parallel: u32) -> LocalEngine {
    let mut c = config_for(smollm2()).local;
    c.parallel = parallel;
    c.threads = Some(2);
    LocalEngine::load(&c, None).expect("load SmolLM2")
}

fn with_hidden(e: &LocalEngine, req: &ChatRequest) -> edgecascade::LocalOutput {
    e.generate_with(
        req,
        GenerateOptions {
            hidden: true,
            gate: None,
        },
        &AtomicBool::new(false),
        &mut |_| ControlFlow::Continue(()),
    )
    .expect("generate")
}

/// Largest element-wise difference, relative to the larger vector's largest magnitude.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().chain(b).fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn hidden_states_have_the_model_width_and_differ_by_prompt_and_position() {
    let e = engine(1);
    let a = with_hidden(
        &e,
        &ChatRequest {
            max_tokens: 8,
            ..ChatRequest::user("Name a colour of the rainbow.")
        },
    );
    let b = with_hidden(
        &e,
        &ChatRequest {
            max_tokens: 8,
            ..ChatRequest::user("What is 2 + 2?")
        },
    );
    let (ha, hb) = (a.hidden.expect("hidden"), b.hidden.expect("hidden"));
    for v in [&ha.prompt, &ha.answer, &hb.prompt] {
        assert_eq!(v.len(), 576, "SmolLM2's embedding width");
        assert!(v.iter().all(|x| x.is_finite()));
        assert!(
            v.iter().map(|x| x * x).sum::<f32>() > 1.0,
            "not a zero vector"
        );
    }
    assert!(a.completion_tokens >= 2);
    assert!(rel_diff(&ha.prompt, &hb.prompt) > 0.05, "prompts differ");
    assert!(
        rel_diff(&ha.prompt, &ha.answer) > 0.05,
        "the answer's end moved it"
    );
    // Without the option, nothing is copied.
    let plain = e
        .generate(
            &ChatRequest::user("What is 2 + 2?"),
            &AtomicBool::new(false),
            &mut |_| ControlFlow::Continue(()),
        )
        .expect("generate");
    assert!(plain.hidden.is_none());
}

#[test]
fn the_prompt_state_is_the_same_with_and_without_prefix_reuse() {
    let e = engine(1);
    let first = ChatRequest {
        max_tokens: 6,
        ..ChatRequest::user("Tell me about the moon.")
    };
    let out = with_hidden(&e, &first);
    let second = ChatRequest {
        messages: vec![
            ChatMessage::user("Tell me about the moon."),
            ChatMessage::assistant(out.text.clone()),
            ChatMessage::user("And the sun?"),
        ],
        max_tokens: 6,
        ..ChatRequest::default()
    };
    let warm = with_hidden(&e, &second);
    assert!(
        warm.prompt_tokens_evaluated < warm.prompt_tokens,
        "the second turn reused the first's cache ({} of {} evaluated)",
        warm.prompt_tokens_evaluated,
        warm.prompt_tokens
    );
    e.clear_cache();
    let cold = with_hidden(&e, &second);
    assert_eq!(cold.prompt_tokens_evaluated, cold.prompt_tokens);
    let (w, c) = (warm.hidden.expect("hidden"), cold.hidden.expect("hidden"));
    let d = rel_diff(&w.prompt, &c.prompt);
    assert!(d < 1e-3, "warm and cold prompt states differ by {d}");
    assert_eq!(warm.text, cold.text);
}

#[test]
fn a_closed_gate_decodes_no_token_and_keeps_the_prompt_cached() {
    let e = engine(1);
    let req = ChatRequest {
        max_tokens: 16,
        ..ChatRequest::user("Write a haiku about rain.")
    };
    let mut seen = Vec::new();
    let mut tokens = 0;
    let out = e
        .generate_with(
            &req,
            GenerateOptions {
                hidden: false,
                gate: Some(&mut |h: &[f32], _| {
                    seen.push(h.len());
                    true
                }),
            },
            &AtomicBool::new(false),
            &mut |_| {
                tokens += 1;
                ControlFlow::Continue(())
            },
        )
        .expect("generate");
    assert_eq!(seen, [576], "the gate saw the prompt state once");
    assert!(out.gated);
    assert_eq!((out.completion_tokens, tokens), (0, 0), "no token decoded");
    assert!(out.text.is_empty() && out.signals.is_empty());
    assert!(out.hidden.is_some());
    // An open gate generates as usual, and the prompt was cached by the gated run.
    let mut calls = 0;
    let open = e
        .generate_with(
            &req,
            GenerateOptions {
                hidden: false,
                gate: Some(&mut |_, _| {
                    calls += 1;
                    false
                }),
            },
            &AtomicBool::new(false),
            &mut |_| ControlFlow::Continue(()),
        )
        .expect("generate");
    assert_eq!(calls, 1);
    assert!(!open.gated && open.completion_tokens > 0);
    assert_eq!(
        open.prompt_tokens_evaluated, 1,
        "only the last prompt token again"
    );
}

#[test]
fn a_batching_engine_serves_hidden_states_from_a_single_sequence_context() {
    let e = engine(2);
    let out = with_hidden(
        &e,
        &ChatRequest {
            max_tokens: 4,
            ..ChatRequest::user("Say hello.")
        },
    );
    assert_eq!(out.hidden.expect("hidden").prompt.len(), 576);
}
