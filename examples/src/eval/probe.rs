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
use super::report::{choose, num, opt, Basis, Collected, Pick};
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

/// Fits and measures the probe on the collected answers; `basis` holds the report's per-item
/// outcomes, calibrated features and fold strata.
pub fn run(
    args: &Args,
    data: &Collected<'_>,
    basis: &Basis,
    prices: &PriceConfig,
) -> Result<ProbeRun, Failure> {
    let m = measure(args, data, basis, prices)?;
    let out = m.json();
    let text = m.text(&out);
    Ok(ProbeRun {
        ranked: vec![
            ("probe_pre", m.rules.pre, m.rules.pre_rep),
            ("probe", m.rules.post, m.rules.post_rep),
            ("probe_combined", m.rules.comb.scores, m.rules.comb.report),
        ],
        json: out,
        text,
        fitted: m.fitted,
    })
}

/// What the probe reads: the hidden tensor, its width and the task terms.
struct Shape {
    /// The tensor the hidden states come from.
    hidden_tensor: &'static str,
    /// The hidden states' width.
    n_embd: usize,
    /// The task terms' names (none unless there are several tasks).
    tasks: Vec<String>,
}

/// What the probe run measured, for its JSON and text.
struct Measured {
    /// The hidden tensor, its width and the task terms.
    shape: Shape,
    /// Seconds the held-out fits took.
    fit_s: f64,
    /// The rules' held-out scores and figures.
    rules: Rules,
    /// The pre, post and combined rules at their recommended operating points.
    rule_json: [Value; 3],
    /// Each head's held-out AUROC.
    heads: Value,
    /// Where the gap to the oracle lies.
    gap: Gap,
    /// The learning curve (empty unless asked for).
    curve: Vec<Value>,
    /// The hyperparameters chosen for each head of the fitted probe.
    chosen: Option<[[Choice; 2]; 2]>,
    /// The probe fitted on every item, when asked for.
    fitted: Option<Probe>,
}

/// Reads the hidden states, fits the heads held out and measures the rules built on them;
/// writes `--probe-data` and fits the probe on every item when asked for.
fn measure(
    args: &Args,
    data: &Collected<'_>,
    basis: &Basis,
    prices: &PriceConfig,
) -> Result<Measured, Failure> {
    let n = data.items.len();
    let (shape, design) = inputs(args, data, basis)?;
    let fit = Fitting {
        args,
        pre: design.pre(),
        post: design.post(),
        small: &design.small,
        large: &design.large,
        groups: &basis.groups,
    };
    let t0 = std::time::Instant::now();
    let held = fit.cross_validate();
    let fit_s = t0.elapsed().as_secs_f64();
    let rules = Rules::new(&held, &basis.outcomes);
    let costs = Costs {
        local: data.local,
        remote: data.remote,
        prices,
    };
    let (post_pick, rule_json) = rules.recommend(args, &costs, n);
    let heads = fit.head_auroc(&held);
    let gap = Gap::new(&basis.outcomes, &fit, &held, &rules);
    let curve = if args.probe_curve {
        fit.learning_curve(&held, &basis.outcomes)
    } else {
        Vec::new()
    };
    // The probe on every item, with thresholds from the held-out scores.
    let (fitted, chosen) = if args.write_probe.is_some() {
        let (probe, chosen) = fit.fit_probe(data, &shape, &rules, post_pick.threshold)?;
        (Some(probe), Some(chosen))
    } else {
        (None, None)
    };
    Ok(Measured {
        shape,
        fit_s,
        rules,
        rule_json,
        heads,
        gap,
        curve,
        chosen,
        fitted,
    })
}

/// The probe's shape and what it is fitted on, written to `--probe-data` when asked for.
fn inputs(args: &Args, data: &Collected<'_>, basis: &Basis) -> Result<(Shape, Design), Failure> {
    let hidden_tensor = edgecascade::engine::local::hidden_tensor_name();
    let (prompt_h, answer_h) = hidden_states(data)?;
    let n_embd = prompt_h.first().map_or(0, Vec::len);
    let shape = Shape {
        hidden_tensor,
        n_embd,
        tasks: task_names(data.items, args.no_task_terms),
    };
    let design = Design::new(data, basis, &shape.tasks, prompt_h, answer_h);
    if let Some(path) = &args.probe_data {
        write_data(
            path,
            data.items,
            &basis.groups,
            &design.small,
            &design.large,
            [&design.pre_x, &design.post_x],
            [&design.prompt_h, &design.answer_h],
            &task_of,
        )?;
    }
    Ok((shape, design))
}

