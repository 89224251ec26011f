//! What `eval` measured: per-signal metrics, the calibrated model's held-out figures, the
//! recommended rule, a cost sweep, plots and the JSON contract.

#![allow(clippy::many_single_char_names)]

use std::fmt::Write as _;
use std::path::Path;

use edgecascade::config::PriceConfig;
use edgecascade::cost;
use edgecascade::engine::local::TokenSignal;
use edgecascade::eval::metrics::{self, Outcome, ScoreReport};
use edgecascade::eval::{score, structured, Structured};
use edgecascade::policy::calibrated::{self, CalibratedModel, Evidence, N};
use edgecascade::policy::probe::Probe;
use edgecascade::policy::Signal;
use edgecascade::{Confidence, Config, FinishReason};
use serde_json::{json, Value};

use super::collect::{LocalResult, RemoteResult};
use super::probe::ProbeRun;
use super::{Args, Prepared, Validity};
use crate::Failure;

/// The L2 penalty of the calibrated model (on standardised features).
const L2: f64 = 1.0;

/// The configurable single signals.
const RAW: [Signal; 4] = [
    Signal::MeanLogprob,
    Signal::MinProb,
    Signal::P10Prob,
    Signal::MeanEntropy,
];

/// One signal's ranking and what it is worth.
struct Ranked {
    name: &'static str,
    /// Higher = surer the small model is right (entropy negated).
    scores: Vec<f64>,
    /// +1, or -1 for entropy (config thresholds are in the signal's own units).
    sign: f64,
    report: ScoreReport,
    /// A probe rule: measured beside the others, configured through the probe file.
    probe: bool,
}

/// The chosen decision rule at one operating point.
pub(super) struct Pick {
    pub(super) k: usize,
    pub(super) threshold: f64,
    pub(super) accuracy: f64,
    pub(super) escalation: f64,
    pub(super) reached: bool,
}

pub(super) fn choose(curve: &[f64], scores: &[f64], large: f64, args: &Args) -> Pick {
    let n = curve.len() - 1;
    let k = if let Some(max) = args.max_escalation {
        let limit = ((max * n as f64) + 1e-9).floor() as usize;
        (0..=limit.min(n))
            .max_by(|&a, &b| curve[a].total_cmp(&curve[b]).then(b.cmp(&a)))
            .unwrap_or(0)
    } else {
        let goal = args.target_quality * large;
        (0..=n)
            .find(|&k| curve[k] >= goal - 1e-12)
            .unwrap_or_else(|| {
                (0..=n)
                    .max_by(|&a, &b| curve[a].total_cmp(&curve[b]).then(b.cmp(&a)))
                    .unwrap_or(n)
            })
    };
    let threshold = metrics::threshold_for(scores, k);
    // What the threshold really escalates (ties can make some k unreachable).
    let k_real = scores
        .iter()
        .filter(|&&s| s.is_nan() || s < threshold)
        .count();
    let reached = args.max_escalation.is_some() || curve[k] >= args.target_quality * large - 1e-12;
    Pick {
        k: k_real,
        threshold,
        accuracy: curve[k_real],
        escalation: k_real as f64 / n.max(1) as f64,
        reached,
    }
}

fn signals_of(l: &LocalResult) -> Vec<TokenSignal> {
    l.signals
        .iter()
        .enumerate()
        .map(|(i, s)| TokenSignal {
            logprob: s[0],
            entropy: s[1],
            margin: s[2],
            // The model's own top token; caches from before it was kept hold only the token
            // written, which is the top one when no grammar was in force (greedy decoding).
            top_logprob: l
                .top
                .as_ref()
                .and_then(|t| t.get(i))
                .copied()
                .unwrap_or(s[0]),
        })
        .collect()
}

fn finish_of(s: &str) -> FinishReason {
    match s {
        "length" => FinishReason::Length,
        "cancelled" => FinishReason::Cancelled,
        _ => FinishReason::Stop,
    }
}

pub(super) fn opt(v: Option<f64>) -> serde_json::Value {
    v.map_or(serde_json::Value::Null, |x| json!((x * 1e4).round() / 1e4))
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

/// What `eval` collected, for the report: the items, both tiers' answers and their validity,
/// and the models.
pub struct Collected<'a> {
    /// The items, as run.
    pub items: &'a [Prepared],
    /// The local tier's results, one per item.
    pub local: &'a [LocalResult],
    /// The remote tier's results, one per item.
    pub remote: &'a [RemoteResult],
    /// Whether the structured items' answers are valid.
    pub validity: &'a Validity,
    /// The small (local) model's name.
    pub small_name: &'a str,
    /// The large (remote) model's name.
    pub large_name: &'a str,
    /// The local model's file (a fitted probe records its hash).
    pub model_path: &'a Path,
}

/// The per-item facts every measure is computed from.
pub(super) struct Basis {
    /// The number of items.
    n: usize,
    /// Whether each tier answered each item right.
    pub(super) outcomes: Vec<Outcome>,
    /// The items whose local answer escalates whatever its confidence.
    invalid: Vec<bool>,
    /// The small model's accuracy.
    small: f64,
    /// The large model's accuracy.
    large: f64,
    /// Each local answer's confidence summary.
    summaries: Vec<Confidence>,
    /// The calibrated model's features, per item.
    pub(super) features: Vec<[f64; N]>,
    /// The datasets, in order of first appearance.
    dataset_names: Vec<String>,
    /// Each item's dataset, an index into `dataset_names` (the folds' strata).
    pub(super) groups: Vec<usize>,
}

impl Basis {
    /// Judges both tiers' answers and summarises the local ones.
    fn new(c: &Collected<'_>) -> Self {
        let n = c.items.len();
        let outcomes = outcomes_of(c);
        // An invalid structured local answer, or one cut short by max_tokens, escalates whatever
        // its confidence, as in the runtime's cascade: every ranking puts it first.
        let invalid: Vec<bool> = (0..c.validity.local.len())
            .map(|i| c.validity.escalates(i))
            .collect();
        let (small, large) = metrics::accuracies(&outcomes);
        let token_signals: Vec<Vec<TokenSignal>> = c.local.iter().map(signals_of).collect();
        let summaries: Vec<_> = token_signals
            .iter()
            .map(|s| edgecascade::engine::local::confidence::summarize(s))
            .collect();
        let features = features_of(c, &token_signals);

        // Datasets as fold strata and for the per-task breakdown.
        let (dataset_names, groups) = datasets_of(c.items);
        Self {
            n,
            outcomes,
            invalid,
            small,
            large,
            summaries,
            features,
            dataset_names,
            groups,
        }
    }

