//! `eval --probe`: the hidden-state probe's held-out figures (each head's AUROC, the
//! pre-generation rule, the post-generation rule and the two combined), its cost at the
//! configured prices and at a 20:1 remote-to-local price ratio, and the fitted probe file.

use std::fmt::Write as _;
use std::path::Path;

use edgecascade::config::PriceConfig;
use edgecascade::cost;
use edgecascade::eval::metrics::{self, Outcome, ScoreReport};
use edgecascade::policy::probe::{self, Probe};
use edgecascade::policy::probe_fit::{self, Choice, Stage};
use serde_json::{json, Value};

use super::collect::{LocalResult, RemoteResult};
use super::report::{choose, opt, Pick};
use super::{Args, Prepared};
use crate::Failure;

/// Remote-to-local price per token: a 7B local against a 70B remote.
const RATIO: f64 = 20.0;

/// Pre-generation shares tried for the combined rule.
const PRE_SHARES: [f64; 10] = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5];

/// What the probe run produced.
pub struct ProbeRun {
    /// Held-out rankings to plot and tabulate with the other signals: (name, scores, report).
    pub ranked: Vec<(&'static str, Vec<f64>, ScoreReport)>,
    /// The `probe` object of the JSON report.
    pub json: Value,
    /// The human-readable summary.
    pub text: String,
    /// The probe fitted on every item, when asked for.
    pub fitted: Option<Probe>,
}

/// Everything the rules' costs are computed from.
struct Costs<'a> {
    local: &'a [LocalResult],
    remote: &'a [RemoteResult],
    prices: &'a PriceConfig,
}

impl Costs<'_> {
    /// USD per request and tokens (20:1 units) with `escalated` items sent remote and `gated`
    /// ones never decoded locally (their prompt was evaluated).
    fn at(&self, escalated: &[bool], gated: &[bool]) -> (f64, f64, f64, f64) {
        let (mut usd, mut all_remote, mut units, mut all_units, mut saved_s) =
            (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, (l, r)) in self.local.iter().zip(self.remote).enumerate() {
            let remote_usd = cost::remote_usd(self.prices, r.prompt_tokens, r.completion_tokens);
            let remote_tokens = f64::from(r.prompt_tokens + r.completion_tokens);
            all_remote += remote_usd;
            all_units += RATIO * remote_tokens;
            if gated[i] {
                usd += cost::local_usd(self.prices, l.prompt_tokens, l.prefill_ms / 1e3);
                units += f64::from(l.prompt_tokens);
                saved_s += (l.ms - l.prefill_ms).max(0.0) / 1e3;
            } else {
                let tokens = l.prompt_tokens + l.signals.len() as u32;
                usd += cost::local_usd(self.prices, tokens, l.ms / 1e3);
                units += f64::from(tokens);
            }
            if escalated[i] {
                usd += remote_usd;
                units += RATIO * remote_tokens;
            }
        }
        (
            usd,
            1.0 - usd / all_remote.max(1e-12),
            1.0 - units / all_units.max(1e-12),
            saved_s,
        )
    }
}

/// One rule's figures at its recommended operating point.
fn rule_json(
    rep: &ScoreReport,
    pick: &Pick,
    order: &[usize],
    gated_by: impl Fn(&[bool]) -> Vec<bool>,
    costs: &Costs<'_>,
    n: usize,
) -> Value {
    let mut escalated = vec![false; n];
    for &i in &order[..pick.k] {
        escalated[i] = true;
    }
    let gated = gated_by(&escalated);
    let (usd, saving, saving_20, saved_s) = costs.at(&escalated, &gated);
    json!({
        "auroc": opt(rep.auroc),
        "apgr": opt(rep.apgr),
        "cpt": {"50": opt(rep.cpt[0]), "80": opt(rep.cpt[1]), "95": opt(rep.cpt[2])},
        "recommended": {
            "accuracy": opt(Some(pick.accuracy)),
            "escalation_rate": opt(Some(pick.escalation)),
            "pre_generation_share": opt(Some(gated.iter().filter(|&&g| g).count() as f64 / n.max(1) as f64)),
            "target_reached": pick.reached,
            "usd_per_1k_requests": usd / n.max(1) as f64 * 1000.0,
            "savings_vs_all_remote": opt(Some(saving)),
            "savings_vs_all_remote_20_to_1": opt(Some(saving_20)),
            "local_seconds_saved": (saved_s * 1e3).round() / 1e3,
        },
    })
}

