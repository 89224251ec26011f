//! Cascade metrics over per-item outcomes and a confidence score (higher = surer that the small
//! model is right; the cascade escalates the lowest scores first).
//!
//! - The accuracy curve: acc(k/N) when the k lowest-scored items of N are escalated. Tied scores
//!   cannot be split by any threshold, so within a run of ties the curve is the expectation over
//!   which of them go (a straight line across the run). A constant score is therefore exactly
//!   random escalation.
//! - PGR(x) = (acc(x) - small) / (large - small), unclipped.
//! - APGR: the trapezoid area under PGR over x = 0, 1/N, ..., 1 (RouteLLM's metric).
//! - CPT(p): the smallest share escalated at which PGR reaches p.
//! - AUROC of the score for "the small model is right" (Mann-Whitney, ties count half).

// Math reads best with math names; ties are exact float equality on purpose.
#![allow(clippy::many_single_char_names, clippy::float_cmp)]

pub use crate::stats::{ascending, auroc};

/// What each tier got right on one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The small (local) model was right.
    pub small: bool,
    /// The large (remote) model was right.
    pub large: bool,
}

/// Accuracy of the small and large models alone.
pub fn accuracies(o: &[Outcome]) -> (f64, f64) {
    let n = o.len().max(1) as f64;
    (
        o.iter().filter(|x| x.small).count() as f64 / n,
        o.iter().filter(|x| x.large).count() as f64 / n,
    )
}

/// acc(k/N) for k = 0..=N, escalating the lowest scores first, averaged across ties.
pub fn curve(o: &[Outcome], scores: &[f64]) -> Vec<f64> {
    assert_eq!(o.len(), scores.len());
    let n = o.len();
    if n == 0 {
        return vec![0.0];
    }
    let order = ascending(scores);
    let gain = |i: usize| f64::from(u8::from(o[i].large)) - f64::from(u8::from(o[i].small));
    let (small, _) = accuracies(o);
    let mut out = Vec::with_capacity(n + 1);
    let mut correct = small * n as f64;
    out.push(correct / n as f64);
    let mut s = 0;
    while s < n {
        let v = scores[order[s]];
        let mut e = s + 1;
        while e < n && (scores[order[e]] == v || (v.is_nan() && scores[order[e]].is_nan())) {
            e += 1;
        }
        let g: f64 = order[s..e].iter().map(|&i| gain(i)).sum();
        let m = (e - s) as f64;
        for j in 1..=(e - s) {
            out.push((correct + g * j as f64 / m) / n as f64);
        }
        correct += g;
        s = e;
    }
    out
}

/// PGR at each point of `curve`; `None` when both models score the same.
pub fn pgr(curve: &[f64], small: f64, large: f64) -> Option<Vec<f64>> {
    let gap = large - small;
    (gap.abs() > 1e-12).then(|| curve.iter().map(|a| (a - small) / gap).collect())
}

/// APGR: the trapezoid area under unclipped PGR over x = 0, 1/N, ..., 1.
pub fn apgr(curve: &[f64], small: f64, large: f64) -> Option<f64> {
    let p = pgr(curve, small, large)?;
    let n = (p.len() - 1).max(1) as f64;
    Some(p.windows(2).map(|w| f64::midpoint(w[0], w[1])).sum::<f64>() / n)
}

/// CPT(target): the smallest share escalated at which PGR reaches `target` (e.g. 0.8).
pub fn cpt(curve: &[f64], small: f64, large: f64, target: f64) -> Option<f64> {
    let p = pgr(curve, small, large)?;
    let n = (p.len() - 1).max(1) as f64;
    p.iter()
        .position(|&v| v >= target - 1e-12)
        .map(|k| k as f64 / n)
}

/// The oracle's ranking: items the large model fixes first, those it breaks last.
pub fn oracle_scores(o: &[Outcome]) -> Vec<f64> {
    o.iter()
        .map(|x| match (x.small, x.large) {
            (false, true) => 0.0,
            (true, false) => 2.0,
            _ => 1.0,
        })
        .collect()
}