    /// `scores` with every invalid item's set to -inf, so that it escalates first.
    fn force(&self, mut scores: Vec<f64>) -> Vec<f64> {
        for (s, &bad) in scores.iter_mut().zip(&self.invalid) {
            if bad {
                *s = f64::NEG_INFINITY;
            }
        }
        scores
    }
}

/// Whether each tier answered each item right.
fn outcomes_of(c: &Collected<'_>) -> Vec<Outcome> {
    c.items
        .iter()
        .zip(c.local.iter().zip(c.remote))
        .map(|(p, (l, r))| {
            let i = &p.item;
            let k = i.kind();
            match (i.structured(), &i.expected) {
                (Some(Structured::Json), Some(e)) => Outcome {
                    small: structured::json_answer_matches(e, &l.text),
                    large: structured::json_answer_matches(e, &r.text),
                },
                (Some(Structured::Call), Some(e)) => Outcome {
                    small: structured::call_matches(
                        e,
                        &edgecascade::tools::parse(&l.text, "eval").calls,
                    ),
                    large: structured::call_matches(e, &r.tool_calls),
                },
                _ => Outcome {
                    small: score::is_correct(k, &l.text, &i.answer, &i.aliases, &i.choices),
                    large: score::is_correct(k, &r.text, &i.answer, &i.aliases, &i.choices),
                },
            }
        })
        .collect()
}

/// The calibrated model's features of each local answer.
fn features_of(c: &Collected<'_>, token_signals: &[Vec<TokenSignal>]) -> Vec<[f64; N]> {
    c.items
        .iter()
        .zip(c.local)
        .zip(token_signals)
        .map(|((p, l), s)| {
            calibrated::features(&Evidence {
                messages: &p.request.messages,
                hint: None,
                prompt_tokens: l.prompt_tokens,
                signals: s,
                text: &l.text,
                finish: finish_of(&l.finish),
                hidden: None,
                task: None,
            })
        })
        .collect()
}

/// The datasets in order of first appearance, and each item's index among them.
fn datasets_of(items: &[Prepared]) -> (Vec<String>, Vec<usize>) {
    let mut dataset_names: Vec<String> = Vec::new();
    for p in items {
        if !dataset_names.contains(&p.dataset) {
            dataset_names.push(p.dataset.clone());
        }
    }
    let groups: Vec<usize> = items
        .iter()
        .map(|p| {
            dataset_names
                .iter()
                .position(|d| *d == p.dataset)
                .unwrap_or(0)
        })
        .collect();
    (dataset_names, groups)
}

/// The rankings by each configurable single signal.
fn raw_rankings(items: &[Prepared], b: &Basis) -> Vec<Ranked> {
    // How hard the grammar forced tokens says something only where one was in force.
    let constrained = items
        .iter()
        .any(|p| edgecascade::tools::constrained(&p.request));
    let forced = constrained.then_some(Signal::MaxForced);
    RAW.iter()
        .copied()
        .chain(forced)
        .map(|signal| {
            // Higher = surer: entropy and forcing escalate above their threshold, the others
            // below.
            let sign = if signal.escalates_above() { -1.0 } else { 1.0 };
            let scores: Vec<f64> = b.force(
                b.summaries
                    .iter()
                    .map(|c| match signal.value(c) {
                        // An empty answer always escalates (the cascade does so too).
                        Some(v) if c.tokens > 0 => sign * v,
                        _ => f64::NEG_INFINITY,
                    })
                    .collect(),
            );
            let report = metrics::report(&b.outcomes, &scores);
            Ranked {
                name: signal.name(),
                scores,
                sign,
                report,
                probe: false,
            }
        })
        .collect()
}

/// The calibrated model's held-out rankings (the gain model's too when the large model is
/// sometimes right and sometimes wrong), and the model fitted on every item.
fn calibrate(
    args: &Args,
    c: &Collected<'_>,
    b: &Basis,
    labels: &[bool],
    large_labels: &[bool],
) -> (Vec<Ranked>, CalibratedModel) {
    let (n, small_name, large_name) = (b.n, c.small_name, c.large_name);
    let mut ranked = Vec::new();
    let held_out = b.force(calibrated::cross_validate(
        &b.features,
        labels,
        &b.groups,
        args.folds,
        args.seed,
        L2,
    ));
    let report = metrics::report(&b.outcomes, &held_out);
    ranked.push(Ranked {
        name: "calibrated",
        scores: held_out,
        sign: 1.0,
        report,
        probe: false,
    });
    if large_labels.iter().any(|&l| l) && large_labels.iter().any(|&l| !l) {
        let gain = b.force(calibrated::cross_validate_gain(
            &b.features,
            labels,
            large_labels,
            &b.groups,
            args.folds,
            args.seed,
            L2,
        ));
        let report = metrics::report(&b.outcomes, &gain);
        ranked.push(Ranked {
            name: "calibrated_gain",
            scores: gain,
            sign: 1.0,
            report,
            probe: false,
        });
    }
    let mut m = CalibratedModel::fit_pair(&b.features, labels, large_labels, L2);
    m.fitted_on = format!(
        "edgecascade eval: {n} items ({}), small {small_name}, large {large_name}",
        b.dataset_names.join(", ")
    );
    (ranked, m)
}

/// What every ranking is judged against: the oracle, a random ranking and the APGR ceilings.
struct Baselines {
    /// The oracle's ranking.
    oracle: ScoreReport,
    /// The share the oracle escalates.
    oracle_escalation: f64,
    /// The oracle's accuracy.
    oracle_accuracy: f64,
    /// A random ranking (every score equal).
    random: ScoreReport,
    /// The in-sample APGR ceilings.
    bounds: metrics::Bounds,
}

