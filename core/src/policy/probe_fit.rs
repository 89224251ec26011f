//! Fitting the hidden-state probe (`edgecascade eval` only): principal components of the
//! hidden states, then L2 logistic regression on the standardised scalar features and
//! component scores. The number of components and the penalty are chosen per head by an inner
//! cross-validation on the training items alone (log-loss); standardisation and components are
//! computed from the training items alone. The fitted components are folded back into one
//! weight vector over the hidden state (see [`Head`]).

// Linear algebra reads best with math names.
#![allow(clippy::many_single_char_names)]

use nalgebra::DMatrix;

use super::probe::{Head, HeadPair};
use crate::signal::fit::{assign_folds, fit_weights};

/// Principal components kept (0: the scalar features alone).
pub const COMPONENTS: [usize; 5] = [0, 8, 16, 32, 64];
/// L2 penalties on the standardised weights.
pub const PENALTIES: [f64; 4] = [0.1, 1.0, 10.0, 100.0];

/// What the inner cross-validation chose for one head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// Components kept.
    pub components: usize,
    /// The L2 penalty.
    pub l2: f64,
    /// Its inner held-out log-loss per item.
    pub log_loss: f64,
}

/// One stage's inputs, per item: scalar features and the hidden state.
#[derive(Debug, Clone, Copy)]
pub struct Stage<'a> {
    /// Scalar features (one length).
    pub x: &'a [Vec<f64>],
    /// Hidden states (one length).
    pub h: &'a [Vec<f32>],
}

/// Principal directions of the hidden states of some items.
struct Pca {
    mean: Vec<f64>,
    /// Unit vectors, largest variance first.
    dirs: Vec<Vec<f64>>,
}

impl Pca {
    fn fit(h: &[Vec<f32>], idx: &[usize], k: usize) -> Self {
        let dh = h.first().map_or(0, Vec::len);
        let n = idx.len();
        let mut mean = vec![0.0; dh];
        for &i in idx {
            for (m, &v) in mean.iter_mut().zip(&h[i]) {
                *m += f64::from(v) / n.max(1) as f64;
            }
        }
        let k = k.min(n.saturating_sub(1)).min(dh);
        if k == 0 {
            return Self {
                mean,
                dirs: Vec::new(),
            };
        }
        let x = DMatrix::from_fn(n, dh, |r, c| f64::from(h[idx[r]][c]) - mean[c]);
        let dirs = if n <= dh {
            // Through the n x n Gram matrix: v = X^T u / |X^T u|.
            let eig = (&x * x.transpose()).symmetric_eigen();
            top(eig.eigenvalues.as_slice(), k)
                .into_iter()
                .map(|j| {
                    let v = x.transpose() * eig.eigenvectors.column(j);
                    let norm = v.norm().max(1e-12);
                    v.iter().map(|a| a / norm).collect()
                })
                .collect()
        } else {
            let eig = (x.transpose() * &x).symmetric_eigen();
            top(eig.eigenvalues.as_slice(), k)
                .into_iter()
                .map(|j| eig.eigenvectors.column(j).iter().copied().collect())
                .collect()
        };
        Self { mean, dirs }
    }

    /// The first `k` component scores of `v`.
    fn scores(&self, v: &[f32], k: usize) -> Vec<f64> {
        self.dirs[..k]
            .iter()
            .map(|d| {
                d.iter()
                    .zip(v)
                    .zip(&self.mean)
                    .map(|((a, &b), m)| a * (f64::from(b) - m))
                    .sum()
            })
            .collect()
    }
}

/// Indices of the `k` largest values, largest first.
fn top(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx
}

/// Rows of scalar features and component scores, for the items `idx`.
fn design(stage: Stage<'_>, pca: &Pca, idx: &[usize], k: usize) -> Vec<Vec<f64>> {
    idx.iter()
        .map(|&i| {
            let mut r = stage.x[i].clone();
            r.extend(pca.scores(&stage.h[i], k));
            r
        })
        .collect()
}

fn standardisation(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let d = rows.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0; d];
    let mut var = vec![0.0; d];
    for r in rows {
        for j in 0..d {
            mean[j] += r[j] / n;
        }
    }
    for r in rows {
        for j in 0..d {
            var[j] += (r[j] - mean[j]).powi(2) / n;
        }
    }
    let scale = var
        .into_iter()
        .map(|v| if v > 1e-12 { v.sqrt() } else { 1.0 })
        .collect();
    (mean, scale)
}

