#!/usr/bin/env python3
"""Other kinds of router heads on the probe's own data, held out the same way.

Reads the JSONL that `edgecascade eval --probe-data FILE` writes (per item: task, group,
whether each tier was right, the scalar features before and after generation, both hidden
states) and measures, with 5 outer folds stratified by group and every choice made by an
inner cross-validation on the training folds alone:

  linear-pca   L2 logistic regression on the scalars and the leading principal components
               (what `eval --probe` fits; a check that this script agrees with it)
  linear-full  L2 logistic regression on the scalars and the whole standardised hidden state
  boosting     gradient-boosted trees on the scalars and 32 principal components
  knn          nearest neighbours on whitened principal components and the task
  mlp          a one-hidden-layer network on the scalars and 64 principal components

For each: the held-out AUROC of P(small right) and P(large right), and the APGR and CPT(95%)
of the post-generation rule (escalate where P(small right) - P(large right) is lowest), with
the same curve as `eval`. Needs numpy and scikit-learn (not used by the product or its tests):

    python3 -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install numpy scikit-learn
    /tmp/skvenv/bin/python scripts/probe-heads.py FILE.jsonl [--stage pre|post] [--json]
"""

import argparse
import json
import os
import sys
import warnings

# One BLAS thread: the fits are small, and a spinning BLAS pool on a 2-core machine with
# another process running is 100x slower.
for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(v, "1")

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.compose import ColumnTransformer

warnings.filterwarnings("ignore")


def load(path, stage):
    rows = [json.loads(line) for line in open(path)]
    x = np.array([r[f"{stage}_x"] for r in rows], dtype=float)
    h = np.array([r["prompt_hidden"] for r in rows], dtype=np.float32)
    if stage == "post":
        h = np.hstack([h, np.array([r["answer_hidden"] for r in rows], dtype=np.float32)])
    small = np.array([r["small"] for r in rows], dtype=bool)
    large = np.array([r["large"] for r in rows], dtype=bool)
    groups = np.array([r["group"] for r in rows])
    return x, h, small, large, groups


def curve(small, large, scores):
    """acc(k/N), escalating the lowest scores first (ties broken by index; eval averages them)."""
    order = np.argsort(scores, kind="stable")
    gain = large.astype(float) - small.astype(float)
    return np.concatenate([[small.mean()], small.mean() + np.cumsum(gain[order]) / len(small)])


def apgr_cpt(small, large, scores, target=0.95):
    c = curve(small, large, scores)
    s, l = small.mean(), large.mean()
    p = (c - s) / (l - s)
    apgr = float(np.mean((p[1:] + p[:-1]) / 2))
    hit = np.nonzero(p >= target - 1e-12)[0]
    return apgr, float(hit[0] / (len(p) - 1)) if len(hit) else None


def models(m, dh, seed):
    """name -> (estimator factory, grid). Columns: m scalars then dh hidden."""
    scal, hid = list(range(m)), list(range(m, m + dh))

    def cols(k, whiten=False):
        return ColumnTransformer([
            ("x", StandardScaler(), scal),
            ("h", Pipeline([("c", StandardScaler(with_std=False)),
                            ("p", PCA(n_components=k, whiten=whiten, random_state=seed))]), hid),
        ])

    return {
        "linear-pca": (
            lambda: Pipeline([("f", cols(8)), ("s", StandardScaler()),
                              ("m", LogisticRegression(max_iter=2000))]),
            {"f__h__p__n_components": [1, 8, 16, 32, 64], "m__C": [0.01, 0.1, 1, 10]},
        ),
        "linear-full": (
            lambda: Pipeline([("s", StandardScaler()), ("m", LogisticRegression(max_iter=3000))]),
            {"m__C": [1e-4, 1e-3, 1e-2, 1e-1]},
        ),
        "boosting": (
            lambda: Pipeline([("f", cols(32)),
                              ("m", HistGradientBoostingClassifier(random_state=seed))]),
            {"m__max_iter": [50, 150], "m__learning_rate": [0.03, 0.1], "m__max_depth": [2, 4]},
        ),
        "knn": (
            lambda: Pipeline([("f", cols(16, whiten=True)),
                              ("m", KNeighborsClassifier(weights="distance"))]),
            {"f__h__p__n_components": [8, 16, 32], "m__n_neighbors": [15, 40, 100]},
        ),
        "mlp": (
            lambda: Pipeline([("f", cols(64)), ("s", StandardScaler()),
                              ("m", MLPClassifier(hidden_layer_sizes=(32,), max_iter=600,
                                                  early_stopping=True, random_state=seed))]),
            {"m__alpha": [0.1, 1.0, 10.0]},
        ),
    }


def held_out(est, grid, z, y, strata, folds, seed):
    p = np.full(len(y), np.nan)
    outer = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for tr, te in outer.split(z, strata):
        inner = StratifiedKFold(folds, shuffle=True, random_state=seed + 1)
        g = GridSearchCV(est(), grid, scoring="neg_log_loss",
                         cv=list(inner.split(z[tr], strata[tr])), n_jobs=1)
        g.fit(z[tr], y[tr])
        p[te] = g.predict_proba(z[te])[:, 1]
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--stage", default="post", choices=["pre", "post"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated head kinds")
    ap.add_argument("--strata", default="labels", choices=["labels", "group"],
                    help="stratify folds by group and both labels (default) or by group alone, as eval does")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    x, h, small, large, groups = load(a.data, a.stage)
    z = np.hstack([x, h])
    # Outer folds stratified by group and both labels, so every fold holds each kind of item.
    strata = groups * 4 + small * 2 + large if a.strata == "labels" else groups
    out = {"data": a.data, "stage": a.stage, "items": len(z), "small": small.mean(),
           "large": large.mean(), "heads": {}}
    truth = apgr_cpt(small, large, small.astype(float) - large.astype(float))
    out["oracle_apgr"] = truth[0]
    for name, (est, grid) in models(x.shape[1], h.shape[1], a.seed).items():
        if a.only and name not in a.only.split(","):
            continue
        ps = held_out(est, grid, z, small, strata, a.folds, a.seed)
        pl = held_out(est, grid, z, large, strata, a.folds, a.seed)
        apgr, cpt95 = apgr_cpt(small, large, ps - pl)
        with_true_large = apgr_cpt(small, large, ps - large)[0]
        r = {"auroc_small": roc_auc_score(small, ps), "auroc_large": roc_auc_score(large, pl),
             "apgr": apgr, "cpt95": cpt95, "apgr_with_true_large_head": with_true_large}
        out["heads"][name] = r
        print(f"{name:<12} AUROC small {r['auroc_small']:.3f} large {r['auroc_large']:.3f}  "
              f"APGR {apgr:.3f}  CPT95 {cpt95}  (true large head: {with_true_large:.3f})",
              file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
