"""ConVIRT-style data-fraction linear probe on frozen image embeddings.

For each label, a logistic regression is trained on a fraction (1 %, 10 %, 100 %) of the
train split's image embeddings and scored on test by ROC AUC and average precision; a
decision threshold is chosen on val and the test confusion matrix reported at it. The probe
measures how linearly separable the labels are in the embedding space, and how much labelled
data that takes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits

from lib.eval.metrics import IGNORE_LABEL, mean_defined

MAX_ITER = 1000
# Features with a smaller train standard deviation are constant: divided by 1, not by ~0.
MIN_STD = 1e-8


@dataclass(frozen=True)
class Confusion:
    """2×2 confusion counts on test at the val-chosen threshold (positive = score ≥ it)."""

    tn: int
    fp: int
    fn: int
    tp: int


@dataclass(frozen=True)
class ProbeResult:
    """One probe run (one fraction, one seed).

    Per-label dicts are keyed by label name, in the order of ``names``:
    - auc / ap: test ROC AUC / average precision; None when the label is untrainable or its
      test rows lack a positive or a negative (never 0.5).
    - threshold: val-chosen probability threshold; None when untrainable or val lacks a
      class. confusion: test counts at that threshold, None likewise.
    - n_train / n_train_positive: subsampled train rows with the label defined / positive.
    mean_auc / mean_ap average the labels of ``mean_labels`` (None when it is empty): the
    defined labels of this run, or after :func:`on_shared_labels` those every fraction
    defines, so that the fractions' means cover one label set. untrainable_labels:
    the subsample held one class (or no row) for them; undefined_labels: trained, but test
    has one class; not_converged_labels: lbfgs hit max_iter (scores still reported).
    """

    fraction: float
    seed: int
    n_train_rows: int
    auc: dict[str, float | None]
    ap: dict[str, float | None]
    threshold: dict[str, float | None]
    confusion: dict[str, Confusion | None]
    n_train: dict[str, int]
    n_train_positive: dict[str, int]
    mean_auc: float | None
    mean_ap: float | None
    undefined_labels: tuple[str, ...]
    untrainable_labels: tuple[str, ...]
    not_converged_labels: tuple[str, ...]
    # (N_test, C) decision scores (log-odds) on every test row, NaN in the columns of
    # untrainable labels; for bootstrap intervals. Not part of to_dict() or ==.
    test_scores: np.ndarray = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    mean_labels: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: confusions as {"tn", "fp", "fn", "tp"}, tuples as lists."""
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "n_train_rows": self.n_train_rows,
            "auc": dict(self.auc),
            "ap": dict(self.ap),
            "threshold": dict(self.threshold),
            "confusion": {
                k: None if c is None else {"tn": c.tn, "fp": c.fp, "fn": c.fn, "tp": c.tp}
                for k, c in self.confusion.items()
            },
            "n_train": dict(self.n_train),
            "n_train_positive": dict(self.n_train_positive),
            "mean_auc": self.mean_auc,
            "mean_ap": self.mean_ap,
            "mean_labels": list(self.mean_labels),
            "undefined_labels": list(self.undefined_labels),
            "untrainable_labels": list(self.untrainable_labels),
            "not_converged_labels": list(self.not_converged_labels),
        }


def fraction_key(fraction: float) -> str:
    """0.01 -> "1pct", 0.1 -> "10pct", 1.0 -> "100pct" (metric-name friendly)."""
    return f"{fraction * 100:g}pct"


def subsample(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction · n) rows of n (at least 1), drawn without replacement.

    The draw is the first k of one seeded permutation, so with the same seed the 1 % rows are
    a subset of the 10 % rows, which are a subset of 100 %: differences between fractions
    come from the amount of data, not from which rows happened to be drawn. Rounding is
    half-up (0.01 · 250 → 3), not Python's half-to-even.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n = {n} must be a positive number of rows")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction = {fraction} must be in (0, 1], e.g. 0.01 for 1 %")
    k = max(1, min(int(n), math.floor(fraction * n + 0.5)))
    return np.sort(np.random.default_rng(seed).permutation(int(n))[:k])