fn standardise(rows: &[Vec<f64>], mean: &[f64], scale: &[f64]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(mean.iter().zip(scale))
                .map(|(v, (m, s))| (v - m) / s)
                .collect()
        })
        .collect()
}

/// Fits one head on the design `rows` (scalars then `k` scores) and folds the component
/// weights back onto the hidden state.
fn fit_head(rows: &[Vec<f64>], ys: &[bool], l2: f64, m: usize, k: usize, pca: &Pca) -> Head {
    let (mean, scale) = standardisation(rows);
    let z = standardise(rows, &mean, &scale);
    let (w, mut bias) = fit_weights(&z, ys, l2);
    let dh = pca.mean.len();
    let mut u = vec![0.0f64; dh];
    for j in 0..k {
        let c = w[m + j] / scale[m + j];
        // The scores' training mean (about 0) moves into the intercept.
        bias -= c * mean[m + j];
        for (a, d) in u.iter_mut().zip(&pca.dirs[j]) {
            *a += c * d;
        }
    }
    Head {
        mean: mean[..m].to_vec(),
        scale: scale[..m].to_vec(),
        weights: w[..m].to_vec(),
        hidden_mean: pca.mean.iter().map(|&v| v as f32).collect(),
        hidden_weights: u.into_iter().map(|v| v as f32).collect(),
        bias,
    }
}

fn log_loss(p: f64, y: bool) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    -(if y { p.ln() } else { (1.0 - p).ln() })
}

/// Chooses components and penalty for both heads by cross-validation within `train` only.
fn choose(
    stage: Stage<'_>,
    labels: [&[bool]; 2],
    groups: &[usize],
    train: &[usize],
    folds: usize,
    seed: u64,
) -> [Choice; 2] {
    let kmax = *COMPONENTS.iter().max().unwrap_or(&0);
    let m = stage.x.first().map_or(0, Vec::len);
    let inner = assign_folds(
        &train.iter().map(|&i| groups[i]).collect::<Vec<_>>(),
        folds,
        seed.wrapping_add(1),
    );
    let grid: Vec<(usize, f64)> = COMPONENTS
        .iter()
        .flat_map(|&k| PENALTIES.iter().map(move |&l| (k, l)))
        .collect();
    let mut loss = vec![[0.0f64; 2]; grid.len()];
    for f in 0..folds {
        let tr: Vec<usize> = (0..train.len())
            .filter(|&j| inner[j] != f)
            .map(|j| train[j])
            .collect();
        let va: Vec<usize> = (0..train.len())
            .filter(|&j| inner[j] == f)
            .map(|j| train[j])
            .collect();
        if tr.is_empty() || va.is_empty() {
            continue;
        }
        let pca = Pca::fit(stage.h, &tr, kmax);
        let k_avail = pca.dirs.len();
        let rows_tr = design(stage, &pca, &tr, k_avail);
        let rows_va = design(stage, &pca, &va, k_avail);
        for (g, &(k, l2)) in grid.iter().enumerate() {
            let k = k.min(k_avail);
            let cut = |rows: &[Vec<f64>]| -> Vec<Vec<f64>> {
                rows.iter().map(|r| r[..m + k].to_vec()).collect()
            };
            let (a, b) = (cut(&rows_tr), cut(&rows_va));
            for (h, ys) in labels.iter().enumerate() {
                let y_tr: Vec<bool> = tr.iter().map(|&i| ys[i]).collect();
                let (mean, scale) = standardisation(&a);
                let z = standardise(&a, &mean, &scale);
                let (w, bias) = fit_weights(&z, &y_tr, l2);
                for (r, &i) in standardise(&b, &mean, &scale).iter().zip(&va) {
                    let p = super::calibrated::sigmoid(
                        bias + r.iter().zip(&w).map(|(x, w)| x * w).sum::<f64>(),
                    );
                    loss[g][h] += log_loss(p, ys[i]);
                }
            }
        }
    }
    let n = train.len().max(1) as f64;
    std::array::from_fn(|h| {
        let best = (0..grid.len())
            .min_by(|&a, &b| loss[a][h].total_cmp(&loss[b][h]))
            .unwrap_or(0);
        Choice {
            components: grid[best].0,
            l2: grid[best].1,
            log_loss: loss[best][h] / n,
        }
    })
}

