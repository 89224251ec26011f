//! What reading the final hidden state costs a request: the same short-answer requests (cold
//! cache, greedy, the eval's prompt style) on one model, alternated in one run between a
//! context without the evaluation callback (`EDGECASCADE_HIDDEN_TAP=off` when it is created),
//! one with the callback installed but off, and one copying the hidden states.
//! Run: cargo bench -p edgecascade --bench hidden [-- MODEL_FILE [ROUNDS]]
//! (MODEL_FILE in $EDGECASCADE_MODELS or models/; default SmolLM2).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use edgecascade::config::LocalConfig;
use edgecascade::engine::local::{GenerateOptions, LocalEngine};
use edgecascade::ChatRequest;

const PROMPTS: [&str; 8] = [
    "Who wrote the play Hamlet?\n\nAnswer with a few words only.",
    "What is the capital city of Australia?\n\nAnswer with a few words only.",
    "Which planet is known as the Red Planet?\n\nAnswer with a few words only.",
    "What is 17 + 25?\n\nAnswer with the number only.",
    "Who painted the Mona Lisa?\n\nAnswer with a few words only.",
    "In which year did the Second World War end?\n\nAnswer with the number only.",
    "What is the chemical symbol for gold?\n\nAnswer with a few words only.",
    "The largest ocean on Earth is the\n\nAnswer with a few words only.",
];

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let file = args
        .first()
        .cloned()
        .unwrap_or_else(|| "smollm2-135m-instruct-q4_1.gguf".into());
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let dir = std::env::var_os("EDGECASCADE_MODELS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );
    let cfg = LocalConfig {
        model: Some(dir.join(&file)),
        threads: Some(2),
        n_ctx: Some(1024),
        ..LocalConfig::default()
    };
    std::env::set_var("EDGECASCADE_HIDDEN_TAP", "off");
    let plain = LocalEngine::load(&cfg, None).expect("load");
    std::env::remove_var("EDGECASCADE_HIDDEN_TAP");
    let tapped = LocalEngine::load(&cfg, None).expect("load");
    let cancel = AtomicBool::new(false);
    // [no callback, callback off, copying]: total ms and tokens.
    let mut ms = [0.0f64; 3];
    let mut prefill = [0.0f64; 3];
    let mut tokens = [0u32; 3];
    for round in 0..rounds {
        for (p, prompt) in PROMPTS.iter().enumerate() {
            let req = ChatRequest {
                max_tokens: 32,
                ..ChatRequest::user(*prompt)
            };
            for k in 0..3 {
                // Rotate the order so no mode always runs first.
                let mode = (k + round + p) % 3;
                let engine = if mode == 0 { &plain } else { &tapped };
                engine.clear_cache();
                // The other engine's threads may still be polling for work: let them sleep.
                std::thread::sleep(std::time::Duration::from_millis(100));
                let out = engine
                    .generate_with(
                        &req,
                        GenerateOptions {
                            hidden: mode == 2,
                            gate: None,
                        },
                        &cancel,
                        &mut |_| ControlFlow::Continue(()),
                    )
                    .expect("generate");
                assert_eq!(out.hidden.is_some(), mode == 2);
                ms[mode] += out.total_ms;
                prefill[mode] += out.prefill_ms;
                if std::env::var_os("HIDDEN_BENCH_TRACE").is_some() {
                    eprintln!("round {round} prompt {p} mode {mode}: prompt {} tokens {:.1} ms, total {:.1} ms", out.prompt_tokens, out.prefill_ms, out.total_ms);
                }
                tokens[mode] += out.completion_tokens;
            }
        }
    }
    let n = (rounds * PROMPTS.len()) as f64;
    println!(
        "{file}: {} requests per mode, {:.1} tokens per answer",
        n,
        f64::from(tokens[0]) / n
    );
    println!(
        "mean request: no callback {:.1} ms, callback off {:.1} ms ({:.3}x), hidden states copied {:.1} ms ({:.3}x)",
        ms[0] / n,
        ms[1] / n,
        ms[1] / ms[0],
        ms[2] / n,
        ms[2] / ms[0]
    );
    println!(
        "of which prompt: {:.1} / {:.1} / {:.1} ms",
        prefill[0] / n,
        prefill[1] / n,
        prefill[2] / n
    );
    assert_eq!(tokens[0], tokens[2], "the same answers");
}