impl Baselines {
    /// The baselines of the items in `b`.
    fn new(b: &Basis) -> Self {
        let oracle_scores = metrics::oracle_scores(&b.outcomes);
        let oracle = metrics::report(&b.outcomes, &oracle_scores);
        let (oracle_escalation, oracle_accuracy) = metrics::oracle(&b.outcomes);
        let random = metrics::report(&b.outcomes, &vec![0.0; b.n]);
        let bounds = metrics::bounds(&b.outcomes, &b.groups);
        Self {
            oracle,
            oracle_escalation,
            oracle_accuracy,
            random,
            bounds,
        }
    }
}

/// Runs the probe and ranks by its held-out rules (forced like the others).
fn probe_rankings(
    args: &Args,
    cfg: &Config,
    c: &Collected<'_>,
    b: &Basis,
) -> Result<(ProbeRun, Vec<Ranked>), Failure> {
    let run = super::probe::run(args, c, b, &cfg.prices)?;
    let mut ranked = Vec::new();
    for (name, scores, _) in &run.ranked {
        let scores = b.force(scores.clone());
        let report = metrics::report(&b.outcomes, &scores);
        ranked.push(Ranked {
            name,
            scores,
            sign: 1.0,
            report,
            probe: true,
        });
    }
    Ok((run, ranked))
}

/// What the report measured: every ranking, and what they are judged against.
struct Measured {
    /// The per-item facts.
    basis: Basis,
    /// Every ranking: the raw signals, the calibrated model's, the probe's.
    ranked: Vec<Ranked>,
    /// The calibrated model fitted on every item (when the small model is sometimes right
    /// and sometimes wrong).
    model: Option<CalibratedModel>,
    /// The oracle, random and the ceilings.
    baselines: Baselines,
    /// The probe's run, when asked for.
    probe_run: Option<ProbeRun>,
}

/// Judges every answer, ranks the items by each signal, and fits the calibrated model and
/// (when asked for) the probe.
fn measure(args: &Args, cfg: &Config, c: &Collected<'_>) -> Result<Measured, Failure> {
    let basis = Basis::new(c);
    let mut ranked = raw_rankings(c.items, &basis);
    let labels: Vec<bool> = basis.outcomes.iter().map(|o| o.small).collect();
    let both = labels.iter().any(|&l| l) && labels.iter().any(|&l| !l);
    let large_labels: Vec<bool> = basis.outcomes.iter().map(|o| o.large).collect();
    let model = both.then(|| {
        let (held_out, m) = calibrate(args, c, &basis, &labels, &large_labels);
        ranked.extend(held_out);
        m
    });
    let baselines = Baselines::new(&basis);

    let probe_run = if args.probe() && both {
        let (run, probe_ranked) = probe_rankings(args, cfg, c, &basis)?;
        ranked.extend(probe_ranked);
        Some(run)
    } else {
        None
    };
    Ok(Measured {
        basis,
        ranked,
        model,
        baselines,
        probe_run,
    })
}

/// The recommended `[cascade]` rule.
struct Recommended<'m> {
    /// The ranking it thresholds.
    best: &'m Ranked,
    /// Its operating point.
    pick: Pick,
    /// The threshold in the signal's own units, as the config takes it.
    config_threshold: f64,
}

impl<'m> Recommended<'m> {
    /// The ranking with the best held-out APGR, at the target; `large` is the large model's
    /// accuracy.
    fn new(ranked: &'m [Ranked], large: f64, args: &Args) -> Self {
        let best = ranked
            .iter()
            .filter(|r| !r.probe)
            .max_by(|a, b| {
                a.report
                    .apgr
                    .unwrap_or(f64::NEG_INFINITY)
                    .total_cmp(&b.report.apgr.unwrap_or(f64::NEG_INFINITY))
            })
            .expect("signals");
        let pick = choose(&best.report.curve, &best.scores, large, args);
        let config_threshold = best.sign * pick.threshold;
        Self {
            best,
            pick,
            config_threshold,
        }
    }
}

/// Cost per request: local for every item, remote for the escalated.
struct Costs {
    /// USD of each item's local answer.
    local: Vec<f64>,
    /// USD of each item's remote answer.
    remote: Vec<f64>,
    /// USD with every item sent remote.
    all_remote: f64,
    /// USD of every local answer.
    local_total: f64,
}

impl Costs {
    /// Each item's cost in either tier at `prices`.
    fn new(prices: &PriceConfig, local: &[LocalResult], remote: &[RemoteResult]) -> Self {
        let local_cost: Vec<f64> = local
            .iter()
            .map(|l| cost::local_usd(prices, l.prompt_tokens + l.signals.len() as u32, l.ms / 1e3))
            .collect();
        let remote_cost: Vec<f64> = remote
            .iter()
            .map(|r| cost::remote_usd(prices, r.prompt_tokens, r.completion_tokens))
            .collect();
        let all_remote: f64 = remote_cost.iter().sum();
        let local_total: f64 = local_cost.iter().sum();
        Self {
            local: local_cost,
            remote: remote_cost,
            all_remote,
            local_total,
        }
    }

    /// USD when the first `k` items of `order` escalate.
    fn usd_at(&self, order: &[usize], k: usize) -> f64 {
        self.local_total + order[..k].iter().map(|&i| self.remote[i]).sum::<f64>()
    }
}

/// USD per 1000 requests, from the USD of `n` requests.
fn per_1k(usd: f64, n: usize) -> f64 {
    usd / n.max(1) as f64 * 1000.0
}

/// What the recommended rule costs.
struct Spend {
    /// The items by the recommended ranking, least sure first: the first `pick.k` escalate.
    order: Vec<usize>,
    /// USD of the cascade.
    cascade_cost: f64,
    /// Token units with every item sent remote, at 20:1.
    all_remote_20: f64,
    /// Token units of the cascade, at 20:1.
    cascade_20: f64,
}