/// Fits P(small right) and P(large right) on the items `train`, choosing each head's
/// components and penalty by `folds`-fold cross-validation inside `train`.
pub fn fit_pair(
    stage: Stage<'_>,
    small: &[bool],
    large: &[bool],
    groups: &[usize],
    train: &[usize],
    folds: usize,
    seed: u64,
) -> (HeadPair, [Choice; 2]) {
    let choice = choose(stage, [small, large], groups, train, folds, seed);
    let m = stage.x.first().map_or(0, Vec::len);
    let pca = Pca::fit(
        stage.h,
        train,
        choice[0].components.max(choice[1].components),
    );
    let head = |c: &Choice, ys: &[bool]| {
        let k = c.components.min(pca.dirs.len());
        let rows = design(stage, &pca, train, k);
        let y: Vec<bool> = train.iter().map(|&i| ys[i]).collect();
        fit_head(&rows, &y, c.l2, m, k, &pca)
    };
    (
        HeadPair {
            small: head(&choice[0], small),
            large: head(&choice[1], large),
        },
        choice,
    )
}

/// Held-out P(small right) and P(large right) per item: each outer fold is scored by a pair
/// fitted (components, penalty, standardisation, weights) without it.
pub fn cross_validate_pair(
    stage: Stage<'_>,
    small: &[bool],
    large: &[bool],
    groups: &[usize],
    folds: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    cross_validate_pair_on_share(stage, small, large, groups, folds, seed, (1, 1))
}