/// The oracle bound: the share it escalates (exactly the items the large model fixes) and the
/// accuracy it reaches.
pub fn oracle(o: &[Outcome]) -> (f64, f64) {
    let n = o.len().max(1) as f64;
    (
        o.iter().filter(|x| !x.small && x.large).count() as f64 / n,
        o.iter().filter(|x| x.small || x.large).count() as f64 / n,
    )
}

/// APGR ceilings for routers that know less than the oracle, computed in-sample over `groups`
/// (each item's task index). They say how far better routing can go with a given small model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Ranking by each task's small-minus-large accuracy: the best a router that only tells
    /// the tasks apart can reach.
    pub task: Option<f64>,
    /// Knowing exactly which answers of the small model are right, plus each task's large
    /// accuracy: the best any router that reads the small model's output (however well) can
    /// reach without knowing per item whether the large model will be right.
    pub small_known: Option<f64>,
}

/// The [`Bounds`] of `o`, items grouped by task in `groups`.
pub fn bounds(o: &[Outcome], groups: &[usize]) -> Bounds {
    assert_eq!(o.len(), groups.len());
    let (small, large) = accuracies(o);
    let tasks = groups.iter().max().map_or(0, |g| g + 1);
    let mut rates = vec![(0.0, 0.0, 0usize); tasks];
    for (x, &g) in o.iter().zip(groups) {
        rates[g].0 += f64::from(u8::from(x.small));
        rates[g].1 += f64::from(u8::from(x.large));
        rates[g].2 += 1;
    }
    let rate = |g: usize| {
        let (s, l, n) = rates[g];
        let n = n.max(1) as f64;
        (s / n, l / n)
    };
    let task: Vec<f64> = groups.iter().map(|&g| rate(g).0 - rate(g).1).collect();
    let known: Vec<f64> = o
        .iter()
        .zip(groups)
        .map(|(x, &g)| f64::from(u8::from(x.small)) - rate(g).1)
        .collect();
    Bounds {
        task: apgr(&curve(o, &task), small, large),
        small_known: apgr(&curve(o, &known), small, large),
    }
}

/// The threshold that escalates the `k` lowest of `scores` (escalate when score < threshold):
/// the midpoint between the k-th and (k+1)-th lowest. Ties make some k unreachable; the
/// threshold then escalates fewer.
pub fn threshold_for(scores: &[f64], k: usize) -> f64 {
    let mut s: Vec<f64> = scores.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    match k {
        0 => s.first().map_or(0.0, |v| v - 1e-9_f64.max(v.abs() * 1e-9)),
        k if k >= s.len() => s.last().map_or(0.0, |v| v + 1e-9_f64.max(v.abs() * 1e-9)),
        k => f64::midpoint(s[k - 1], s[k]),
    }
}

/// Everything `eval` reports about one score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    /// AUROC for "the small model is right".
    pub auroc: Option<f64>,
    /// APGR.
    pub apgr: Option<f64>,
    /// CPT(50%), CPT(80%), CPT(95%).
    pub cpt: [Option<f64>; 3],
    /// acc(k/N), k = 0..=N.
    pub curve: Vec<f64>,
}

