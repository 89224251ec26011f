//! Fitting the calibrated model: L2 logistic regression by Newton's method (IRLS with a
//! Cholesky solve), standardisation, and stratified out-of-fold cross-validation. Only
//! `edgecascade eval` fits, so this lives behind the `eval` feature and stays out of the mobile
//! library, which only predicts.

// Linear algebra reads best with math names.
#![allow(clippy::many_single_char_names)]

use super::calibrated::{sigmoid, CalibratedModel, FEATURES, N};

impl CalibratedModel {
    /// Fits an L2-regularised logistic regression (Newton's method) on standardised features.
    /// `l2` is the penalty on the standardised weights (the intercept is not penalised).
    pub fn fit(xs: &[[f64; N]], ys: &[bool], l2: f64) -> Self {
        Self::fit_standardised(xs, ys, None, l2)
    }

    /// Fits P(small right) and P(large right) on the same standardised features, for the
    /// `calibrated_gain` signal.
    pub fn fit_pair(xs: &[[f64; N]], small: &[bool], large: &[bool], l2: f64) -> Self {
        Self::fit_standardised(xs, small, Some(large), l2)
    }

    fn fit_standardised(xs: &[[f64; N]], ys: &[bool], large: Option<&[bool]>, l2: f64) -> Self {
        let (mean, scale) = standardisation(xs);
        let z = standardise(xs, &mean, &scale);
        let (weights, bias) = fit_weights(&z, ys, l2);
        let (large_weights, large_bias) =
            large.map_or_else(|| (Vec::new(), 0.0), |l| fit_weights(&z, l, l2));
        Self {
            features: FEATURES.iter().map(|s| (*s).to_owned()).collect(),
            mean: mean.to_vec(),
            scale: scale.to_vec(),
            weights,
            bias,
            large_weights,
            large_bias,
            fitted_on: String::new(),
        }
    }
}

fn standardisation(xs: &[[f64; N]]) -> ([f64; N], [f64; N]) {
    let n = xs.len().max(1) as f64;
    let mut mean = [0.0; N];
    let mut var = [0.0; N];
    for x in xs {
        for i in 0..N {
            mean[i] += x[i] / n;
        }
    }
    for x in xs {
        for i in 0..N {
            var[i] += (x[i] - mean[i]).powi(2) / n;
        }
    }
    // A constant feature gets scale 1 (and weight 0 under the penalty).
    (mean, var.map(|v| if v > 1e-12 { v.sqrt() } else { 1.0 }))
}

fn standardise(xs: &[[f64; N]], mean: &[f64; N], scale: &[f64; N]) -> Vec<[f64; N]> {
    xs.iter()
        .map(|x| std::array::from_fn(|i| (x[i] - mean[i]) / scale[i]))
        .collect()
}

/// Newton's method on the penalised log-loss: the weights and the bias. Rows are standardised
/// features, all of one length.
pub(crate) fn fit_weights<R: AsRef<[f64]>>(z: &[R], ys: &[bool], l2: f64) -> (Vec<f64>, f64) {
    assert_eq!(z.len(), ys.len());
    let n = z.first().map_or(0, |r| r.as_ref().len());
    // Parameters: n weights, then the bias.
    let d = n + 1;
    let mut w = vec![0.0; d];
    let mut row = vec![0.0; d];
    for _ in 0..50 {
        let mut g = vec![0.0; d];
        let mut h = vec![0.0; d * d];
        for (zi, &y) in z.iter().zip(ys) {
            row[..n].copy_from_slice(zi.as_ref());
            row[n] = 1.0;
            let p = sigmoid(row.iter().zip(&w).map(|(a, b)| a * b).sum());
            let r = p - f64::from(u8::from(y));
            let s = (p * (1.0 - p)).max(1e-9);
            for a in 0..d {
                g[a] += r * row[a];
                let sa = s * row[a];
                for b in 0..=a {
                    h[a * d + b] += sa * row[b];
                }
            }
        }
        for a in 0..d {
            for b in 0..a {
                h[b * d + a] = h[a * d + b];
            }
        }
        for a in 0..n {
            g[a] += l2 * w[a];
            h[a * d + a] += l2;
        }
        h[n * d + n] += 1e-9;
        let Some(step) = solve(&h, &g, d) else { break };
        let mut change = 0.0f64;
        for a in 0..d {
            w[a] -= step[a];
            change = change.max(step[a].abs());
        }
        if change < 1e-8 {
            break;
        }
    }
    let bias = w[n];
    w.truncate(n);
    (w, bias)
}

