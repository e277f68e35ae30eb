"""Evaluation metrics: report↔image retrieval, zero-shot label scores and their AUC / AP.

Used for validation during training (model selection on ``combined_metric``) and for the
final evaluation. Inputs may be NumPy arrays or torch tensors (any device, any float dtype);
results are plain Python floats / NumPy arrays, so they go straight into metrics JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.data.mimic import LABELS

ArrayLike = Any  # np.ndarray or torch.Tensor (duck-typed: this module never imports torch)
# Label value that means "not annotated / uncertain": left out of AUC and AP
# (lib.data.labels.IGNORE, the u_ignore policy).
IGNORE_LABEL = -1
# combined_metric's default weight of retrieval; Model A is selected with 0.6.
RECALL_WEIGHT = 0.7


@dataclass(frozen=True)
class RetrievalRanks:
    """Per-query ranks of image→text and text→image retrieval (see retrieval_ranks).

    i2t: (N,) rank of each image's first positive candidate (1 = best).
    t2i: (U,) rank of each unique-text candidate's first positive image.
    candidate_row: (U,) the text row each candidate was embedded from (its first occurrence).
    i2t_positives: (N,) number of positive candidates per image; t2i_positives: (U,) number
    of positive images per candidate (for chance levels).
    """

    i2t: np.ndarray
    t2i: np.ndarray
    candidate_row: np.ndarray
    i2t_positives: np.ndarray
    t2i_positives: np.ndarray


def retrieval_ranks(
    image_emb: ArrayLike,
    image_study: ArrayLike | Sequence[Any],
    text_emb: ArrayLike,
    text_study: ArrayLike | Sequence[Any],
    texts: Sequence[str],
    *,
    tie_tol: float = 1e-6,
) -> RetrievalRanks:
    """Rank of the first positive for every query of both retrieval directions.

    image_emb (N, d) with image_study (N,); text_emb (S, d) with text_study (S,) and the
    report texts (S,). Similarity is cosine (rows are L2-normalised here, whatever they are).

    - Every image of a study matches that study's report.
    - Identical report texts are ONE candidate (embedded by their first occurrence), whose
      positives are all images of all studies with that text: "No acute process." written for
      50 studies is one answer, not 50 interchangeable ones that would fill the top 10.
    - Image→text: each image ranks the U unique-text candidates; its rank is that of its
      first positive candidate. Text→image: each candidate ranks the N images; its rank is
      that of its first positive image.
    - Ties count against the query: a negative scoring at least the best positive's score
      (within ``tie_tol``, float32 round-off) ranks ahead of it. So a collapsed model whose
      embeddings are all equal gets the worst ranks, not a perfect Recall@1.

    Matrix operations only: N = 3,000 by U = 2,700 takes well under a second.
    """
    img = _unit_rows(image_emb, "image_emb")
    txt = _unit_rows(text_emb, "text_emb")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"image_emb has d = {img.shape[1]} but text_emb has d = {txt.shape[1]}; "
            "embed both with the same model"
        )
    img_study = _as_numpy(image_study)
    txt_study = _as_numpy(text_study)
    if img_study.shape != (len(img),):
        raise ValueError(f"image_study {img_study.shape} must be ({len(img)},), one per image")
    if txt_study.shape != (len(txt),) or len(texts) != len(txt):
        raise ValueError(
            f"text_study {txt_study.shape} and texts ({len(texts)}) must both have one entry "
            f"per text_emb row ({len(txt)})"
        )

    # Candidates: unique texts in order of first occurrence. (S,) candidate id per text row.
    first_seen: dict[str, int] = {}
    cand_of_row = np.fromiter(
        (first_seen.setdefault(t, len(first_seen)) for t in texts), dtype=np.int64, count=len(texts)
    )
    first_row = np.unique(cand_of_row, return_index=True)[1]  # (U,) ids are in first-seen order
    cand = txt[first_row]  # (U, d)

    # Positives: (N, U) bool, via a (studies × candidates) table.
    studies, study_idx = np.unique(np.concatenate([img_study, txt_study]), return_inverse=True)
    img_s, txt_s = study_idx[: len(img)], study_idx[len(img) :]
    study_cand = np.zeros((len(studies), len(cand)), dtype=bool)
    study_cand[txt_s, cand_of_row] = True
    pos = study_cand[img_s]

    no_text = np.unique(img_study[~pos.any(axis=1)])
    if len(no_text):
        raise ValueError(
            f"{len(no_text)} image studies have no report among the texts, e.g. "
            f"{no_text[:5].tolist()}; pass every study's report (or leave its images out)"
        )
    no_image = ~pos.any(axis=0)
    if no_image.any():
        lonely = np.unique(txt_study[no_image[cand_of_row]])
        raise ValueError(
            f"{len(lonely)} report studies have no image among the images, e.g. "
            f"{lonely[:5].tolist()}; pass the images of every study (or leave its report out)"
        )

    sim = img @ cand.T  # (N, U) cosine similarities
    return RetrievalRanks(
        i2t=_first_positive_rank(sim, pos, tie_tol),
        t2i=_first_positive_rank(sim.T, pos.T, tie_tol),
        candidate_row=first_row,
        i2t_positives=pos.sum(axis=1),
        t2i_positives=pos.sum(axis=0),
    )


def summarize_ranks(ranks: RetrievalRanks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K, mean/median rank of both directions from per-query ranks.

    Keys: "i2t_R@K" and "t2i_R@K" (fractions in [0, 1]) for each K, "mean_recall" (their
    mean), "{i2t,t2i}_mean_rank" and "{i2t,t2i}_median_rank" (1 = best), "n_images",
    "n_text_candidates".
    """
    ks = _check_ks(ks)
    out: dict[str, float] = {}
    for direction in ("i2t", "t2i"):
        rank = getattr(ranks, direction)
        for k in ks:
            out[f"{direction}_R@{k}"] = float(np.mean(rank <= k))
    out["mean_recall"] = float(np.mean(list(out.values())))
    for direction in ("i2t", "t2i"):
        rank = getattr(ranks, direction)
        out[f"{direction}_mean_rank"] = float(np.mean(rank))
        out[f"{direction}_median_rank"] = float(np.median(rank))
    out["n_images"] = float(len(ranks.i2t))
    out["n_text_candidates"] = float(len(ranks.t2i))
    return out