/// Each item's hidden states at the prompt's end and at the answer's end.
fn hidden_states(data: &Collected<'_>) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), Failure> {
    let n = data.items.len();
    let mut prompt_h = Vec::with_capacity(n);
    let mut answer_h = Vec::with_capacity(n);
    for (p, l) in data.items.iter().zip(data.local) {
        let Some((a, b)) = l.hidden.as_ref().and_then(super::collect::Hidden::vectors) else {
            return Err(Failure::Runtime(format!(
                "item {}: no hidden states in the local result (--probe needs --local-answers generate)",
                p.item.id
            )));
        };
        prompt_h.push(a);
        answer_h.push(b);
    }
    Ok((prompt_h, answer_h))
}

/// An item's task: its own, else its dataset.
fn task_of(p: &Prepared) -> String {
    p.item.task.clone().unwrap_or_else(|| p.dataset.clone())
}

/// The task terms: every item's task, in order of first appearance; none when there is only
/// one or `no_task_terms`.
fn task_names(items: &[Prepared], no_task_terms: bool) -> Vec<String> {
    // Task names: the item's own, else its dataset. Terms only when there are several.
    let mut tasks: Vec<String> = Vec::new();
    if !no_task_terms {
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
    tasks
}

/// What the probe is fitted on, per item: the scalar features (with the task terms) and the
/// hidden states, before and after generation, and the heads' labels.
struct Design {
    /// Scalar features before generation.
    pre_x: Vec<Vec<f64>>,
    /// Scalar features after generation (the calibrated ones).
    post_x: Vec<Vec<f64>>,
    /// The hidden state at the prompt's end.
    prompt_h: Vec<Vec<f32>>,
    /// The hidden state at the answer's end.
    answer_h: Vec<Vec<f32>>,
    /// Both hidden states end to end.
    post_h: Vec<Vec<f32>>,
    /// Whether the small model is right.
    small: Vec<bool>,
    /// Whether the large model is right.
    large: Vec<bool>,
}

impl Design {
    /// The features and labels of every item (`basis` has the calibrated features).
    fn new(
        data: &Collected<'_>,
        basis: &Basis,
        tasks: &[String],
        prompt_h: Vec<Vec<f32>>,
        answer_h: Vec<Vec<f32>>,
    ) -> Self {
        let one_hot = |p: &Prepared| -> Vec<f64> {
            let t = task_of(p);
            tasks.iter().map(|x| f64::from(*x == t)).collect()
        };
        let pre_x: Vec<Vec<f64>> = data
            .items
            .iter()
            .zip(data.local)
            .map(|(p, l)| {
                probe::pre_features(&p.request.messages, None, l.prompt_tokens)
                    .into_iter()
                    .chain(one_hot(p))
                    .collect()
            })
            .collect();
        let post_x: Vec<Vec<f64>> = data
            .items
            .iter()
            .zip(&basis.features)
            .map(|(p, f)| f.iter().copied().chain(one_hot(p)).collect())
            .collect();
        let post_h: Vec<Vec<f32>> = prompt_h
            .iter()
            .zip(&answer_h)
            .map(|(a, b)| a.iter().chain(b).copied().collect())
            .collect();
        let small: Vec<bool> = basis.outcomes.iter().map(|o| o.small).collect();
        let large: Vec<bool> = basis.outcomes.iter().map(|o| o.large).collect();
        Self {
            pre_x,
            post_x,
            prompt_h,
            answer_h,
            post_h,
            small,
            large,
        }
    }

    /// The pre-generation stage.
    fn pre(&self) -> Stage<'_> {
        Stage {
            x: &self.pre_x,
            h: &self.prompt_h,
        }
    }

    /// The post-generation stage.
    fn post(&self) -> Stage<'_> {
        Stage {
            x: &self.post_x,
            h: &self.post_h,
        }
    }
}