impl Spend {
    /// The cost of `rec` over the collected answers.
    fn new(c: &Collected<'_>, rec: &Recommended<'_>, costs: &Costs) -> Self {
        let order = metrics::ascending(&rec.best.scores);
        let cascade_cost = costs.usd_at(&order, rec.pick.k);
        // The same at a 20:1 remote-to-local price per token (a 7B local against a 70B remote).
        let local_tokens: f64 = c
            .local
            .iter()
            .map(|l| f64::from(l.prompt_tokens) + l.signals.len() as f64)
            .sum();
        let remote_tokens: Vec<f64> = c
            .remote
            .iter()
            .map(|r| f64::from(r.prompt_tokens + r.completion_tokens))
            .collect();
        let all_remote_20 = 20.0 * remote_tokens.iter().sum::<f64>();
        let cascade_20 = local_tokens
            + 20.0
                * order[..rec.pick.k]
                    .iter()
                    .map(|&i| remote_tokens[i])
                    .sum::<f64>();
        Self {
            order,
            cascade_cost,
            all_remote_20,
            cascade_20,
        }
    }
}

/// Per task, at the recommended threshold (the items of `escalated_items` go remote): accuracies,
/// escalation, savings and each ranking's figures.
fn per_task(b: &Basis, ranked: &[Ranked], costs: &Costs, escalated_items: &[usize]) -> Vec<Value> {
    let (n, groups, outcomes) = (b.n, &b.groups, &b.outcomes);
    let mut escalated = vec![false; n];
    for &i in escalated_items {
        escalated[i] = true;
    }
    let mut per_task = Vec::new();
    for (g, name) in b.dataset_names.iter().enumerate() {
        let idx: Vec<usize> = (0..n).filter(|&i| groups[i] == g).collect();
        let o: Vec<Outcome> = idx.iter().map(|&i| outcomes[i]).collect();
        let (s, l) = metrics::accuracies(&o);
        let m = idx.len().max(1) as f64;
        let cascade_acc = idx
            .iter()
            .filter(|&&i| {
                if escalated[i] {
                    outcomes[i].large
                } else {
                    outcomes[i].small
                }
            })
            .count() as f64
            / m;
        let esc = idx.iter().filter(|&&i| escalated[i]).count() as f64 / m;
        let task_remote: f64 = idx.iter().map(|&i| costs.remote[i]).sum();
        let task_cascade: f64 = idx
            .iter()
            .map(|&i| costs.local[i] + if escalated[i] { costs.remote[i] } else { 0.0 })
            .sum();
        let (oe, oa) = metrics::oracle(&o);
        let sig = task_signals(ranked, &idx, &o);
        per_task.push(json!({
            "dataset": name,
            "items": idx.len(),
            "small_accuracy": opt(Some(s)),
            "large_accuracy": opt(Some(l)),
            "cascade_accuracy": opt(Some(cascade_acc)),
            "escalation_rate": opt(Some(esc)),
            "oracle_escalation": opt(Some(oe)),
            "oracle_accuracy": opt(Some(oa)),
            "savings_vs_all_remote": opt((task_remote > 0.0).then(|| 1.0 - task_cascade / task_remote)),
            "signals": sig,
        }));
    }
    per_task
}

/// Each ranking's AUROC, APGR and CPT80 over one task's items `idx` (outcomes `o`).
fn task_signals(ranked: &[Ranked], idx: &[usize], o: &[Outcome]) -> serde_json::Map<String, Value> {
    let mut sig = serde_json::Map::new();
    for r in ranked {
        let sc: Vec<f64> = idx.iter().map(|&i| r.scores[i]).collect();
        let rep = metrics::report(o, &sc);
        sig.insert(
            r.name.into(),
            json!({"auroc": opt(rep.auroc), "apgr": opt(rep.apgr), "cpt80": opt(rep.cpt[1])}),
        );
    }
    sig
}

/// Accuracy, threshold and cost at every 5% of escalation, for one ranking of `n` items.
fn sweep_of(r: &Ranked, costs: &Costs, n: usize) -> Vec<Value> {
    let order = metrics::ascending(&r.scores);
    (0..=20)
        .map(|t| {
            let k = (n * t + 10) / 20;
            let usd = costs.usd_at(&order, k);
            json!({
                "escalation_rate": opt(Some(k as f64 / n.max(1) as f64)),
                "threshold": opt(Some(r.sign * metrics::threshold_for(&r.scores, k))),
                "accuracy": opt(Some(r.report.curve[k])),
                "usd_per_1k_requests": per_1k(usd, n),
            })
        })
        .collect()
}

/// Each ranking's figures with its sweep, and each one's AUROC alone.
fn signal_maps(
    ranked: &[Ranked],
    costs: &Costs,
    n: usize,
) -> (
    serde_json::Map<String, Value>,
    serde_json::Map<String, Value>,
) {
    let mut signals = serde_json::Map::new();
    let mut auroc = serde_json::Map::new();
    for r in ranked {
        auroc.insert(r.name.into(), opt(r.report.auroc));
        signals.insert(
            r.name.into(),
            json!({
                "auroc": opt(r.report.auroc),
                "apgr": opt(r.report.apgr),
                "cpt": {"50": opt(r.report.cpt[0]), "80": opt(r.report.cpt[1]), "95": opt(r.report.cpt[2])},
                "held_out": r.name.starts_with("calibrated") || r.probe,
                "sweep": sweep_of(r, costs, n),
            }),
        );
    }
    (signals, auroc)
}

/// The `recommended` object of the JSON report: the rule, its accuracy and what it saves.
fn recommended_json(rec: &Recommended<'_>, costs: &Costs, spend: &Spend, n: usize) -> Value {
    let (pick, all_remote) = (&rec.pick, costs.all_remote);
    let (cascade_cost, all_remote_20, cascade_20) =
        (spend.cascade_cost, spend.all_remote_20, spend.cascade_20);
    json!({
        "signal": rec.best.name,
        "threshold": rec.config_threshold,
        "accuracy": opt(Some(pick.accuracy)),
        "escalation_rate": opt(Some(pick.escalation)),
        "target_reached": pick.reached,
        "usd_per_1k_requests": per_1k(cascade_cost, n),
        "all_remote_usd_per_1k_requests": per_1k(all_remote, n),
        "savings_vs_all_remote": opt((all_remote > 0.0).then(|| 1.0 - cascade_cost / all_remote)),
        "savings_vs_all_remote_20_to_1": opt((all_remote_20 > 0.0).then(|| 1.0 - cascade_20 / all_remote_20)),
    })
}