def fit_probe(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    val_emb: np.ndarray,
    val_labels: np.ndarray,
    test_emb: np.ndarray,
    test_labels: np.ndarray,
    names: Sequence[str],
    fraction: float,
    seed: int,
    C: float = 1.0,
) -> ProbeResult:
    """Train one logistic regression per label on a fraction of train; score it on test.

    Embeddings are (N, d) per split; labels (N, C) ints with 1 / 0 / −1 (−1 = ignore: that
    row is left out of that label's fit, threshold choice and metrics).

    - Rows: subsample(len(train), fraction, seed); for each label its defined rows among them.
    - Standardisation: mean and std of the subsampled train rows (all of them, shared by the
      labels), applied to every split. Only the rows the probe may see shape it, so val/test
      statistics never leak in and the 1 % probe does not borrow the other 99 % of train.
    - Model: LogisticRegression(lbfgs, C, max_iter=1000, random_state=seed), unweighted
      classes so the predicted probabilities keep the train prevalence.
    - Threshold: the val point maximising Youden's J = TPR − FPR (sensitivity + specificity
      − 1), which weighs both error types equally whatever the prevalence, unlike accuracy
      (which favours "always negative" on rare findings). Ties go to the highest threshold,
      placed midway to the next lower val score (same val counts, a margin on both sides).
    - Scores for AUC / AP and thresholding are the decision function (log-odds): it has the
      same order as the probability but does not saturate to 1.0 on well-separated data,
      which would create ties. The reported threshold is converted to a probability.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"names {names} repeat a label; give each column its own name")
    tr_x, va_x, te_x = (
        _check_emb(x, name)
        for x, name in ((train_emb, "train_emb"), (val_emb, "val_emb"), (test_emb, "test_emb"))
    )
    if not (tr_x.shape[1] == va_x.shape[1] == te_x.shape[1]):
        raise ValueError(
            f"embedding widths differ: train {tr_x.shape[1]}, val {va_x.shape[1]}, test "
            f"{te_x.shape[1]}; embed all splits with the same model"
        )
    tr_y, va_y, te_y = (
        _check_labels(y, x, names, name)
        for y, x, name in (
            (train_labels, tr_x, "train_labels"),
            (val_labels, va_x, "val_labels"),
            (test_labels, te_x, "test_labels"),
        )
    )
    if not C > 0:
        raise ValueError(f"C = {C} must be > 0 (inverse regularisation strength, e.g. 1.0)")

    rows = subsample(len(tr_x), fraction, seed)
    mean = tr_x[rows].mean(axis=0)
    std = tr_x[rows].std(axis=0)
    std = np.where(std < MIN_STD, 1.0, std)
    tr_z, va_z, te_z = ((x - mean) / std for x in (tr_x, va_x, te_x))  # new arrays

    auc: dict[str, float | None] = {}
    ap: dict[str, float | None] = {}
    threshold: dict[str, float | None] = {}
    confusion: dict[str, Confusion | None] = {}
    n_train: dict[str, int] = {}
    n_train_pos: dict[str, int] = {}
    undefined: list[str] = []
    untrainable: list[str] = []
    not_converged: list[str] = []
    test_scores = np.full((len(te_x), len(names)), np.nan)
    models = _fit_labels(tr_z, tr_y, rows, C, seed)
    for c, name in enumerate(names):
        fit_rows = rows[tr_y[rows, c] != IGNORE_LABEL]
        target = tr_y[fit_rows, c]
        n_train[name] = len(fit_rows)
        n_train_pos[name] = int(target.sum())
        auc[name] = ap[name] = threshold[name] = confusion[name] = None
        model = models[c]
        if model is None:
            untrainable.append(name)
            continue
        if int(np.max(model.n_iter_)) >= MAX_ITER:
            not_converged.append(name)

        va_keep = va_y[:, c] != IGNORE_LABEL
        te_keep = te_y[:, c] != IGNORE_LABEL
        te_target = te_y[te_keep, c]
        test_scores[:, c] = model.decision_function(te_z)
        te_score = test_scores[te_keep, c]
        if 0 < te_target.sum() < len(te_target):
            auc[name] = float(roc_auc_score(te_target, te_score))
            ap[name] = float(average_precision_score(te_target, te_score))
        else:
            undefined.append(name)

        cut = _youden_threshold(va_y[va_keep, c], model.decision_function(va_z[va_keep]))
        if cut is None:
            continue
        threshold[name] = _sigmoid(cut)
        pred = te_score >= cut
        confusion[name] = Confusion(
            tn=int(np.sum(~pred & (te_target == 0))),
            fp=int(np.sum(pred & (te_target == 0))),
            fn=int(np.sum(~pred & (te_target == 1))),
            tp=int(np.sum(pred & (te_target == 1))),
        )

    return ProbeResult(
        fraction=float(fraction),
        seed=int(seed),
        n_train_rows=len(rows),
        auc=auc,
        ap=ap,
        threshold=threshold,
        confusion=confusion,
        n_train=n_train,
        n_train_positive=n_train_pos,
        mean_auc=mean_defined(auc),
        mean_ap=mean_defined(ap),
        undefined_labels=tuple(undefined),
        untrainable_labels=tuple(untrainable),
        not_converged_labels=tuple(not_converged),
        test_scores=test_scores,
        mean_labels=tuple(lb for lb in names if auc[lb] is not None),
    )


def shared_labels(results: Mapping[str, ProbeResult]) -> tuple[str, ...]:
    """The labels every probe of ``results`` scores (AUC defined): trainable in each
    fraction's subsample and with both classes on test. The subsamples are nested, so on
    the demo this is the 1 % probe's labels (11 of 14: the rarest have no positive among
    its rows); averaging each fraction over its own labels compared different label sets."""
    runs = list(results.values())
    if not runs:
        return ()
    return tuple(lb for lb in runs[0].auc if all(r.auc[lb] is not None for r in runs))


def on_shared_labels(results: Mapping[str, ProbeResult]) -> dict[str, ProbeResult]:
    """``results`` with every mean_auc / mean_ap over :func:`shared_labels` (one label set
    for every fraction); per-label values unchanged."""
    shared = shared_labels(results)
    return {
        k: replace(
            r,
            mean_auc=mean_defined({lb: r.auc[lb] for lb in shared}),
            mean_ap=mean_defined({lb: r.ap[lb] for lb in shared}),
            mean_labels=shared,
        )
        for k, r in results.items()
    }


def _fit_labels(
    x: np.ndarray, y: np.ndarray, rows: np.ndarray, C: float, seed: int
) -> list[LogisticRegression | None]:
    """One fitted LogisticRegression per label column of ``y`` on its defined ``rows`` (None
    where they hold one class only), the labels fitted concurrently on the machine's cores.

    Each fit is the same single-threaded lbfgs whatever the concurrency, so the models do
    not depend on it. BLAS keeps one thread: lbfgs makes thousands of small matrix products,
    where OpenBLAS's threads cost more than they save (14 labels × 1,671 rows × 512 features
    on the 2-core machine: 1.05 s with one thread, 24.8 s with two); the labels' threads
    instead run whole fits side by side (numpy releases the GIL in the products).
    """

    def fit(c: int) -> LogisticRegression | None:
        fit_rows = rows[y[rows, c] != IGNORE_LABEL]
        target = y[fit_rows, c]
        if int(target.sum()) in (0, len(fit_rows)):
            return None
        model = LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed)
        return model.fit(x[fit_rows], target)

    workers = max(1, min(os.cpu_count() or 1, y.shape[1]))
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # Reported through not_converged_labels instead of a warning per label.
        warnings.simplefilter("ignore", ConvergenceWarning)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fit, range(y.shape[1])))


def _youden_threshold(target: np.ndarray, score: np.ndarray) -> float | None:
    """Log-odds cut maximising TPR − FPR on val (predict positive at score ≥ cut); None when
    val lacks a positive or a negative, so no ROC curve exists."""
    if not 0 < target.sum() < len(target):
        return None
    fpr, tpr, cuts = roc_curve(target, score, drop_intermediate=False)
    # cuts are the distinct val scores, decreasing, after a leading +inf ("nothing
    # positive", J = 0, chosen only when no cut beats chance). argmax takes the first
    # maximum: the highest cut among ties.
    best = int(np.argmax(tpr - fpr))
    if best == 0 or best == len(cuts) - 1:
        return float(cuts[best])
    # Every cut in (next lower val score, cuts[best]] gives the same val confusion; the
    # midpoint keeps a margin on both sides instead of sitting on the lowest val positive,
    # where a slightly lower test positive would be missed.
    return float(0.5 * (cuts[best] + cuts[best + 1]))


def _sigmoid(z: float) -> float:
    # 0.5·(1 + tanh(z/2)) never overflows, and gives 1.0 for +inf.
    return float(0.5 * (1.0 + math.tanh(0.5 * z))) if math.isfinite(z) else float(z > 0)


def _check_emb(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} {a.shape} must be a non-empty (rows, d) matrix")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; check the model's outputs")
    return a


def _check_labels(y: np.ndarray, x: np.ndarray, names: list[str], name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.shape != (len(x), len(names)):
        raise ValueError(
            f"{name} {a.shape} must be (rows, labels) = ({len(x)}, {len(names)}): one row per "
            "embedding, one column per name"
        )
    bad = sorted(set(np.unique(a).tolist()) - {1, 0, IGNORE_LABEL})
    if bad:
        raise ValueError(
            f"{name} contain {bad[:5]}; only 1, 0 and {IGNORE_LABEL} (ignore) are allowed "
            "(map uncertain labels with data.label_policy)"
        )
    return a.astype(np.int64)
