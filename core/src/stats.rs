//! Rank statistics shared by the calibration fit and `eval`.

/// Item indices from the lowest score to the highest (ties in index order), NaN first.
pub fn ascending(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => x.total_cmp(&y).then(a.cmp(&b)),
        }
    });
    idx
}

/// AUROC of `scores` for `labels` (true = positive): the probability that a random positive
/// scores above a random negative, ties counting half. `None` without both classes.
pub fn auroc(labels: &[bool], scores: &[f64]) -> Option<f64> {
    assert_eq!(labels.len(), scores.len());
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    // Average ranks (1-based) over ties.
    let order = ascending(scores);
    let mut rank = vec![0.0; scores.len()];
    let mut s = 0;
    while s < order.len() {
        let mut e = s + 1;
        while e < order.len() && scores[order[e]] == scores[order[s]] {
            e += 1;
        }
        let r = (s + e + 1) as f64 / 2.0;
        for &i in &order[s..e] {
            rank[i] = r;
        }
        s = e;
    }
    let sum: f64 = (0..labels.len())
        .filter(|&i| labels[i])
        .map(|i| rank[i])
        .sum();
    let u = sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}