/// The JSON report (the CLI contract), but for `structured_rule`.
fn summary_json(
    args: &Args,
    cfg: &Config,
    c: &Collected<'_>,
    m: &Measured,
    rec: &Recommended<'_>,
) -> Value {
    let (b, ranked, base, best) = (&m.basis, &m.ranked, &m.baselines, rec.best);
    let n = b.n;
    let costs = Costs::new(&cfg.prices, c.local, c.remote);
    let spend = Spend::new(c, rec, &costs);

    // Per task, at the recommended threshold.
    let per_task = per_task(b, ranked, &costs, &spend.order[..rec.pick.k]);
    let (signals, auroc) = signal_maps(ranked, &costs, n);
    let sweep = sweep_of(best, &costs, n);
    json!({
        "items": n,
        "datasets": b.dataset_names,
        "small_model": c.small_name,
        "large_model": c.large_name,
        "small_accuracy": opt(Some(b.small)),
        "large_accuracy": opt(Some(b.large)),
        "apgr": opt(best.report.apgr),
        "cpt": {"50": opt(best.report.cpt[0]), "80": opt(best.report.cpt[1]), "95": opt(best.report.cpt[2])},
        "oracle_escalation": opt(Some(base.oracle_escalation)),
        "oracle_accuracy": opt(Some(base.oracle_accuracy)),
        "oracle_apgr": opt(base.oracle.apgr),
        "bounds": {"task": opt(base.bounds.task), "small_known": opt(base.bounds.small_known)},
        "auroc": auroc,
        "recommended": recommended_json(rec, &costs, &spend, n),
        "signals": signals,
        "random_apgr": opt(base.random.apgr),
        "per_task": per_task,
        "sweep": sweep,
        "folds": args.folds,
        "probe": m.probe_run.as_ref().map(|p| p.json.clone()),
        "structured": structured_summary(c.items, &b.outcomes, c.validity),
    })
}

/// Measures what each signal is worth on the collected answers, recommends a `[cascade]`
/// rule, and writes what `args` asks for: the details, plot, probe, HTML and config, then the
/// table or the JSON report.
pub fn report(args: &Args, cfg: &Config, c: &Collected<'_>) -> Result<(), Failure> {
    let m = measure(args, cfg, c)?;
    // The recommended [cascade] rule: the best held-out APGR (the probe has its own block).
    let rec = Recommended::new(&m.ranked, m.basis.large, args);
    let mut out = summary_json(args, cfg, c, &m, &rec);
    let structured_rule = structured_rule(c.items, &m.basis.outcomes, c.validity, &m.ranked, args);
    if let Some((rule, _)) = &structured_rule {
        out["structured_rule"] = rule.clone();
    }

    if let Some(path) = &args.details {
        write_details(path, c, &m)?;
    }
    let (b, base) = (&m.basis, &m.baselines);
    let svg = plot(&m.ranked, &base.oracle, &base.random, b.small, b.large, b.n);
    if let Some(path) = &args.plot {
        std::fs::write(path, &svg)
            .map_err(|e| Failure::Runtime(format!("plot {}: {e}", path.display())))?;
    }
    let table = report_text(
        &out,
        &m,
        &rec,
        structured_rule.as_ref().map(|(rule, _)| rule),
    );
    let fitted = m.probe_run.as_ref().and_then(|p| p.fitted.as_ref());
    if let (Some(path), Some(probe)) = (&args.write_probe, fitted) {
        write_probe(path, probe)?;
    }
    if let Some(path) = &args.html {
        write_html(path, c, &b.dataset_names, &svg, &table)?;
    }
    // With a written probe, [cascade] points at it; else the best calibrated or raw rule.
    let probe_file = args.write_probe.as_deref().zip(fitted);
    let (signal_name, threshold) = probe_file
        .map_or((rec.best.name, rec.config_threshold), |(_, p)| {
            ("probe", p.threshold)
        });
    if let Some(path) = &args.write_config {
        write_config(
            path,
            signal_name,
            threshold,
            m.model
                .as_ref()
                .filter(|_| rec.best.name.starts_with("calibrated")),
            probe_file.map(|(p, _)| p),
            structured_rule.as_ref().map(|(_, r)| *r),
        )?;
    }
    print_report(args, &out, &table, signal_name, threshold);
    Ok(())
}

/// Prints the JSON report, or the table and the `[cascade]` rule written to the config.
fn print_report(args: &Args, out: &Value, table: &str, signal_name: &str, threshold: f64) {
    if args.json {
        println!("{out}");
    } else {
        print!("{table}");
        if let Some(p) = &args.write_config {
            println!(
                "wrote [cascade] signal = {signal_name:?}, threshold = {threshold:.4} to {}",
                p.display()
            );
        }
    }
}

/// `--details`: one JSON line per item, its answers, correctness, signals and features.
fn write_details(path: &Path, c: &Collected<'_>, m: &Measured) -> Result<(), Failure> {
    let (local, remote, validity) = (c.local, c.remote, c.validity);
    let (outcomes, features) = (&m.basis.outcomes, &m.basis.features);
    let mut text = String::new();
    for (i, p) in c.items.iter().enumerate() {
        let mut row = json!({
            "id": p.item.id, "dataset": p.dataset, "kind": p.item.kind().name(),
            "answer": p.item.answer, "local": local[i].text, "remote": remote[i].text,
            "small_correct": outcomes[i].small, "large_correct": outcomes[i].large,
            "local_finish": local[i].finish, "prompt_tokens": local[i].prompt_tokens,
            "local_valid": validity.local[i], "remote_valid": validity.remote[i],
            "token_signals": local[i].signals,
        });
        for r in &m.ranked {
            row[r.name] = json!(r.scores[i] * r.sign);
        }
        for (f, name) in calibrated::FEATURES.iter().enumerate() {
            row["features"][*name] = json!(features[i][f]);
        }
        let _ = writeln!(text, "{row}");
    }
    std::fs::write(path, text)
        .map_err(|e| Failure::Runtime(format!("details {}: {e}", path.display())))
}