/// What the probe's heads are fitted on: both stages, both tiers' labels and the fold strata
/// (with `args`' folds and seed).
struct Fitting<'a> {
    args: &'a Args,
    pre: Stage<'a>,
    post: Stage<'a>,
    small: &'a [bool],
    large: &'a [bool],
    groups: &'a [usize],
}

/// Held-out head scores: whether the small and the large model are right, before and after
/// generation.
struct Held {
    pre_s: Vec<f64>,
    pre_l: Vec<f64>,
    post_s: Vec<f64>,
    post_l: Vec<f64>,
}

impl Fitting<'_> {
    /// Both stages' held-out head scores.
    fn cross_validate(&self) -> Held {
        let (args, small, large, groups) = (self.args, self.small, self.large, self.groups);
        let (pre_s, pre_l) =
            probe_fit::cross_validate_pair(self.pre, small, large, groups, args.folds, args.seed);
        let (post_s, post_l) =
            probe_fit::cross_validate_pair(self.post, small, large, groups, args.folds, args.seed);
        Held {
            pre_s,
            pre_l,
            post_s,
            post_l,
        }
    }

    /// Each head's held-out AUROC.
    fn head_auroc(&self, h: &Held) -> Value {
        let (small, large) = (self.small, self.large);
        json!({
            "pre_small": opt(metrics::auroc(small, &h.pre_s)),
            "pre_large": opt(metrics::auroc(large, &h.pre_l)),
            "post_small": opt(metrics::auroc(small, &h.post_s)),
            "post_large": opt(metrics::auroc(large, &h.post_l)),
        })
    }

    /// `--probe-curve`: the held-out figures with each outer fold trained on a quarter, a half,
    /// three quarters and all of its items (`held`, already fitted).
    fn learning_curve(&self, held: &Held, outcomes: &[Outcome]) -> Vec<Value> {
        let (args, small, large, groups) = (self.args, self.small, self.large, self.groups);
        let n = groups.len();
        // The learning curve: the same held-out scoring, each outer fold trained on a share of
        // its items.
        let mut rows = Vec::new();
        for kept in 1..=4usize {
            let cv = |stage| {
                probe_fit::cross_validate_pair_on_share(
                    stage,
                    small,
                    large,
                    groups,
                    args.folds,
                    args.seed,
                    (kept, 4),
                )
            };
            let ((ps, pl), (qs, ql)) = if kept == 4 {
                (
                    (held.pre_s.clone(), held.pre_l.clone()),
                    (held.post_s.clone(), held.post_l.clone()),
                )
            } else {
                (cv(self.pre), cv(self.post))
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
                        "auroc_small": opt(metrics::auroc(small, &ps)), "auroc_large": opt(metrics::auroc(large, &pl))},
                "post": {"apgr": opt(post_r.apgr), "cpt95": opt(post_r.cpt[2]),
                         "auroc_small": opt(metrics::auroc(small, &qs)), "auroc_large": opt(metrics::auroc(large, &ql))},
            }));
        }
        rows
    }

    /// `--write-probe`: the probe fitted on every item, its post-generation `threshold` and
    /// pre-generation one from the held-out `rules`, checked; and the hyperparameters chosen.
    fn fit_probe(
        &self,
        data: &Collected<'_>,
        shape: &Shape,
        rules: &Rules,
        threshold: f64,
    ) -> Result<(Probe, [[Choice; 2]; 2]), Failure> {
        let (args, small, large, groups) = (self.args, self.small, self.large, self.groups);
        let (n, model_path) = (data.items.len(), data.model_path);
        let (small_name, large_name) = (data.small_name, data.large_name);
        let (n_embd, hidden_tensor) = (shape.n_embd, shape.hidden_tensor);
        let all: Vec<usize> = (0..n).collect();
        let (pre_pair, pre_c) =
            probe_fit::fit_pair(self.pre, small, large, groups, &all, args.folds, args.seed);
        let (post_pair, post_c) =
            probe_fit::fit_pair(self.post, small, large, groups, &all, args.folds, args.seed);
        let (pre_names, post_names) = Probe::names(&shape.tasks);
        let k_pre = (rules.comb.best_q * n as f64).round() as usize;
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
            tasks: shape.tasks.clone(),
            pre: pre_pair,
            post: post_pair,
            pre_threshold: (k_pre > 0).then(|| metrics::threshold_for(&rules.pre, k_pre)),
            threshold,
            fitted_on: format!(
                "edgecascade eval --probe: {n} items, small {small_name}, large {large_name}"
            ),
        };
        probe
            .validate(n_embd, hidden_tensor)
            .map_err(|e| Failure::Runtime(format!("fitted probe: {e}")))?;
        Ok((probe, [pre_c, post_c]))
    }
}