def retrieval_metrics(
    image_emb: ArrayLike,
    image_study: ArrayLike | Sequence[Any],
    text_emb: ArrayLike,
    text_study: ArrayLike | Sequence[Any],
    texts: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    *,
    tie_tol: float = 1e-6,
) -> dict[str, float]:
    """Recall@K and ranks of both directions: summarize_ranks(retrieval_ranks(...), ks)."""
    ks = _check_ks(ks)
    ranks = retrieval_ranks(image_emb, image_study, text_emb, text_study, texts, tie_tol=tie_tol)
    return summarize_ranks(ranks, ks)


def chance_recall(n_positives: np.ndarray, n_gallery: int, k: int) -> float:
    """Expected Recall@K of a random ranking: mean over queries of the probability that at
    least one of a query's m positives is among the first k of n_gallery shuffled items,
    1 − C(n − m, k) / C(n, k) (computed as a product, exact for any size).
    """
    m = np.asarray(n_positives, dtype=np.int64)
    if k >= n_gallery:
        return 1.0
    # C(n−m, k)/C(n, k) = prod_{i<k} (n − m − i)/(n − i); zero as soon as n − m − i <= 0.
    i = np.arange(k)
    num = np.clip((n_gallery - m[:, None] - i[None, :]).astype(np.float64), 0, None)
    miss = np.prod(num / (n_gallery - i)[None, :], axis=1)
    return float(np.mean(1.0 - miss))


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks = {ks}: give positive integers, e.g. (1, 5, 10)")
    return tuple(int(k) for k in ks)