/// `--write-probe`: the fitted probe as JSON, written whole or not at all.
fn write_probe(path: &Path, probe: &Probe) -> Result<(), Failure> {
    let text = serde_json::to_string(probe)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::Runtime(format!("probe {}: {e}", path.display())))
}

/// `--html`: the plot and the table in one page.
fn write_html(
    path: &Path,
    c: &Collected<'_>,
    dataset_names: &[String],
    svg: &str,
    table: &str,
) -> Result<(), Failure> {
    let n = c.items.len();
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>edgecascade eval</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}pre{{background:#f6f6f6;padding:1em}}</style>\
         <h1>Cascade evaluation</h1><p>{n} items from {}; small {}, large {}.</p>{svg}<pre>{}</pre>",
        html_escape(&dataset_names.join(", ")),
        html_escape(c.small_name),
        html_escape(c.large_name),
        html_escape(table)
    );
    std::fs::write(path, html)
        .map_err(|e| Failure::Runtime(format!("html {}: {e}", path.display())))
}

/// The human-readable report: the main table, the structured items' figures and rule, and
/// the probe's summary.
fn report_text(
    out: &Value,
    m: &Measured,
    rec: &Recommended<'_>,
    structured_rule: Option<&Value>,
) -> String {
    let mut table = text_table(out, &m.ranked, &rec.pick, rec.best.name);
    if let Some(rows) = out["structured"].as_array() {
        structured_rows(&mut table, rows);
    }
    if let Some(rule) = structured_rule {
        structured_rule_rows(&mut table, rule);
    }
    if let Some(p) = &m.probe_run {
        table.push_str(&p.text);
    }
    table
}

/// The structured items' validity and accuracy per tier (`rows` of the `structured` object).
fn structured_rows(table: &mut String, rows: &[Value]) {
    table.push_str("\nstructured items (valid / right):\n");
    for r in rows {
        let _ = writeln!(
            table,
            "  {:<9} {:>5} items: local {} / {} (cut by max_tokens {}), remote {} / {}",
            r["kind"].as_str().unwrap_or_default(),
            r["items"],
            num(&r["local_valid"]),
            num(&r["local_correct"]),
            num(&r["local_cut"]),
            num(&r["remote_valid"]),
            num(&r["remote_correct"]),
        );
    }
}

/// Each signal's figures on the grammar-constrained items alone, and the cascade under the
/// structured rule (the `structured_rule` object).
fn structured_rule_rows(table: &mut String, rule: &Value) {
    let _ = writeln!(
        table,
        "\ngrammar-constrained items ({}: small {}, large {}), each signal on them alone:",
        rule["items"],
        num(&rule["small_accuracy"]),
        num(&rule["large_accuracy"]),
    );
    for (name, r) in rule["signals"].as_object().into_iter().flatten() {
        let _ = writeln!(
            table,
            "  {name:<13} AUROC {} APGR {} CPT95 {}; threshold {} escalates {} for {}",
            num(&r["auroc"]),
            num(&r["apgr"]),
            num(&r["cpt95"]),
            num(&r["threshold"]),
            num(&r["escalation_rate"]),
            num(&r["accuracy"]),
        );
    }
    for k in rule["cascade"].as_array().into_iter().flatten() {
        let _ = writeln!(
            table,
            "  cascade under {}: {} escalates {}, valid {}, right {}",
            rule["recommended"]["structured_signal"]
                .as_str()
                .unwrap_or_default(),
            k["kind"].as_str().unwrap_or_default(),
            num(&k["escalation_rate"]),
            num(&k["cascade_valid"]),
            num(&k["cascade_correct"]),
        );
    }
}

/// The items the local tier decoded under a grammar (a JSON format, a forced call): each raw
/// signal's figures over them alone, and the best one's threshold at the target, for
/// `[cascade] structured_signal` and `structured_threshold`. `None` without such items.
fn structured_rule(
    items: &[Prepared],
    outcomes: &[Outcome],
    validity: &Validity,
    ranked: &[Ranked],
    args: &Args,
) -> Option<(serde_json::Value, (&'static str, f64))> {
    let idx: Vec<usize> = (0..items.len())
        .filter(|&i| edgecascade::tools::constrained(&items[i].request))
        .collect();
    if idx.is_empty() {
        return None;
    }
    let o: Vec<Outcome> = idx.iter().map(|&i| outcomes[i]).collect();
    let (small, large) = metrics::accuracies(&o);
    let mut signals = serde_json::Map::new();
    // (APGR, name, config threshold, the ranking and its cut in score units)
    let mut best: Option<(f64, &'static str, f64, &Ranked, f64)> = None;
    for r in ranked.iter().filter(|r| {
        RAW.iter()
            .chain(&[Signal::MaxForced])
            .any(|s| s.name() == r.name)
    }) {
        let scores: Vec<f64> = idx.iter().map(|&i| r.scores[i]).collect();
        let rep = metrics::report(&o, &scores);
        let pick = choose(&rep.curve, &scores, large, args);
        // Invalid answers rank first (-inf) and escalate whatever the threshold: place it
        // among the valid answers' scores, so that it is a number the config takes.
        let invalid = scores.iter().filter(|s| **s == f64::NEG_INFINITY).count();
        let finite: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
        let t = r.sign * metrics::threshold_for(&finite, pick.k.saturating_sub(invalid));
        let t = if [Signal::MinProb, Signal::P10Prob, Signal::MaxForced]
            .iter()
            .any(|s| s.name() == r.name)
        {
            t.clamp(0.0, 1.0)
        } else {
            t
        };
        signals.insert(
            r.name.into(),
            json!({
                "auroc": opt(rep.auroc), "apgr": opt(rep.apgr), "cpt95": opt(rep.cpt[2]),
                "threshold": t, "escalation_rate": opt(Some(pick.escalation)),
                "accuracy": opt(Some(pick.accuracy)), "target_reached": pick.reached,
            }),
        );
        let apgr = rep.apgr.unwrap_or(f64::NEG_INFINITY);
        if best.is_none_or(|(a, ..)| apgr > a) {
            best = Some((apgr, r.name, t, r, pick.threshold));
        }
    }
    let (_, name, threshold, r, cut) = best?;
    // The cascade under that rule, per kind: what escalates (an invalid local answer always),
    // and whether the answer the caller gets is valid and right.
    let mut kinds = Vec::new();
    for kind in [Structured::Json, Structured::Call] {
        let ik: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| items[i].item.structured() == Some(kind))
            .collect();
        if ik.is_empty() {
            continue;
        }
        let m = ik.len() as f64;
        let up = |i: usize| validity.escalates(i) || r.scores[i] < cut;
        let share = |f: &dyn Fn(usize) -> bool| ik.iter().filter(|&&i| f(i)).count() as f64 / m;
        kinds.push(json!({
            "kind": kind.name(),
            "items": ik.len(),
            "escalation_rate": opt(Some(share(&|i| up(i)))),
            "cascade_valid": opt(Some(share(&|i| {
                if up(i) { validity.remote[i] == Some(true) } else { validity.local[i] == Some(true) }
            }))),
            "cascade_correct": opt(Some(share(&|i| {
                if up(i) { outcomes[i].large } else { outcomes[i].small }
            }))),
        }));
    }
    let rule = json!({
        "items": idx.len(),
        "small_accuracy": opt(Some(small)),
        "large_accuracy": opt(Some(large)),
        "signals": signals,
        "recommended": {"structured_signal": name, "structured_threshold": threshold},
        "cascade": kinds,
    });
    Some((rule, (name, threshold)))
}

/// Validity and accuracy per tier for each kind of structured item; null without any.
fn structured_summary(
    items: &[Prepared],
    outcomes: &[Outcome],
    validity: &Validity,
) -> serde_json::Value {
    let mut rows = Vec::new();
    for kind in [Structured::Json, Structured::Call] {
        let idx: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].item.structured() == Some(kind))
            .collect();
        if idx.is_empty() {
            continue;
        }
        let m = idx.len() as f64;
        let share = |f: &dyn Fn(usize) -> bool| idx.iter().filter(|&&i| f(i)).count() as f64 / m;
        rows.push(json!({
            "kind": kind.name(),
            "items": idx.len(),
            "local_valid": opt(Some(share(&|i| validity.local[i] == Some(true)))),
            "local_cut": opt(Some(share(&|i| validity.cut[i]))),
            "remote_valid": opt(Some(share(&|i| validity.remote[i] == Some(true)))),
            "local_correct": opt(Some(share(&|i| outcomes[i].small))),
            "remote_correct": opt(Some(share(&|i| outcomes[i].large))),
        }));
    }
    if rows.is_empty() {
        serde_json::Value::Null
    } else {
        json!(rows)
    }
}

