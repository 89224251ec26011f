//! Continuous batching: answers equal the single-context path's, requests cancel and fail
//! alone, and the batch serves more than one request per decode.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use edgecascade::engine::local::LocalEngine;
use edgecascade::{ChatRequest, FinishReason};

use crate::{config_for, smollm2};

/// Two greedy answers' first difference is allowed only where the reference's top two
/// tokens were this close in probability (a near-tie that rounding in a different batch
/// shape can flip).
const NEAR_TIE: f32 = 0.05;

fn engine(parallel: u32, batching: bool) -> LocalEngine {
    let mut c = config_for(smollm2()).local;
    c.parallel = parallel;
    c.batching = batching;
    c.threads = Some(2);
    LocalEngine::load(&c, None).expect("load SmolLM2")
}

/// Each token's text and the probability margin of its top two candidates.
fn run(e: &LocalEngine, req: &ChatRequest) -> Vec<(String, f32)> {
    let mut events = Vec::new();
    let out = e
        .generate(req, &AtomicBool::new(false), &mut |t| {
            events.push((t.text.to_owned(), t.signal.margin));
            ControlFlow::Continue(())
        })
        .expect("generate");
    assert_eq!(out.completion_tokens as usize, out.signals.len());
    events
}

fn prompts() -> Vec<ChatRequest> {
    [
        "Name three colours of the rainbow.",
        "Write a short line about the sea.",
        "What is the capital of France? Answer in one sentence.",
        "List two uses of a paperclip.",
    ]
    .iter()
    .map(|p| ChatRequest {
        max_tokens: 32,
        ..ChatRequest::user(*p)
    })
    .collect()
}

/// Where two token streams first differ, if they do.
fn first_difference(a: &[(String, f32)], b: &[(String, f32)]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i).map(|x| &x.0) != b.get(i).map(|x| &x.0))
}

#[test]
fn greedy_answers_in_a_batch_equal_the_single_context_answers_up_to_near_ties() {
    let reqs = prompts();
    let single = engine(1, false);
    let reference: Vec<_> = reqs.iter().map(|r| run(&single, r)).collect();
    drop(single);

    let batched = Arc::new(engine(4, true));
    let start = Arc::new(Barrier::new(reqs.len()));
    let answers: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|r| {
            let (e, start) = (Arc::clone(&batched), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                run(&e, &r)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let mut equal = 0;
    for (i, (want, got)) in reference.iter().zip(&answers).enumerate() {
        match first_difference(want, got) {
            None => equal += 1,
            Some(k) => {
                let margin = want.get(k).map_or(0.0, |x| x.1);
                eprintln!("prompt {i}: differs at token {k}, reference margin {margin:.4}");
                assert!(
                    margin < NEAR_TIE,
                    "prompt {i} differs at token {k} where the reference was not a near-tie \
                     (margin {margin}):\n{want:?}\n{got:?}"
                );
            }
        }
    }
    eprintln!("{equal} of {} answers identical", reqs.len());
    // They were decoded together: fewer llama.cpp calls than tokens sampled, and several
    // sequences sampled from one call.
    let stats = batched.batch_stats().expect("a batching engine");
    let sampled: usize = answers.iter().map(Vec::len).sum();
    assert!(stats.sampled as usize >= sampled, "{stats:?}");
    assert!(stats.steps < stats.sampled, "{stats:?}");
    assert!(stats.max_sampled >= 2, "{stats:?}");
    eprintln!("{stats:?}");
}

#[test]
fn a_request_stopped_in_a_batch_ends_alone_and_the_others_are_unchanged() {
    let e = Arc::new(engine(3, true));
    let reqs = prompts();
    let reference = run(&e, &reqs[2]);
    assert!(reference.len() > 4, "{reference:?}");

    let start = Arc::new(Barrier::new(3));
    // A stops itself after 4 tokens (`Break` from its callback).
    let a = {
        let (e, start, req) = (Arc::clone(&e), Arc::clone(&start), reqs[0].clone());
        std::thread::spawn(move || {
            start.wait();
            let mut streamed = String::new();
            let out = e
                .generate(&req, &AtomicBool::new(false), &mut |t| {
                    streamed.push_str(t.text);
                    if t.index == 4 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap();
            (out, streamed)
        })
    };
    // B is cancelled from outside once it has streamed 3 tokens.
    let b_cancel = Arc::new(AtomicBool::new(false));
    let b = {
        let (e, start, req, cancel) = (
            Arc::clone(&e),
            Arc::clone(&start),
            reqs[1].clone(),
            Arc::clone(&b_cancel),
        );
        std::thread::spawn(move || {
            start.wait();
            let mut seen = 0u32;
            let mut after = 0u32;
            let out = e
                .generate(&req, &cancel, &mut |_| {
                    if cancel.load(Ordering::SeqCst) {
                        after += 1;
                    }
                    seen += 1;
                    if seen == 3 {
                        cancel.store(true, Ordering::SeqCst);
                    }
                    ControlFlow::Continue(())
                })
                .unwrap();
            (out, seen, after)
        })
    };
    // C runs to the end beside them.
    let c = {
        let (e, start, req) = (Arc::clone(&e), Arc::clone(&start), reqs[2].clone());
        std::thread::spawn(move || {
            start.wait();
            run(&e, &req)
        })
    };
    let (a, a_streamed) = a.join().unwrap();
    assert_eq!(a.finish_reason, FinishReason::Cancelled);
    assert_eq!(a.completion_tokens, 4);
    assert_eq!(a.signals.len(), 4);
    assert_eq!(a.text, a_streamed, "the output is what was streamed");
    let (b, seen, after) = b.join().unwrap();
    assert_eq!(b.finish_reason, FinishReason::Cancelled);
    assert_eq!(after, 0, "no token reached the caller after its cancel");
    assert_eq!(b.completion_tokens, seen);
    assert_eq!(
        c.join().unwrap(),
        reference,
        "a neighbour's cancel changed nothing"
    );
    // The freed sequences serve again.
    assert_eq!(run(&e, &reqs[2]), reference);
}

#[test]
fn a_request_waiting_for_a_sequence_leaves_the_queue_when_cancelled() {
    let e = Arc::new(engine(2, true));
    let long = ChatRequest {
        max_tokens: 200,
        ..ChatRequest::user("Tell me a long story about a dragon and a knight.")
    };
    // Two long requests hold both sequences until they are told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (e, req, stop, started) = (
                Arc::clone(&e),
                long.clone(),
                Arc::clone(&stop),
                Arc::clone(&started),
            );
            std::thread::spawn(move || {
                let mut first = true;
                e.generate(&req, &stop, &mut |_| {
                    if first {
                        started.fetch_add(1, Ordering::SeqCst);
                        first = false;
                    }
                    ControlFlow::Continue(())
                })
                .unwrap()
            })
        })
        .collect();
    while started.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    // A third request queues; cancelled there, it returns without a token or a prompt token.
    let cancel = AtomicBool::new(true);
    let mut tokens = 0;
    let out = e
        .generate(&prompts()[0], &cancel, &mut |_| {
            tokens += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert_eq!(
        (tokens, out.completion_tokens, out.prompt_tokens_evaluated),
        (0, 0, 0)
    );
    stop.store(true, Ordering::SeqCst);
    for h in holders {
        assert_eq!(h.join().unwrap().finish_reason, FinishReason::Cancelled);
    }
}