def _first_positive_rank(scores: np.ndarray, pos: np.ndarray, tie_tol: float) -> np.ndarray:
    """(Q,) 1-based rank of each query's best-scoring positive among (Q, G) gallery scores,
    with every negative scoring >= that score − tie_tol counted ahead (ties against the query).
    """
    best = np.where(pos, scores, -np.inf).max(axis=1)  # (Q,)
    ahead = (scores >= (best - tie_tol)[:, None]) & ~pos  # (Q, G)
    return ahead.sum(axis=1) + 1


# CheXpert's "No Finding" is the one label whose name is a negation: the templates would make
# "... showing no finding" its positive prompt and "... showing no no finding" its negative
# one, which scores normal images as abnormal. It gets a prompt pair of its own instead
# (train.val_no_finding_prompts, eval.no_finding_prompts), by default the impression
# radiologists write for a normal study.
NO_FINDING = "No Finding"


def label_prompts(
    template: str, negative_template: str, no_finding: Sequence[str] = ()
) -> tuple[list[str], list[str] | None]:
    """(positive prompts, negative prompts or None) for LABELS, in order.

    ``template`` / ``negative_template`` take the label in lower case at ``{}``; an empty
    negative template means positive prompts alone. ``no_finding`` = (positive, negative)
    replaces both prompts of "No Finding"; empty keeps the templates for it too.
    """
    if no_finding and len(no_finding) != 2:
        raise ValueError(f"no_finding = {list(no_finding)}: give (positive, negative) or ()")
    positive = [template.format(lb.lower()) for lb in LABELS]
    negative = (
        [negative_template.format(lb.lower()) for lb in LABELS] if negative_template else None
    )
    if no_finding:
        i = LABELS.index(NO_FINDING)
        positive[i] = no_finding[0]
        if negative is not None:
            negative[i] = no_finding[1]
    return positive, negative


def zero_shot_scores(
    image_emb: ArrayLike,
    prompt_emb: ArrayLike,
    neg_prompt_emb: ArrayLike | None = None,
    *,
    scale: float = 1.0,
) -> np.ndarray:
    """Zero-shot score of each image for each label: (N, C) float64.

    image_emb (N, d); prompt_emb (C, d), one positive prompt per label ("cardiomegaly").
    Without negative prompts: cosine similarity to the positive prompt. With neg_prompt_emb
    (C, d) ("no cardiomegaly"): P(pos) = softmax(scale·[cos_pos, cos_neg])[0]
    = sigmoid(scale·(cos_pos − cos_neg)). ``scale`` (e.g. the model's exp(logit_scale)) only
    calibrates the probabilities; AUC and AP depend on the order alone and ignore it.
    """
    img = _unit_rows(image_emb, "image_emb").astype(np.float64)
    pos = _unit_rows(prompt_emb, "prompt_emb").astype(np.float64)
    if pos.shape[1] != img.shape[1]:
        raise ValueError(
            f"prompt_emb has d = {pos.shape[1]} but image_emb has d = {img.shape[1]}; "
            "embed prompts with the same model"
        )
    sim_pos = img @ pos.T  # (N, C)
    if neg_prompt_emb is None:
        return sim_pos
    neg = _unit_rows(neg_prompt_emb, "neg_prompt_emb").astype(np.float64)
    if neg.shape != pos.shape:
        raise ValueError(
            f"neg_prompt_emb {neg.shape} must match prompt_emb {pos.shape}: one negative "
            "prompt per label, in the same order"
        )
    # Two-way softmax as a sigmoid; 0.5·(1 + tanh(x/2)) never overflows.
    return 0.5 * (1.0 + np.tanh(0.5 * scale * (sim_pos - img @ neg.T)))


