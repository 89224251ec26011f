//! Routing overhead: the router's decision plus the ledger append (with fsync), and the budget
//! check (a locked scan of the ledger), p50/p99 over 1000 requests.
//! Run: cargo bench -p edgecascade --bench routing

use std::time::Instant;

use edgecascade::config::{BudgetConfig, CascadeConfig, RouterConfig};
use edgecascade::cost::{now_s, CostRecord, Ledger};
use edgecascade::engine::local::TokenSignal;
use edgecascade::policy::probe::{self, Head, HeadPair, Probe};
use edgecascade::policy::{calibrated, route, CalibratedModel, Cascade, Evidence, RouteInput};
use edgecascade::{ChatMessage, FinishReason, PolicyOverride};

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}

#[allow(clippy::too_many_lines)]
fn main() {
    let dir =
        std::env::temp_dir().join(format!("edgecascade-routing-bench-{}", std::process::id()));
    let ledger = Ledger::new(dir.join("ledger.jsonl"));
    let budget = BudgetConfig {
        daily_usd: Some(1e9),
        monthly_usd: Some(1e9),
        per_request_usd: None,
    };
    let rules = RouterConfig::default();
    let (mut decide_append, mut check) = (Vec::new(), Vec::new());
    for i in 0..1000 {
        let t = Instant::now();
        let d = route(&RouteInput {
            policy: PolicyOverride::Auto,
            private: false,
            remote_configured: true,
            local_available: true,
            remote_unavailable: None,
            budget_refusal: None,
            overflow: None,
            prompt_tokens: 40,
            last_user: "What is the capital of France?",
            rules: &rules,
            offline: false,
            background: false,
        });
        ledger
            .record(&CostRecord {
                id: format!("r{i}"),
                ts: now_s(),
                route: edgecascade::cost::RecordRoute::Local,
                reason: d.reason,
                local_tokens: [40, 30],
                remote_tokens: [0, 0],
                local_usd: 1e-5,
                remote_usd: 0.0,
                all_remote_usd: 6e-5,
                ttft_ms: 30.0,
                total_ms: 300.0,
                prompt: None,
                answer: None,
                error: None,
            })
            .unwrap();
        decide_append.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _ = ledger.check(&budget, 0.001).unwrap();
        check.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "route + ledger append (fsync): p50 {:.3} ms, p99 {:.3} ms",
        pct(decide_append.clone(), 0.5),
        pct(decide_append, 0.99)
    );
    println!(
        "budget check over a ledger of up to 1000 records: p50 {:.3} ms, p99 {:.3} ms",
        pct(check.clone(), 0.5),
        pct(check, 0.99)
    );
    let _ = std::fs::remove_dir_all(dir);

    // The calibrated cascade decision on a 16-token answer: features, then the model.
    let signals: Vec<TokenSignal> = (0..16)
        .map(|i| TokenSignal {
            logprob: -0.05 * i as f32,
            entropy: 0.3,
            margin: 0.5,
            top_logprob: -0.05 * i as f32,
        })
        .collect();
    let messages = [ChatMessage::user(
        "Which gas do plants take in?\n\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\n\nAnswer with the letter of the correct option only.",
    )];
    let e = Evidence {
        messages: &messages,
        hint: None,
        prompt_tokens: 60,
        signals: &signals,
        text: "B. carbon dioxide",
        finish: FinishReason::Stop,
        hidden: None,
        task: None,
    };
    let xs: Vec<[f64; calibrated::N]> = (0..64)
        .map(|i| {
            let mut x = calibrated::features(&e);
            x[0] -= f64::from(i) * 0.01;
            x
        })
        .collect();
    let ys: Vec<bool> = (0..64).map(|i| i % 3 != 0).collect();
    let cascade = Cascade::new(&CascadeConfig {
        signal: edgecascade::policy::Signal::Calibrated,
        threshold: 0.5,
        calibrated: Some(CalibratedModel::fit(&xs, &ys, 1.0)),
        ..CascadeConfig::default()
    })
    .expect("a valid model");
    let mut decide = Vec::new();
    for _ in 0..10_000 {
        let t = Instant::now();
        std::hint::black_box(cascade.after(std::hint::black_box(&e)));
        decide.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "calibrated cascade decision (16-token answer): p50 {:.4} ms, p99 {:.4} ms",
        pct(decide.clone(), 0.5),
        pct(decide, 0.99)
    );

    // The hidden-state probe at Qwen2.5-1.5B's width (1536): the pre-generation gate and the
    // post-generation decision, each two heads over the hidden state(s) plus scalar terms.
    let width = 1536;
    let tasks: Vec<String> = (0..7).map(|i| format!("task{i}")).collect();
    let (pre_names, post_names) = Probe::names(&tasks);
    let head = |scalars: usize, hidden: usize| Head {
        mean: vec![0.1; scalars],
        scale: vec![1.0; scalars],
        weights: vec![0.01; scalars],
        hidden_mean: vec![0.0; hidden],
        hidden_weights: vec![0.001; hidden],
        bias: 0.0,
    };
    let pair = |s, h| HeadPair {
        small: head(s, h),
        large: head(s, h),
    };
    let probe = Probe {
        format: probe::FORMAT.into(),
        model_sha256: "0".repeat(64),
        n_embd: width,
        pre: pair(pre_names.len(), width),
        post: pair(post_names.len(), 2 * width),
        pre_features: pre_names,
        post_features: post_names,
        tasks,
        pre_threshold: Some(-0.99),
        threshold: -0.99,
        fitted_on: String::new(),
        hidden_tensor: "result_norm".into(),
    };
    probe.validate(width, "result_norm").expect("a valid probe");
    let hp: Vec<f32> = (0..width).map(|i| (i as f32 * 0.37).sin()).collect();
    let ha: Vec<f32> = (0..width).map(|i| (i as f32 * 0.11).cos()).collect();
    let states = edgecascade::engine::local::HiddenStates {
        prompt: hp.clone(),
        answer: ha,
    };
    let cascade = Cascade::new(&CascadeConfig {
        signal: edgecascade::policy::Signal::Probe,
        threshold: -0.99,
        probe: Some("probe.json".into()),
        ..CascadeConfig::default()
    })
    .expect("a valid config")
    .with_probe(probe);
    let with_hidden = Evidence {
        hidden: Some(&states),
        task: Some("task3"),
        ..e
    };
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        let t = Instant::now();
        std::hint::black_box(cascade.pre_gate(
            &messages,
            None,
            Some("task3"),
            60,
            std::hint::black_box(&hp),
        ));
        pre.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        std::hint::black_box(cascade.after(std::hint::black_box(&with_hidden)));
        post.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "probe gate before generation (width {width}): p50 {:.4} ms, p99 {:.4} ms",
        pct(pre.clone(), 0.5),
        pct(pre, 0.99)
    );
    println!(
        "probe decision after generation (width {width}, 16-token answer): p50 {:.4} ms, p99 {:.4} ms",
        pct(post.clone(), 0.5),
        pct(post, 0.99)
    );
}