/// Scores one ranking.
pub fn report(o: &[Outcome], scores: &[f64]) -> ScoreReport {
    let (small, large) = accuracies(o);
    let c = curve(o, scores);
    let labels: Vec<bool> = o.iter().map(|x| x.small).collect();
    ScoreReport {
        auroc: auroc(&labels, scores),
        apgr: apgr(&c, small, large),
        cpt: [0.5, 0.8, 0.95].map(|t| cpt(&c, small, large, t)),
        curve: c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(small: bool, large: bool) -> Outcome {
        Outcome { small, large }
    }

    #[test]
    fn bounds_by_hand() {
        // Task 0: large fixes both. Task 1: small right once, large never.
        let items = [
            o(false, true),
            o(false, true),
            o(true, false),
            o(false, false),
        ];
        let b = bounds(&items, &[0, 0, 1, 1]);
        // Tasks told apart: escalate task 0 (+1, +1), then task 1's tie (-1 and 0, averaged):
        // acc 0.25, 0.5, 0.75, 0.625, 0.5; PGR 0, 1, 2, 1.5, 1; area 1.25.
        assert!((b.task.unwrap() - 1.25).abs() < 1e-12, "{b:?}");
        // Small correctness known: task 1's wrong answer goes before its right one:
        // PGR 0, 1, 2, 2, 1; area 1.375.
        assert!((b.small_known.unwrap() - 1.375).abs() < 1e-12, "{b:?}");
        // One task only: telling tasks apart is random escalation.
        let one = bounds(&items, &[0; 4]);
        assert!((one.task.unwrap() - 0.5).abs() < 1e-12, "{one:?}");
    }

    /// Four items by hand: small right on 1 of 4, large on 3 of 4.
    fn fixture() -> Vec<Outcome> {
        vec![
            o(false, true),
            o(true, true),
            o(false, false),
            o(false, true),
        ]
    }

    #[test]
    fn curve_apgr_and_cpt_by_hand() {
        let items = fixture();
        assert_eq!(accuracies(&items), (0.25, 0.75));
        // Scores rank item 3, then 0, 2, 1: both fixable items go first.
        let scores = [0.2, 0.9, 0.5, 0.1];
        let c = curve(&items, &scores);
        assert_eq!(c, vec![0.25, 0.5, 0.75, 0.75, 0.75]);
        // PGR = 0, 0.5, 1, 1, 1; trapezoids of width 1/4: (0.25 + 0.75 + 1 + 1) / 4 = 0.75.
        assert!((apgr(&c, 0.25, 0.75).unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(cpt(&c, 0.25, 0.75, 0.5), Some(0.25));
        assert_eq!(cpt(&c, 0.25, 0.75, 0.8), Some(0.5));
        // Unclipped: escalating an item only the small model gets right drives PGR below 0.
        let items = [o(true, false), o(false, true), o(false, true)];
        let c = curve(&items, &[0.1, 0.5, 0.9]);
        let third = 1.0 / 3.0;
        assert!(c
            .iter()
            .zip([third, 0.0, third, 2.0 * third])
            .all(|(a, b)| (a - b).abs() < 1e-12));
        // PGR = 0, -1, 0, 1: area = (-0.5 - 0.5 + 0.5) / 3 = -1/6.
        assert!((apgr(&c, third, 2.0 * third).unwrap() + 1.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn ties_average_and_constant_scores_are_random() {
        let items = fixture();
        let c = curve(&items, &[1.0; 4]);
        // Gain 2 spread over 4 items: a straight line from 0.25 to 0.75.
        assert_eq!(c, vec![0.25, 0.375, 0.5, 0.625, 0.75]);
        assert!((apgr(&c, 0.25, 0.75).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(pgr(&c, 0.5, 0.5), None);
    }

    #[test]
    fn oracle_bound() {
        let items = fixture();
        assert_eq!(oracle(&items), (0.5, 0.75));
        let r = report(&items, &oracle_scores(&items));
        // Escalates both fixable items first: PGR 0, 0.5, 1, 1, 1 -> 0.75.
        assert!((r.apgr.unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(r.cpt, [Some(0.25), Some(0.5), Some(0.5)]);
    }

    #[test]
    fn auroc_by_hand() {
        // Positives score 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 pairs ordered right.
        assert_eq!(
            auroc(&[true, true, false, false], &[0.9, 0.4, 0.5, 0.1]),
            Some(0.75)
        );
        // A tie counts half.
        assert_eq!(auroc(&[true, false], &[0.5, 0.5]), Some(0.5));
        assert_eq!(auroc(&[true, true], &[0.5, 0.1]), None);
        assert_eq!(auroc(&[true, false], &[0.9, 0.1]), Some(1.0));
    }

    #[test]
    fn thresholds_split_sorted_scores() {
        let s = [0.3, 0.1, 0.2];
        assert!((threshold_for(&s, 1) - 0.15).abs() < 1e-12);
        assert!(threshold_for(&s, 0) < 0.1);
        assert!(threshold_for(&s, 3) > 0.3);
    }
}