def auc_per_label(scores: ArrayLike, labels: ArrayLike, names: Sequence[str]) -> dict[str, Any]:
    """ROC AUC and average precision per label, and their means over the defined labels.

    scores (N, C) float; labels (N, C) with 1 = positive, 0 = negative, −1 = ignore (those
    entries are left out of that label's metrics). A label without a positive or without a
    negative among its unmasked rows has no AUC: it is reported as None (in both "auc" and
    "ap", so both means cover the same labels), listed under "undefined_labels", and left out
    of "mean_auc" / "mean_ap" — never counted as 0.5. The means are None when no label is
    defined.

    Returns {"auc": {name: float | None}, "ap": {...}, "mean_auc", "mean_ap",
    "undefined_labels": [names], "n_positive": {name: int}, "n_negative": {name: int}}.
    """
    s = _as_numpy(scores).astype(np.float64)
    y = _as_numpy(labels)
    names = list(names)
    if s.ndim != 2 or y.shape != s.shape or len(names) != s.shape[1]:
        raise ValueError(
            f"scores {s.shape} and labels {y.shape} must both be (N, C) with C = "
            f"len(names) = {len(names)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"names {names} repeat a label; give each column its own name")
    if not np.isfinite(s).all():
        bad = [names[c] for c in np.flatnonzero(~np.isfinite(s).all(axis=0))]
        raise ValueError(f"scores of {bad} contain NaN or inf; check the model's outputs")
    bad_values = sorted(set(np.unique(y).tolist()) - {1, 0, IGNORE_LABEL})
    if bad_values:
        raise ValueError(
            f"labels contain {bad_values[:5]}; only 1, 0 and {IGNORE_LABEL} (ignore) are "
            "allowed (map uncertain labels with data.label_policy)"
        )
    auc: dict[str, float | None] = {}
    ap: dict[str, float | None] = {}
    n_pos: dict[str, int] = {}
    n_neg: dict[str, int] = {}
    undefined: list[str] = []
    for c, name in enumerate(names):
        keep = y[:, c] != IGNORE_LABEL
        target, score = y[keep, c].astype(np.int64), s[keep, c]
        n_pos[name] = int(target.sum())
        n_neg[name] = int(len(target) - n_pos[name])
        if n_pos[name] == 0 or n_neg[name] == 0:
            auc[name] = ap[name] = None
            undefined.append(name)
            continue
        auc[name], ap[name] = binary_auc_ap(target, score)
    return {
        "auc": auc,
        "ap": ap,
        "mean_auc": mean_defined(auc),
        "mean_ap": mean_defined(ap),
        "undefined_labels": undefined,
        "n_positive": n_pos,
        "n_negative": n_neg,
    }


def binary_auc_ap(target: np.ndarray, score: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC and average precision of one binary label, or (None, None) without both classes.

    target (n,) 0/1; score (n,) float, higher = more positive. Same definitions as
    scikit-learn's roc_auc_score (trapezoidal ROC area, so tied scores count one half) and
    average_precision_score (AP = Σ (R_i − R_{i−1}) P_i over the distinct thresholds, no
    interpolation); tests compare the two. One sort and a few cumulative sums, without
    sklearn's input validation: it runs thousands of times in a bootstrap.
    """
    t = np.asarray(target).astype(bool, copy=False)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(t.sum())
    n_neg = len(t) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None, None
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    # Last index of each run of equal scores: one ROC / PR point per distinct threshold.
    change = np.empty(len(s), dtype=bool)
    np.not_equal(s[1:], s[:-1], out=change[:-1])
    change[-1] = True
    ends = np.flatnonzero(change)
    tps = np.cumsum(t)[ends].astype(np.float64)
    fps = (ends + 1) - tps
    d_tp = np.diff(tps, prepend=0.0)
    d_fp = np.diff(fps, prepend=0.0)
    # Trapezoids between consecutive ROC points: Δfp · (tp + tp_prev) / 2.
    auc = float(d_fp @ (2.0 * tps - d_tp) / (2.0 * n_pos * n_neg))
    ap = float(d_tp @ (tps / (tps + fps)) / n_pos)
    return auc, ap


def auc_ap_columns(
    scores: np.ndarray, targets: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """binary_auc_ap of every column at once: (C,) AUC and (C,) AP, NaN where undefined.

    scores (n, C); targets (n, C) 0/1; valid (n, C) bool, False = left out of that column
    (an ignored label). Same values as binary_auc_ap column by column, via per-row
    formulas that need no loop over distinct thresholds:

    - AUC = P(score of a positive > score of a negative) + ½ P(tie): each negative adds the
      positives ranked strictly above its tie group plus half of those inside it.
    - AP = mean over positives of the precision at the lowest threshold of their tie group
      (Σ_i (R_i − R_{i−1}) P_i, grouped by positive).

    For bootstraps: one sort of an (n, C) array instead of C sorts and C Python calls.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets).astype(np.float64)
    w = np.ones_like(s) if valid is None else np.asarray(valid).astype(np.float64)
    if s.ndim != 2 or t.shape != s.shape or w.shape != s.shape:
        raise ValueError(f"scores {s.shape}, targets {t.shape}, valid {w.shape}: all (n, C)")
    n, c = s.shape
    auc = np.full(c, np.nan)
    ap = np.full(c, np.nan)
    if n == 0:
        return auc, ap
    order = np.argsort(-s, axis=0)
    s = np.take_along_axis(s, order, axis=0)
    pos = np.take_along_axis(t * w, order, axis=0)
    neg = np.take_along_axis((1.0 - t) * w, order, axis=0)
    tp = np.cumsum(pos, axis=0)
    fp = np.cumsum(neg, axis=0)
    # Index of the last row of each row's tie group (scores sorted descending).
    last = np.ones((n, c), dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    rows = np.arange(n)[:, None]
    end = np.minimum.accumulate(np.where(last, rows, n)[::-1], axis=0)[::-1]
    # tp after the previous tie group (0 for the first group).
    prev_end = np.maximum.accumulate(np.where(np.roll(last, 1, axis=0), rows - 1, -1), axis=0)
    prev_end[0] = -1
    tp_end = np.take_along_axis(tp, end, axis=0)
    fp_end = np.take_along_axis(fp, end, axis=0)
    tp_before = np.where(
        prev_end >= 0, np.take_along_axis(tp, np.maximum(prev_end, 0), axis=0), 0.0
    )
    n_pos, n_neg = tp[-1], fp[-1]
    ok = (n_pos > 0) & (n_neg > 0)
    wins = np.sum(neg * (tp_before + 0.5 * (tp_end - tp_before)), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp_end + fp_end > 0, tp_end / (tp_end + fp_end), 0.0)
        auc[ok] = wins[ok] / (n_pos[ok] * n_neg[ok])
        ap[ok] = np.sum(pos * precision, axis=0)[ok] / n_pos[ok]
    return auc, ap


def combined_metric(
    mean_recall: float, mean_auc: float | None, recall_weight: float = RECALL_WEIGHT
) -> float:
    """Model-selection score: recall_weight·mean_recall + (1 − recall_weight)·mean_auc.

    Both inputs are in [0, 1] (mean_recall from retrieval_metrics, mean_auc from
    auc_per_label). The default weight is 0.7; Model A is selected with 0.6.
    """
    if not 0 <= recall_weight <= 1:
        raise ValueError(f"recall_weight = {recall_weight} must be in [0, 1] (0.7 default)")
    if mean_auc is None:
        if recall_weight == 1:
            return float(mean_recall)
        raise ValueError(
            "mean_auc is None: no label had both positives and negatives in this split; "
            "evaluate on more images or set recall_weight to 1"
        )
    for key, value in (("mean_recall", mean_recall), ("mean_auc", mean_auc)):
        if not 0 <= value <= 1:
            raise ValueError(f"{key} = {value} must be in [0, 1] (a fraction, not a percent)")
    return float(recall_weight * mean_recall + (1 - recall_weight) * mean_auc)


def mean_defined(values: dict[str, float | None]) -> float | None:
    """Mean of the values that are defined (not None); None if none is."""
    defined = [v for v in values.values() if v is not None]
    return float(np.mean(defined)) if defined else None


def _as_numpy(x: ArrayLike | Sequence[Any]) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _unit_rows(x: ArrayLike, name: str) -> np.ndarray:
    """(M, d) float32 with rows scaled to unit length (zero rows stay zero)."""
    a = _as_numpy(x).astype(np.float32, copy=False)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} {a.shape} must be a non-empty (rows, d) matrix")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; check the model's outputs")
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(norm, 1e-12)