/// A JSON number to three decimals; `-` when it is not one.
pub(super) fn num(v: &Value) -> String {
    fmt(v.as_f64())
}

/// The main table of the JSON report `out`: the baselines, each ranking's figures, the
/// per-task breakdown, the sweep of the `best` ranking and the recommended rule.
fn text_table(out: &serde_json::Value, ranked: &[Ranked], pick: &Pick, best: &str) -> String {
    let mut t = String::new();
    baseline_lines(&mut t, out);
    signal_rows(&mut t, ranked);
    task_rows(&mut t, out);
    sweep_rows(&mut t, out, best);
    recommended_line(&mut t, out, pick, best);
    t
}

/// The items, both models' accuracy, the oracle, random and the APGR ceilings.
fn baseline_lines(t: &mut String, out: &Value) {
    let _ = writeln!(
        t,
        "{} items: small {} ({}), large {} ({}); oracle escalates {} for {} (APGR {}); random APGR {}",
        out["items"],
        out["small_model"].as_str().unwrap_or_default(),
        num(&out["small_accuracy"]),
        out["large_model"].as_str().unwrap_or_default(),
        num(&out["large_accuracy"]),
        num(&out["oracle_escalation"]),
        num(&out["oracle_accuracy"]),
        num(&out["oracle_apgr"]),
        num(&out["random_apgr"]),
    );
    let _ = writeln!(
        t,
        "APGR ceilings (in-sample): telling the tasks apart {}; knowing exactly when the small model is right {}",
        num(&out["bounds"]["task"]),
        num(&out["bounds"]["small_known"]),
    );
}

/// Each ranking's AUROC, APGR and CPTs.
fn signal_rows(t: &mut String, ranked: &[Ranked]) {
    let _ = writeln!(
        t,
        "\n{:<16} {:>6} {:>6} {:>7} {:>7} {:>7}",
        "signal", "AUROC", "APGR", "CPT50", "CPT80", "CPT95"
    );
    for r in ranked {
        let _ = writeln!(
            t,
            "{:<16} {:>6} {:>6} {:>7} {:>7} {:>7}{}",
            r.name,
            fmt(r.report.auroc),
            fmt(r.report.apgr),
            fmt(r.report.cpt[0]),
            fmt(r.report.cpt[1]),
            fmt(r.report.cpt[2]),
            if r.name.starts_with("calibrated") {
                "  (held-out)"
            } else {
                ""
            }
        );
    }
}