/// [`cross_validate_pair`] with each outer fold's model fitted on a share `kept / parts` of
/// its training items (stratified by group, the same items at every share for a given seed,
/// and a larger share holds every item of a smaller one), scored on the whole test fold: the
/// learning curve, which says whether more items would help.
pub fn cross_validate_pair_on_share(
    stage: Stage<'_>,
    small: &[bool],
    large: &[bool],
    groups: &[usize],
    folds: usize,
    seed: u64,
    (kept, parts): (usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let n = groups.len();
    let fold = assign_folds(groups, folds, seed);
    let part = assign_folds(groups, parts.max(1), seed.wrapping_add(7));
    let (mut ps, mut pl) = (vec![f64::NAN; n], vec![f64::NAN; n]);
    for f in 0..folds {
        let train: Vec<usize> = (0..n).filter(|&i| fold[i] != f && part[i] < kept).collect();
        if train.is_empty() {
            continue;
        }
        let (pair, _) = fit_pair(stage, small, large, groups, &train, folds, seed);
        for i in (0..n).filter(|&i| fold[i] == f) {
            ps[i] = pair.small.predict(&stage.x[i], &stage.h[i]);
            pl[i] = pair.large.predict(&stage.x[i], &stage.h[i]);
        }
    }
    (ps, pl)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator (xorshift) of uniform and roughly normal numbers.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
        }
    }

    /// Scalars, hidden states, small right, large right.
    type Planted = (Vec<Vec<f64>>, Vec<Vec<f32>>, Vec<bool>, Vec<bool>);

    /// `n` items with `dh`-wide hidden states made of 6 strong latent factors plus noise;
    /// small is right when factor 0 is high, large when factor 1 is; one uninformative scalar.
    fn planted(n: usize, dh: usize, seed: u64) -> Planted {
        let mut r = Rng(seed);
        let loadings: Vec<Vec<f64>> = (0..6)
            .map(|_| (0..dh).map(|_| r.normal()).collect())
            .collect();
        let (mut x, mut h, mut small, mut large) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let z: Vec<f64> = (0..6).map(|_| r.normal()).collect();
            let v: Vec<f32> = (0..dh)
                .map(|c| {
                    ((0..6).map(|f| z[f] * loadings[f][c]).sum::<f64>() + 2.0 * r.normal()) as f32
                })
                .collect();
            let ps = 1.0 / (1.0 + (-3.0 * z[0]).exp());
            let pl = 1.0 / (1.0 + (-3.0 * z[1] - 1.0).exp());
            small.push(r.uniform() < ps);
            large.push(r.uniform() < pl);
            x.push(vec![r.normal()]);
            h.push(v);
        }
        (x, h, small, large)
    }

    #[test]
    fn recovers_a_planted_signal_in_high_dimension_held_out() {
        // 300 items, 400 hidden dimensions: more dimensions than training items.
        let (x, h, small, large) = planted(300, 400, 11);
        let groups = vec![0; 300];
        let stage = Stage { x: &x, h: &h };
        let (ps, pl) = cross_validate_pair(stage, &small, &large, &groups, 5, 3);
        let auc_s = crate::stats::auroc(&small, &ps).unwrap();
        let auc_l = crate::stats::auroc(&large, &pl).unwrap();
        assert!(auc_s > 0.8, "held-out AUROC of P(small right) {auc_s}");
        assert!(auc_l > 0.8, "held-out AUROC of P(large right) {auc_l}");
        // The inner cross-validation keeps components: the scalar alone knows nothing.
        let all: Vec<usize> = (0..300).collect();
        let (pair, choice) = fit_pair(stage, &small, &large, &groups, &all, 5, 3);
        assert!(
            choice[0].components > 0 && choice[1].components > 0,
            "{choice:?}"
        );
        // Folding the components back gives the same prediction as the component model.
        assert_eq!(pair.small.hidden_weights.len(), 400);
        let p = pair.small.predict(&x[0], &h[0]);
        assert!(p > 0.0 && p < 1.0);
    }

    #[test]
    fn a_learning_curve_fits_on_nested_shares_and_scores_the_whole_test_fold() {
        let (x, h, small, large) = planted(300, 100, 17);
        let groups: Vec<usize> = (0..300).map(|i| i % 2).collect();
        let stage = Stage { x: &x, h: &h };
        let full = cross_validate_pair(stage, &small, &large, &groups, 5, 4);
        let same = cross_validate_pair_on_share(stage, &small, &large, &groups, 5, 4, (4, 4));
        assert_eq!(full, same, "the whole share is the plain cross-validation");
        let quarter = cross_validate_pair_on_share(stage, &small, &large, &groups, 5, 4, (1, 4));
        // Every item is still scored held out, by a model fitted on fewer items, which knows
        // less: the planted signal is recovered worse from a quarter of the items.
        assert!(quarter.0.iter().chain(&quarter.1).all(|p| p.is_finite()));
        let auc = |y: &[bool], p: &[f64]| crate::stats::auroc(y, p).unwrap();
        assert!(
            auc(&small, &quarter.0) < auc(&small, &full.0),
            "a quarter {} against all {}",
            auc(&small, &quarter.0),
            auc(&small, &full.0)
        );
        // Shares are nested and stratified: a half holds every item of a quarter, and half
        // of each group.
        let part = assign_folds(&groups, 4, 4u64.wrapping_add(7));
        for g in 0..2 {
            let in_g: Vec<usize> = (0..300).filter(|&i| groups[i] == g).collect();
            let half = in_g.iter().filter(|&&i| part[i] < 2).count();
            assert!(half.abs_diff(in_g.len() / 2) <= 1, "group {g}: {half}");
        }
    }

    #[test]
    fn nested_cross_validation_never_sees_the_test_fold() {
        let (x, h, small, large) = planted(150, 60, 5);
        let groups: Vec<usize> = (0..150).map(|i| i % 3).collect();
        let stage = Stage { x: &x, h: &h };
        let (ps, pl) = cross_validate_pair(stage, &small, &large, &groups, 5, 9);
        // Scramble every label of outer fold 0: its own held-out predictions cannot change
        // (neither the outer fit nor its inner choice of components and penalty saw them),
        // while the other folds' models, which trained on them, do.
        let fold = assign_folds(&groups, 5, 9);
        let flip = |v: &[bool]| -> Vec<bool> {
            v.iter()
                .enumerate()
                .map(|(i, &b)| if fold[i] == 0 { !b } else { b })
                .collect()
        };
        let (ps2, pl2) = cross_validate_pair(stage, &flip(&small), &flip(&large), &groups, 5, 9);
        let mut others_moved = false;
        for i in 0..150 {
            if fold[i] == 0 {
                assert_eq!(
                    ps[i].to_bits(),
                    ps2[i].to_bits(),
                    "item {i} of the test fold"
                );
                assert_eq!(
                    pl[i].to_bits(),
                    pl2[i].to_bits(),
                    "item {i} of the test fold"
                );
            } else {
                others_moved |= (ps[i] - ps2[i]).abs() > 1e-9;
            }
        }
        assert!(
            others_moved,
            "the scrambled labels did reach the other folds' training"
        );
    }
}