/// Small-minus-large head scores: higher = the small model is surer to do as well.
fn gain(s: &[f64], l: &[f64]) -> Vec<f64> {
    s.iter().zip(l).map(|(a, b)| a - b).collect()
}

/// The three rules' held-out scores and figures.
struct Rules {
    /// The pre-generation rule's scores.
    pre: Vec<f64>,
    /// The post-generation rule's scores.
    post: Vec<f64>,
    /// The pre-generation rule's figures.
    pre_rep: ScoreReport,
    /// The post-generation rule's figures.
    post_rep: ScoreReport,
    /// The large model's accuracy (the target is a share of it).
    large_acc: f64,
    /// The two combined.
    comb: Combined,
}

impl Rules {
    /// The rules of the held-out heads `held`.
    fn new(held: &Held, outcomes: &[Outcome]) -> Self {
        let pre = gain(&held.pre_s, &held.pre_l);
        let post = gain(&held.post_s, &held.post_l);
        let (_, large_acc) = metrics::accuracies(outcomes);
        let pre_rep = metrics::report(outcomes, &pre);
        let post_rep = metrics::report(outcomes, &post);
        let comb = Combined::new(outcomes, &pre, &post, &post_rep);
        Self {
            pre,
            post,
            pre_rep,
            post_rep,
            large_acc,
            comb,
        }
    }

    /// Each rule's operating point at the target and its figures there (`n` items): the
    /// post-generation rule's pick, and the pre, post and combined rules' JSON.
    fn recommend(&self, args: &Args, costs: &Costs<'_>, n: usize) -> (Pick, [Value; 3]) {
        let (pre, post, comb) = (&self.pre, &self.post, &self.comb);
        let pick = |rep: &ScoreReport, s: &[f64]| choose(&rep.curve, s, self.large_acc, args);
        let (pre_pick, post_pick, comb_pick) = (
            pick(&self.pre_rep, pre),
            pick(&self.post_rep, post),
            pick(&comb.report, &comb.scores),
        );
        let pre_json = rule_json(
            &self.pre_rep,
            &pre_pick,
            &metrics::ascending(pre),
            <[bool]>::to_vec,
            costs,
            n,
        );
        let post_json = rule_json(
            &self.post_rep,
            &post_pick,
            &metrics::ascending(post),
            |_| vec![false; n],
            costs,
            n,
        );
        let comb_json = rule_json(
            &comb.report,
            &comb_pick,
            &metrics::ascending(&comb.scores),
            |_| comb.gated.clone(),
            costs,
            n,
        );
        (post_pick, [pre_json, post_json, comb_json])
    }
}

/// The combined rule at the largest pre-generation share that costs it little.
struct Combined {
    /// Its scores.
    scores: Vec<f64>,
    /// The items sent remote before decoding.
    gated: Vec<bool>,
    /// Its figures.
    report: ScoreReport,
    /// The pre-generation share chosen.
    best_q: f64,
    /// Every share tried, with its figures.
    shares: Vec<Value>,
}

