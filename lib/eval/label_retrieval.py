"""ConVIRT's label-based retrieval protocol (Zhang et al. 2020, the CheXpert 8×200 task), on
our test split.

The images taken are those with exactly one positive among ConVIRT's eight categories
(``CATEGORIES``); an uncertain or ignored label (anything but 1) is not a positive. ConVIRT
drew 200 such images per category from CheXpert; here every test image that qualifies is
used, so the categories are unbalanced and each precision comes with its chance level.

- image→image: each image queries the others; Precision@K is the share of its K nearest
  (cosine) that have its category. Images of the query's own study are left out of its
  candidates (two frontal views of one study would be trivial hits). The queries' mean is
  taken per category, then over the categories: ConVIRT's categories were of equal size,
  and without this the commonest category (No Finding) would decide the figure.
- text→image: each category's positive zero-shot prompt queries the images; Precision@K is
  the share of the K nearest images that have that category, averaged over the prompts.
- ``_max``: the best any ranking can score, since a category of n images can fill at most
  n of K places (on small test sets P@50 is capped well below 1).

NumPy only, on the embeddings of embed@X.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.data.mimic import LABELS

# ConVIRT's Precision@K cut-offs.
PRECISION_KS: tuple[int, ...] = (5, 10, 50)
CATEGORIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Edema",
    "Fracture",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
    "No Finding",
)


@dataclass(frozen=True)
class LabelSet:
    """The test images of the protocol: rows into the split and each one's category."""

    rows: np.ndarray  # (n,) row of each image in the split
    category: np.ndarray  # (n,) index into CATEGORIES

    def counts(self) -> dict[str, int]:
        return {c: int(np.sum(self.category == i)) for i, c in enumerate(CATEGORIES)}


def single_category_images(labels: np.ndarray, names: Sequence[str] = LABELS) -> LabelSet:
    """Images with exactly one positive (label 1) among CATEGORIES. labels (N, C) 1/0/-1
    in the order of ``names``."""
    labels = np.asarray(labels)
    missing = [c for c in CATEGORIES if c not in names]
    if missing:
        raise ValueError(f"labels lack ConVIRT's categories {missing}; columns are {names}")
    cols = [list(names).index(c) for c in CATEGORIES]
    positive = labels[:, cols] == 1  # (N, 8)
    rows = np.flatnonzero(positive.sum(axis=1) == 1)
    return LabelSet(rows=rows, category=positive[rows].argmax(axis=1))


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if x.ndim != 2 or (norms == 0).any():
        raise ValueError(f"{name} must be (n, d) with no all-zero row")
    return x / norms


def image_to_image_hits(
    emb: np.ndarray, category: np.ndarray, study: np.ndarray, k_max: int
) -> np.ndarray:
    """(n, k_max) bool: whether the r-th nearest other image (same study excluded) of each
    query has the query's category; a query with fewer candidates than k_max has False
    beyond them. emb (n, d) of the protocol's images; category, study (n,)."""
    x = _unit(emb, "emb")
    sim = x @ x.T
    sim[study[:, None] == study[None, :]] = -np.inf  # itself and its own study
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k_max]
    valid = np.take_along_axis(sim, order, axis=1) > -np.inf
    return (category[order] == category[:, None]) & valid