/// Solves the symmetric positive-definite system `a x = b` (Cholesky). `None` if singular.
fn solve(a: &[f64], b: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = a[i * d + j] - (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>();
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    let mut y = vec![0.0; d];
    for i in 0..d {
        y[i] = (b[i] - (0..i).map(|k| l[i * d + k] * y[k]).sum::<f64>()) / l[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        x[i] = (y[i] - (i + 1..d).map(|k| l[k * d + i] * x[k]).sum::<f64>()) / l[i * d + i];
    }
    Some(x)
}

/// Out-of-fold predictions: each item is scored by a model fitted without its fold. Folds are a
/// seeded split, stratified by `groups` (e.g. the dataset) so every fold sees every task.
pub fn cross_validate(
    xs: &[[f64; N]],
    ys: &[bool],
    groups: &[usize],
    folds: usize,
    seed: u64,
    l2: f64,
) -> Vec<f64> {
    out_of_fold(
        groups,
        folds,
        seed,
        |train| CalibratedModel::fit(&pick(xs, train), &pick(ys, train), l2),
        |m, i| m.predict(&xs[i]),
    )
}

/// Out-of-fold `calibrated_gain` scores: P(small right) - P(large right), each item scored by a
/// pair fitted without its fold.
pub fn cross_validate_gain(
    xs: &[[f64; N]],
    small: &[bool],
    large: &[bool],
    groups: &[usize],
    folds: usize,
    seed: u64,
    l2: f64,
) -> Vec<f64> {
    out_of_fold(
        groups,
        folds,
        seed,
        |train| {
            CalibratedModel::fit_pair(
                &pick(xs, train),
                &pick(small, train),
                &pick(large, train),
                l2,
            )
        },
        |m, i| m.gain_score(&xs[i]).unwrap_or(f64::NAN),
    )
}

/// The elements of `v` at `idx`.
pub(crate) fn pick<T: Copy>(v: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i]).collect()
}

/// Fits on every fold but one and scores the held-out fold, for each fold.
pub(crate) fn out_of_fold<M>(
    groups: &[usize],
    folds: usize,
    seed: u64,
    fit: impl Fn(&[usize]) -> M,
    score: impl Fn(&M, usize) -> f64,
) -> Vec<f64> {
    let fold = assign_folds(groups, folds, seed);
    let mut out = vec![f64::NAN; groups.len()];
    for f in 0..folds {
        let train: Vec<usize> = (0..groups.len()).filter(|&i| fold[i] != f).collect();
        if train.is_empty() {
            continue;
        }
        let m = fit(&train);
        for i in (0..groups.len()).filter(|&i| fold[i] == f) {
            out[i] = score(&m, i);
        }
    }
    out
}

/// A fold per item: within each group, items are dealt round-robin in a seeded order.
pub fn assign_folds(groups: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..groups.len()).collect();
    // A small deterministic mix (splitmix64) for the seeded order.
    let mix = |i: usize| {
        let mut z = (i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    idx.sort_by_key(|&i| (groups[i], mix(i)));
    let mut fold = vec![0; groups.len()];
    let mut k = 0;
    let mut last = None;
    for &i in &idx {
        if last != Some(groups[i]) {
            last = Some(groups[i]);
            k = 0;
        }
        fold[i] = k % folds;
        k += 1;
    }
    fold
}