impl Combined {
    /// Tries each of [`PRE_SHARES`] on the `pre` and `post` rules' scores.
    fn new(outcomes: &[Outcome], pre: &[f64], post: &[f64], post_rep: &ScoreReport) -> Self {
        // Combined: the pre-generation rule sends its lowest-scored share remote before decoding;
        // the rest generate and are ranked by the post-generation score.
        let pre_order = metrics::ascending(pre);
        let mut shares = Vec::new();
        let mut best_q = 0.0;
        let post_apgr = post_rep.apgr.unwrap_or(0.0);
        for q in PRE_SHARES {
            let (scores, _) = combined_at(&pre_order, pre, post, q);
            let rep = metrics::report(outcomes, &scores);
            // The largest share that costs at most 0.005 APGR against the post rule alone.
            if rep.apgr.unwrap_or(0.0) >= post_apgr - 0.005 {
                best_q = q;
            }
            shares.push(json!({"pre_share": q, "apgr": opt(rep.apgr), "cpt95": opt(rep.cpt[2])}));
        }
        let (scores, gated) = combined_at(&pre_order, pre, post, best_q);
        let report = metrics::report(outcomes, &scores);
        Self {
            scores,
            gated,
            report,
            best_q,
            shares,
        }
    }
}

/// The combined rule's scores and gated items when the pre-generation rule sends the share
/// `q` remote (the first of `pre_order`).
fn combined_at(pre_order: &[usize], pre: &[f64], post: &[f64], q: f64) -> (Vec<f64>, Vec<bool>) {
    let n = pre.len();
    let k = (q * n as f64).round() as usize;
    let mut gated = vec![false; n];
    for &i in &pre_order[..k.min(n)] {
        gated[i] = true;
    }
    let scores = (0..n)
        .map(|i| if gated[i] { -10.0 + pre[i] } else { post[i] })
        .collect();
    (scores, gated)
}

/// Where the gap to the oracle lies, and which rules pass the small_known ceiling.
struct Gap {
    /// The APGR ceiling of knowing exactly when the small model is right.
    small_known: Option<f64>,
    /// The post rule's APGR with the small head replaced by the truth.
    with_true_small: Option<f64>,
    /// The post rule's APGR with the large head replaced by the truth.
    with_true_large: Option<f64>,
    /// The oracle's APGR.
    oracle_apgr: Option<f64>,
    /// Whether the pre, post and combined rules pass `small_known`.
    passes: [bool; 3],
}

impl Gap {
    /// The gap of the held-out heads `held` and the `rules` on them.
    fn new(outcomes: &[Outcome], fit: &Fitting<'_>, held: &Held, rules: &Rules) -> Self {
        let bounds = metrics::bounds(outcomes, fit.groups);
        // Where the gap to the oracle lies: the post-generation rule with one head replaced by the
        // truth (knowing exactly when the small, or the large, model is right).
        let truth =
            |v: &[bool]| -> Vec<f64> { v.iter().map(|&b| f64::from(u8::from(b))).collect() };
        let with_true_small =
            metrics::report(outcomes, &gain(&truth(fit.small), &held.post_l)).apgr;
        let with_true_large =
            metrics::report(outcomes, &gain(&held.post_s, &truth(fit.large))).apgr;
        let oracle_apgr = metrics::report(outcomes, &metrics::oracle_scores(outcomes)).apgr;
        let passes =
            |r: &ScoreReport| matches!((r.apgr, bounds.small_known), (Some(a), Some(b)) if a > b);
        Self {
            small_known: bounds.small_known,
            with_true_small,
            with_true_large,
            oracle_apgr,
            passes: [
                passes(&rules.pre_rep),
                passes(&rules.post_rep),
                passes(&rules.comb.report),
            ],
        }
    }
}

impl Measured {
    /// The `probe` object of the JSON report.
    fn json(&self) -> Value {
        let (shape, gap, [pre_json, post_json, comb_json]) =
            (&self.shape, &self.gap, &self.rule_json);
        let [pass_pre, pass_post, pass_comb] = gap.passes;
        json!({
            "hidden_width": shape.n_embd,
            "hidden_tensor": shape.hidden_tensor,
            "tasks": shape.tasks,
            "fit_seconds": (self.fit_s * 10.0).round() / 10.0,
            "head_auroc": self.heads,
            "pre": pre_json,
            "post": post_json,
            "combined": comb_json,
            "combined_pre_share": self.rules.comb.best_q,
            "combined_shares": self.rules.comb.shares,
            "small_known_ceiling": opt(gap.small_known),
            "apgr_with_true_small_head": opt(gap.with_true_small),
            "apgr_with_true_large_head": opt(gap.with_true_large),
            "oracle_apgr": opt(gap.oracle_apgr),
            "passes_small_known": {"pre": pass_pre, "post": pass_post, "combined": pass_comb},
            "learning_curve": self.curve,
            "chosen": self.chosen.as_ref().map(|c| json!({
                "pre_small": choice_json(&c[0][0]), "pre_large": choice_json(&c[0][1]),
                "post_small": choice_json(&c[1][0]), "post_large": choice_json(&c[1][1]),
            })),
        })
    }

