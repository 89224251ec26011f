//! Routing overhead: the router's decision plus the ledger append (with fsync), and the budget
//! check (a locked scan of the ledger), p50/p99 over 1000 requests.
//! Run: cargo bench -p edgecascade --bench routing

use std::time::Instant;

use edgecascade::config::{BudgetConfig, CascadeConfig, RouterConfig};
use edgecascade::cost::{now_s, CostRecord, Ledger};
use edgecascade::engine::local::TokenSignal;
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
                route: "local".into(),
                reason: d.reason.as_str().into(),
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
}