/// Per task at the recommended threshold (the `per_task` rows of `out`).
fn task_rows(t: &mut String, out: &Value) {
    let _ = writeln!(t, "\nper task at the recommended threshold:");
    let tasks = out["per_task"].as_array().map_or(&[][..], Vec::as_slice);
    let w = tasks
        .iter()
        .filter_map(|d| d["dataset"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0)
        .max("dataset".len());
    let _ = writeln!(
        t,
        "{:<w$} {:>5} {:>6} {:>6} {:>8} {:>6} {:>7} {:>7}",
        "dataset", "items", "small", "large", "cascade", "esc", "oracle", "saving"
    );
    for d in tasks {
        let _ = writeln!(
            t,
            "{:<w$} {:>5} {:>6} {:>6} {:>8} {:>6} {:>7} {:>7}",
            d["dataset"].as_str().unwrap_or_default(),
            d["items"].as_u64().unwrap_or(0),
            num(&d["small_accuracy"]),
            num(&d["large_accuracy"]),
            num(&d["cascade_accuracy"]),
            num(&d["escalation_rate"]),
            num(&d["oracle_accuracy"]),
            num(&d["savings_vs_all_remote"]),
        );
    }
}

/// The `best` ranking's sweep: escalation, threshold, accuracy and cost.
fn sweep_rows(t: &mut String, out: &Value, best: &str) {
    let _ = writeln!(
        t,
        "\nsweep ({best}): escalated  threshold  accuracy  USD per 1k requests"
    );
    for s in out["sweep"].as_array().into_iter().flatten() {
        let _ = writeln!(
            t,
            "  {:>9} {:>10} {:>9} {:>10.5}",
            num(&s["escalation_rate"]),
            num(&s["threshold"]),
            num(&s["accuracy"]),
            s["usd_per_1k_requests"].as_f64().unwrap_or(0.0)
        );
    }
}

/// The recommended rule, what it reaches and what it saves.
fn recommended_line(t: &mut String, out: &Value, pick: &Pick, best: &str) {
    let rec = &out["recommended"];
    let _ = writeln!(
        t,
        "\nrecommended: signal = {best}, threshold = {:.4}: accuracy {} escalating {}{}; {} USD per 1k requests vs {} all-remote (saving {})",
        rec["threshold"].as_f64().unwrap_or(0.0),
        num(&rec["accuracy"]),
        num(&rec["escalation_rate"]),
        if pick.reached { "" } else { " (the target is out of reach: this is the best accuracy)" },
        num(&rec["usd_per_1k_requests"]),
        num(&rec["all_remote_usd_per_1k_requests"]),
        num(&rec["savings_vs_all_remote"]),
    );
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Accuracy against share escalated: each signal, the oracle, random.
fn plot(
    ranked: &[Ranked],
    oracle: &ScoreReport,
    random: &ScoreReport,
    small: f64,
    large: f64,
    n: usize,
) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 480)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let hi = oracle
            .curve
            .iter()
            .copied()
            .fold(large.max(small), f64::max);
        let lo = ranked
            .iter()
            .flat_map(|r| r.report.curve.iter().copied())
            .fold(small.min(large), f64::min);
        let pad = ((hi - lo) * 0.05).max(0.01);
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption("Accuracy against share escalated", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, (lo - pad)..(hi + pad))
        else {
            return svg_fallback();
        };
        let _ = chart
            .configure_mesh()
            .x_desc("share escalated to the large model")
            .y_desc("accuracy")
            .draw();
        let xs = |c: &[f64]| -> Vec<(f64, f64)> {
            c.iter()
                .enumerate()
                .map(|(k, &a)| (k as f64 / n.max(1) as f64, a))
                .collect()
        };
        let palette = [&BLUE, &GREEN, &MAGENTA, &CYAN, &RED];
        for (i, r) in ranked.iter().enumerate() {
            let color = palette[i % palette.len()];
            let label = format!("{} (APGR {})", r.name, fmt(r.report.apgr));
            if let Ok(s) =
                chart.draw_series(LineSeries::new(xs(&r.report.curve), color.stroke_width(2)))
            {
                s.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
        if let Ok(s) = chart.draw_series(LineSeries::new(xs(&oracle.curve), BLACK.stroke_width(1)))
        {
            s.label(format!("oracle (APGR {})", fmt(oracle.apgr)))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        }
        if let Ok(s) = chart.draw_series(DashedLineSeries::new(
            xs(&random.curve),
            4,
            4,
            BLACK.stroke_width(1),
        )) {
            s.label("random (APGR 0.5)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        }
        let _ = chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw();
        let _ = root.present();
    }
    svg
}

fn svg_fallback() -> String {
    "<svg xmlns=\"http://www.w3.org/2000/svg\"/>".into()
}

/// Sets `[cascade] signal`, `threshold` (and `[cascade.calibrated]`) in the TOML file at
/// `path`, keeping everything else in it, comments included.
fn write_config(
    path: &Path,
    signal: &str,
    threshold: f64,
    model: Option<&CalibratedModel>,
    probe: Option<&Path>,
    structured: Option<(&str, f64)>,
) -> Result<(), Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Failure::Runtime(format!("config {}: {e}", path.display()))),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| Failure::Runtime(format!("config {}: {e}", path.display())))?;
    let cascade = doc
        .entry("cascade")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_mut()
        .ok_or_else(|| {
            Failure::Runtime(format!("config {}: cascade is not a table", path.display()))
        })?;
    cascade["signal"] = toml_edit::value(signal);
    cascade["threshold"] = toml_edit::value((threshold * 1e6).round() / 1e6);
    cascade.remove("calibrated");
    cascade.remove("probe");
    if let Some((signal, threshold)) = structured {
        cascade["structured_signal"] = toml_edit::value(signal);
        cascade["structured_threshold"] = toml_edit::value((threshold * 1e6).round() / 1e6);
    }
    if let Some(p) = probe {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        cascade["probe"] = toml_edit::value(abs.to_string_lossy().as_ref());
    }
    if let Some(m) = model {
        let mut t = toml_edit::Table::new();
        let arr = |v: &[f64]| {
            let mut a = toml_edit::Array::new();
            for x in v {
                a.push((x * 1e6).round() / 1e6);
            }
            toml_edit::value(a)
        };
        let mut names = toml_edit::Array::new();
        for f in &m.features {
            names.push(f.as_str());
        }
        t["features"] = toml_edit::value(names);
        t["mean"] = arr(&m.mean);
        t["scale"] = arr(&m.scale);
        t["weights"] = arr(&m.weights);
        t["bias"] = toml_edit::value((m.bias * 1e6).round() / 1e6);
        if !m.large_weights.is_empty() {
            t["large_weights"] = arr(&m.large_weights);
            t["large_bias"] = toml_edit::value((m.large_bias * 1e6).round() / 1e6);
        }
        t["fitted_on"] = toml_edit::value(m.fitted_on.as_str());
        cascade.insert("calibrated", toml_edit::Item::Table(t));
    }
    // Check it loads before replacing the file.
    let new = doc.to_string();
    let parsed: Config = toml::from_str(&new)
        .map_err(|e| Failure::Runtime(format!("config {} would not load: {e}", path.display())))?;
    edgecascade::policy::Cascade::new(&parsed.cascade)
        .map_err(|e| Failure::Runtime(format!("config {} would not load: {e}", path.display())))?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, new)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::Runtime(format!("config {}: {e}", path.display())))?;
    Ok(())
}