    /// The human-readable summary of the JSON `out`.
    fn text(&self, out: &Value) -> String {
        let mut text = String::new();
        self.heads_line(&mut text, out);
        self.rule_rows(&mut text, out);
        self.gap_line(&mut text, out);
        curve_rows(&mut text, &self.curve);
        text
    }

    /// The probe's shape, fit time and head AUROCs.
    fn heads_line(&self, text: &mut String, out: &Value) {
        let (hidden_tensor, n_embd, fit_s) =
            (self.shape.hidden_tensor, self.shape.n_embd, self.fit_s);
        let _ = writeln!(
            text,
            "\nhidden-state probe (held out; {hidden_tensor}, width {n_embd}, {} task terms, fitted in {fit_s:.0} s): head AUROC pre small {} large {}, post small {} large {}",
            self.shape.tasks.len(),
            num(&out["head_auroc"]["pre_small"]),
            num(&out["head_auroc"]["pre_large"]),
            num(&out["head_auroc"]["post_small"]),
            num(&out["head_auroc"]["post_large"]),
        );
    }

    /// Each rule's figures at its recommended operating point.
    fn rule_rows(&self, text: &mut String, out: &Value) {
        let best_q = self.rules.comb.best_q;
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
                num(&r["apgr"]),
                num(&r["cpt"]["50"]),
                num(&r["cpt"]["80"]),
                num(&r["cpt"]["95"]),
                num(&rec["escalation_rate"]),
                num(&rec["pre_generation_share"]),
                rec["usd_per_1k_requests"].as_f64().unwrap_or(0.0),
                num(&rec["savings_vs_all_remote"]),
                num(&rec["savings_vs_all_remote_20_to_1"]),
                rec["local_seconds_saved"],
            );
        }
    }

    /// The small_known ceiling, which rules pass it, and the truth-head and oracle APGRs.
    fn gap_line(&self, text: &mut String, out: &Value) {
        let [pass_pre, pass_post, pass_comb] = self.gap.passes;
        let _ = writeln!(
            text,
            "small_known ceiling {}: passed by pre {}, post {}, combined {}; the post rule with the small head replaced by the truth {}, with the large head replaced {}, oracle {}",
            num(&out["small_known_ceiling"]),
            pass_pre,
            pass_post,
            pass_comb,
            num(&out["apgr_with_true_small_head"]),
            num(&out["apgr_with_true_large_head"]),
            num(&out["oracle_apgr"]),
        );
    }
}

/// The learning curve's rows, when it was measured.
fn curve_rows(text: &mut String, curve: &[Value]) {
    if !curve.is_empty() {
        let _ = writeln!(
            text,
            "learning curve (held out, each fold trained on a share of its items): share, items, pre APGR / CPT95 / AUROC small, large; post APGR / CPT95 / AUROC small, large"
        );
        for r in curve {
            let _ = writeln!(
                text,
                "  {:>5} {:>6} pre {} / {} / {}, {}  post {} / {} / {}, {}",
                r["train_share"],
                r["train_items"],
                num(&r["pre"]["apgr"]),
                num(&r["pre"]["cpt95"]),
                num(&r["pre"]["auroc_small"]),
                num(&r["pre"]["auroc_large"]),
                num(&r["post"]["apgr"]),
                num(&r["post"]["cpt95"]),
                num(&r["post"]["auroc_small"]),
                num(&r["post"]["auroc_large"]),
            );
        }
    }
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