fn choice_json(c: &Choice) -> Value {
    json!({"components": c.components, "l2": c.l2, "inner_log_loss": opt(Some(c.log_loss))})
}

/// Fits and measures the probe. `features` are the calibrated features per item.
#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
pub fn run(
    args: &Args,
    items: &[Prepared],
    local: &[LocalResult],
    remote: &[RemoteResult],
    outcomes: &[Outcome],
    features: &[[f64; edgecascade::policy::calibrated::N]],
    groups: &[usize],
    prices: &PriceConfig,
    model_path: &Path,
    small_name: &str,
    large_name: &str,
) -> Result<ProbeRun, Failure> {
    let n = items.len();
    let hidden_tensor = edgecascade::engine::local::hidden_tensor_name();
    let mut prompt_h = Vec::with_capacity(n);
    let mut answer_h = Vec::with_capacity(n);
    for (p, l) in items.iter().zip(local) {
        let Some((a, b)) = l.hidden.as_ref().and_then(super::collect::Hidden::vectors) else {
            return Err(Failure::Runtime(format!(
                "item {}: no hidden states in the local result (--probe needs --local-answers generate)",
                p.item.id
            )));
        };
        prompt_h.push(a);
        answer_h.push(b);
    }
    let n_embd = prompt_h.first().map_or(0, Vec::len);
    // Task names: the item's own, else its dataset. Terms only when there are several.
    let task_of = |p: &Prepared| p.item.task.clone().unwrap_or_else(|| p.dataset.clone());
    let mut tasks: Vec<String> = Vec::new();
    if !args.no_task_terms {
        for p in items {
            let t = task_of(p);
            if !tasks.contains(&t) {
                tasks.push(t);
            }
        }
        if tasks.len() < 2 {
            tasks.clear();
        }
    }
    let one_hot = |p: &Prepared| -> Vec<f64> {
        let t = task_of(p);
        tasks.iter().map(|x| f64::from(*x == t)).collect()
    };
    let pre_x: Vec<Vec<f64>> = items
        .iter()
        .zip(local)
        .map(|(p, l)| {
            probe::pre_features(&p.request.messages, None, l.prompt_tokens)
                .into_iter()
                .chain(one_hot(p))
                .collect()
        })
        .collect();
    let post_x: Vec<Vec<f64>> = items
        .iter()
        .zip(features)
        .map(|(p, f)| f.iter().copied().chain(one_hot(p)).collect())
        .collect();
    let post_h: Vec<Vec<f32>> = prompt_h
        .iter()
        .zip(&answer_h)
        .map(|(a, b)| a.iter().chain(b).copied().collect())
        .collect();
    let small: Vec<bool> = outcomes.iter().map(|o| o.small).collect();
    let large: Vec<bool> = outcomes.iter().map(|o| o.large).collect();
    if let Some(path) = &args.probe_data {
        write_data(
            path,
            items,
            groups,
            &small,
            &large,
            [&pre_x, &post_x],
            [&prompt_h, &answer_h],
            &task_of,
        )?;
    }
    let pre_stage = Stage {
        x: &pre_x,
        h: &prompt_h,
    };
    let post_stage = Stage {
        x: &post_x,
        h: &post_h,
    };
    let t0 = std::time::Instant::now();
    let (pre_s, pre_l) =
        probe_fit::cross_validate_pair(pre_stage, &small, &large, groups, args.folds, args.seed);
    let (post_s, post_l) =
        probe_fit::cross_validate_pair(post_stage, &small, &large, groups, args.folds, args.seed);
    let fit_s = t0.elapsed().as_secs_f64();
    let gain = |s: &[f64], l: &[f64]| -> Vec<f64> { s.iter().zip(l).map(|(a, b)| a - b).collect() };
    let pre = gain(&pre_s, &pre_l);
    let post = gain(&post_s, &post_l);
    let (_, large_acc) = metrics::accuracies(outcomes);
    let pre_rep = metrics::report(outcomes, &pre);
    let post_rep = metrics::report(outcomes, &post);

    // Combined: the pre-generation rule sends its lowest-scored share remote before decoding;
    // the rest generate and are ranked by the post-generation score.
    let pre_order = metrics::ascending(&pre);
    let combined_at = |q: f64| -> (Vec<f64>, Vec<bool>) {
        let k = (q * n as f64).round() as usize;
        let mut gated = vec![false; n];
        for &i in &pre_order[..k.min(n)] {
            gated[i] = true;
        }
        let scores = (0..n)
            .map(|i| if gated[i] { -10.0 + pre[i] } else { post[i] })
            .collect();
        (scores, gated)
    };
    let mut shares = Vec::new();
    let mut best_q = 0.0;
    let post_apgr = post_rep.apgr.unwrap_or(0.0);
    for q in PRE_SHARES {
        let (scores, _) = combined_at(q);
        let rep = metrics::report(outcomes, &scores);
        // The largest share that costs at most 0.005 APGR against the post rule alone.
        if rep.apgr.unwrap_or(0.0) >= post_apgr - 0.005 {
            best_q = q;
        }
        shares.push(json!({"pre_share": q, "apgr": opt(rep.apgr), "cpt95": opt(rep.cpt[2])}));
    }
    let (comb, comb_gated) = combined_at(best_q);
    let comb_rep = metrics::report(outcomes, &comb);

    let costs = Costs {
        local,
        remote,
        prices,
    };
    let pick = |rep: &ScoreReport, s: &[f64]| choose(&rep.curve, s, large_acc, args);
    let (pre_pick, post_pick, comb_pick) = (
        pick(&pre_rep, &pre),
        pick(&post_rep, &post),
        pick(&comb_rep, &comb),
    );
    let pre_json = rule_json(
        &pre_rep,
        &pre_pick,
        &metrics::ascending(&pre),
        <[bool]>::to_vec,
        &costs,
        n,
    );
    let post_json = rule_json(
        &post_rep,
        &post_pick,
        &metrics::ascending(&post),
        |_| vec![false; n],
        &costs,
        n,
    );
    let comb_json = rule_json(
        &comb_rep,
        &comb_pick,
        &metrics::ascending(&comb),
        |_| comb_gated.clone(),
        &costs,
        n,
    );
    let heads = json!({
        "pre_small": opt(metrics::auroc(&small, &pre_s)),
        "pre_large": opt(metrics::auroc(&large, &pre_l)),
        "post_small": opt(metrics::auroc(&small, &post_s)),
        "post_large": opt(metrics::auroc(&large, &post_l)),
    });
    let bounds = metrics::bounds(outcomes, groups);
    // Where the gap to the oracle lies: the post-generation rule with one head replaced by the
    // truth (knowing exactly when the small, or the large, model is right).
    let truth = |v: &[bool]| -> Vec<f64> { v.iter().map(|&b| f64::from(u8::from(b))).collect() };
    let with_true_small = metrics::report(outcomes, &gain(&truth(&small), &post_l)).apgr;
    let with_true_large = metrics::report(outcomes, &gain(&post_s, &truth(&large))).apgr;
    let oracle_apgr = metrics::report(outcomes, &metrics::oracle_scores(outcomes)).apgr;
    let passes =
        |r: &ScoreReport| matches!((r.apgr, bounds.small_known), (Some(a), Some(b)) if a > b);

    // The learning curve: the same held-out scoring, each outer fold trained on a share of
    // its items.
    let curve: Vec<Value> = if args.probe_curve {
        let mut rows = Vec::new();
        for kept in 1..=4usize {
            let cv = |stage| {
                probe_fit::cross_validate_pair_on_share(
                    stage,
                    &small,
                    &large,
                    groups,
                    args.folds,
                    args.seed,
                    (kept, 4),
                )
            };
            let ((ps, pl), (qs, ql)) = if kept == 4 {
                (
                    (pre_s.clone(), pre_l.clone()),
                    (post_s.clone(), post_l.clone()),
                )
            } else {
                (cv(pre_stage), cv(post_stage))
            };
            let (pre_r, post_r) = (
                metrics::report(outcomes, &gain(&ps, &pl)),
                metrics::report(outcomes, &gain(&qs, &ql)),
            );
            let train =
                (n as f64 * (1.0 - 1.0 / args.folds.max(1) as f64) * kept as f64 / 4.0).round();
            rows.push(json!({
                "train_share": kept as f64 / 4.0,
                "train_items": train,
                "pre": {"apgr": opt(pre_r.apgr), "cpt95": opt(pre_r.cpt[2]),
                        "auroc_small": opt(metrics::auroc(&small, &ps)), "auroc_large": opt(metrics::auroc(&large, &pl))},
                "post": {"apgr": opt(post_r.apgr), "cpt95": opt(post_r.cpt[2]),
                         "auroc_small": opt(metrics::auroc(&small, &qs)), "auroc_large": opt(metrics::auroc(&large, &ql))},
            }));
        }
        rows
    } else {
        Vec::new()
    };

    // The probe on every item, with thresholds from the held-out scores.
    let all: Vec<usize> = (0..n).collect();
    let (fitted, chosen) = if args.write_probe.is_some() {
        let (pre_pair, pre_c) = probe_fit::fit_pair(
            pre_stage, &small, &large, groups, &all, args.folds, args.seed,
        );
        let (post_pair, post_c) = probe_fit::fit_pair(
            post_stage, &small, &large, groups, &all, args.folds, args.seed,
        );
        let (pre_names, post_names) = Probe::names(&tasks);
        let k_pre = (best_q * n as f64).round() as usize;
        let probe = Probe {
            format: probe::FORMAT.into(),
            model_sha256: edgecascade::models::pull::sha256_file(model_path)
                .map_err(|e| Failure::Runtime(format!("model {}: {e}", model_path.display())))?
                .ok_or_else(|| Failure::Runtime(format!("model {} is gone", model_path.display())))?
                .0,
            n_embd,
            hidden_tensor: hidden_tensor.to_owned(),
            pre_features: pre_names,
            post_features: post_names,
            tasks: tasks.clone(),
            pre: pre_pair,
            post: post_pair,
            pre_threshold: (k_pre > 0).then(|| metrics::threshold_for(&pre, k_pre)),
            threshold: post_pick.threshold,
            fitted_on: format!(
                "edgecascade eval --probe: {n} items, small {small_name}, large {large_name}"
            ),
        };
        probe
            .validate(n_embd, hidden_tensor)
            .map_err(|e| Failure::Runtime(format!("fitted probe: {e}")))?;
        (Some(probe), Some([pre_c, post_c]))
    } else {
        (None, None)
    };

    let out = json!({
        "hidden_width": n_embd,
        "hidden_tensor": hidden_tensor,
        "tasks": tasks,
        "fit_seconds": (fit_s * 10.0).round() / 10.0,
        "head_auroc": heads,
        "pre": pre_json,
        "post": post_json,
        "combined": comb_json,
        "combined_pre_share": best_q,
        "combined_shares": shares,
        "small_known_ceiling": opt(bounds.small_known),
        "apgr_with_true_small_head": opt(with_true_small),
        "apgr_with_true_large_head": opt(with_true_large),
        "oracle_apgr": opt(oracle_apgr),
        "passes_small_known": {"pre": passes(&pre_rep), "post": passes(&post_rep), "combined": passes(&comb_rep)},
        "learning_curve": curve,
        "chosen": chosen.map(|c| json!({
            "pre_small": choice_json(&c[0][0]), "pre_large": choice_json(&c[0][1]),
            "post_small": choice_json(&c[1][0]), "post_large": choice_json(&c[1][1]),
        })),
    });
    let mut text = String::new();
    let f = |v: &Value| v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.3}"));
    let _ = writeln!(
        text,
        "\nhidden-state probe (held out; {hidden_tensor}, width {n_embd}, {} task terms, fitted in {fit_s:.0} s): head AUROC pre small {} large {}, post small {} large {}",
        tasks.len(),
        f(&out["head_auroc"]["pre_small"]),
        f(&out["head_auroc"]["pre_large"]),
        f(&out["head_auroc"]["post_small"]),
        f(&out["head_auroc"]["post_large"]),
    );
    let _ = writeln!(
        text,
        "{:<22} {:>6} {:>7} {:>7} {:>7} {:>6} {:>6} {:>9} {:>8} {:>9}",
        "rule", "APGR", "CPT50", "CPT80", "CPT95", "esc", "pre", "USD/1k", "saving", "20:1"
    );
    for (name, r) in [
        ("probe before".to_owned(), &out["pre"]),
        ("probe after".to_owned(), &out["post"]),
        (format!("combined ({best_q:.2} pre)"), &out["combined"]),
    ] {
        let rec = &r["recommended"];
        let _ = writeln!(
            text,
            "{name:<22} {:>6} {:>7} {:>7} {:>7} {:>6} {:>6} {:>9.5} {:>8} {:>9}  (local s saved {})",
            f(&r["apgr"]),
            f(&r["cpt"]["50"]),
            f(&r["cpt"]["80"]),
            f(&r["cpt"]["95"]),
            f(&rec["escalation_rate"]),
            f(&rec["pre_generation_share"]),
            rec["usd_per_1k_requests"].as_f64().unwrap_or(0.0),
            f(&rec["savings_vs_all_remote"]),
            f(&rec["savings_vs_all_remote_20_to_1"]),
            rec["local_seconds_saved"],
        );
    }
    let _ = writeln!(
        text,
        "small_known ceiling {}: passed by pre {}, post {}, combined {}; the post rule with the small head replaced by the truth {}, with the large head replaced {}, oracle {}",
        f(&out["small_known_ceiling"]),
        passes(&pre_rep),
        passes(&post_rep),
        passes(&comb_rep),
        f(&out["apgr_with_true_small_head"]),
        f(&out["apgr_with_true_large_head"]),
        f(&out["oracle_apgr"]),
    );
    if !curve.is_empty() {
        let _ = writeln!(
            text,
            "learning curve (held out, each fold trained on a share of its items): share, items, pre APGR / CPT95 / AUROC small, large; post APGR / CPT95 / AUROC small, large"
        );
        for r in &curve {
            let _ = writeln!(
                text,
                "  {:>5} {:>6} pre {} / {} / {}, {}  post {} / {} / {}, {}",
                r["train_share"],
                r["train_items"],
                f(&r["pre"]["apgr"]),
                f(&r["pre"]["cpt95"]),
                f(&r["pre"]["auroc_small"]),
                f(&r["pre"]["auroc_large"]),
                f(&r["post"]["apgr"]),
                f(&r["post"]["cpt95"]),
                f(&r["post"]["auroc_small"]),
                f(&r["post"]["auroc_large"]),
            );
        }
    }
    Ok(ProbeRun {
        ranked: vec![
            ("probe_pre", pre, pre_rep),
            ("probe", post, post_rep),
            ("probe_combined", comb, comb_rep),
        ],
        json: out,
        text,
        fitted,
    })
}

/// `--probe-data`: one JSON line per item, written whole or not at all (a temporary file
/// renamed into place).
#[allow(clippy::too_many_arguments)]
fn write_data(
    path: &Path,
    items: &[Prepared],
    groups: &[usize],
    small: &[bool],
    large: &[bool],
    [pre_x, post_x]: [&[Vec<f64>]; 2],
    [prompt_h, answer_h]: [&[Vec<f32>]; 2],
    task_of: &dyn Fn(&Prepared) -> String,
) -> Result<(), Failure> {
    use std::io::Write as _;
    let fail = |e: std::io::Error| Failure::Runtime(format!("probe data {}: {e}", path.display()));
    let tmp = path.with_extension("partial");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(fail)?);
    for (i, p) in items.iter().enumerate() {
        let line = json!({
            "id": p.item.id, "task": task_of(p), "group": groups[i],
            "small": small[i], "large": large[i],
            "pre_x": pre_x[i], "post_x": post_x[i],
            "prompt_hidden": prompt_h[i], "answer_hidden": answer_h[i],
        });
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n").map_err(fail)?;
    }
    w.into_inner()
        .map_err(|e| fail(e.into_error()))?
        .sync_all()
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