def text_to_image_hits(
    emb: np.ndarray, prompt_emb: np.ndarray, category: np.ndarray, k_max: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each category's prompt (8, d): (hits (8, k_max) bool, retrieved (8, k_max) rows
    into emb) of its k_max nearest images."""
    sim = _unit(prompt_emb, "prompt_emb") @ _unit(emb, "emb").T  # (8, n)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k_max]
    hits = category[order] == np.arange(len(prompt_emb))[:, None]
    return hits, order


def chance_precision(category: np.ndarray, study: np.ndarray) -> float:
    """Expected image→image precision of a random ranking: per query, the share of its
    candidates (other studies) that have its category; averaged over each category's
    queries, then over the categories (as the protocol's precisions are)."""
    same_study = study[:, None] == study[None, :]
    same_cat = category[:, None] == category[None, :]
    candidates = (~same_study).sum(axis=1)
    hits = (same_cat & ~same_study).sum(axis=1)
    share = hits / np.maximum(candidates, 1)
    return float(np.mean([share[category == c].mean() for c in np.unique(category)]))


def category_prompts(positive_prompt_emb: np.ndarray, names: Sequence[str] = LABELS) -> np.ndarray:
    """The positive prompt embeddings (C, d) of the 14 labels -> those of CATEGORIES (8, d)."""
    return np.asarray(positive_prompt_emb)[[list(names).index(c) for c in CATEGORIES]]


def label_retrieval_metrics(
    image_emb: np.ndarray,
    labels: np.ndarray,
    study: np.ndarray,
    patient: np.ndarray,
    positive_prompt_emb: np.ndarray | None,
    ks: Sequence[int],
    bootstrap: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """The protocol's flat metrics on one split (see the module docstring).

    image_emb (N, d), labels (N, 14), study and patient (N,) of the split's images;
    positive_prompt_emb (14, d) or None (no text side: text→image is left out). Keys:
    ``label_i2i_P@K`` and ``label_t2i_P@K`` with ``_ci_low`` / ``_ci_high`` (patient
    bootstrap: image→image resamples the queries' patients; text→image the patients of
    the retrieved images, its queries being fixed: the prompts of the categories that have
    images), ``label_chance_P`` and the counts. A K not below the number of images is left
    out (too few candidates).
    """
    from lib.eval.stats import bootstrap_table

    chosen = single_category_images(labels)
    n = len(chosen.rows)
    out: dict[str, Any] = {"label_retrieval_images": n}
    out.update({f"label_retrieval_n_{c.replace(' ', '_')}": v for c, v in chosen.counts().items()})
    ks = [k for k in ks if k < n]  # P@K needs at least K candidates per query
    if not ks:
        return out
    k_max = max(ks)
    emb = np.asarray(image_emb)[chosen.rows]
    studies = np.asarray(study)[chosen.rows]
    patients = np.asarray(patient)[chosen.rows]
    cat = chosen.category
    present = np.flatnonzero(np.bincount(cat, minlength=len(CATEGORIES)))
    out["label_chance_P"] = chance_precision(cat, studies)

    def macro(values: np.ndarray, idx: np.ndarray) -> float:
        """Mean over the categories present in ``idx`` of their queries' mean."""
        c = cat[idx]
        return float(np.mean([values[idx][c == k].mean() for k in np.unique(c)]))

    i2i = image_to_image_hits(emb, cat, studies, k_max)
    precision = {k: i2i[:, :k].mean(axis=1) for k in ks}  # per query
    tables = [(lambda idx: {f"label_i2i_P@{k}": macro(precision[k], idx) for k in ks}, patients)]
    for k in ks:  # the best a ranking can do: a category of n images fills min(n - 1, K)
        best = [min(np.sum(cat == c) - 1, k) / k for c in present]
        out[f"label_i2i_P@{k}_max"] = float(np.mean(best))
        out[f"label_t2i_P@{k}_max"] = float(
            np.mean([min(np.sum(cat == c), k) / k for c in present])
        )
    if positive_prompt_emb is not None:
        hits, order = text_to_image_hits(emb, category_prompts(positive_prompt_emb), cat, k_max)
        hits, order = hits[present], order[present]  # a prompt with no image can hit none
        rank = np.broadcast_to(np.arange(k_max), hits.shape).ravel()
        flat = hits.ravel()

        def t2i(idx: np.ndarray) -> dict[str, float | None]:
            return {
                f"label_t2i_P@{k}": float(flat[idx][rank[idx] < k].mean())
                if np.any(rank[idx] < k)
                else None
                for k in ks
            }

        tables.append((t2i, patients[order].ravel()))
    for table, ids in tables:
        for key, iv in bootstrap_table(table, ids, bootstrap, seed, level).items():
            out[key] = iv.point
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = iv.low, iv.high
    return out
