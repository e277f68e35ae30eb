"""The seed's VQA metrics on the test questions of one model (or floor), with
patient-bootstrap intervals (lib/eval/stats.py), and the per-question table that
vqa_compare pairs against A.

- Answers: the predicted tags rendered into the template main answer (lib/vqa/answers.py)
  against the reference main answer: EM, token F1, BLEU-4 (corpus), ROUGE-L, BERTScore.
- Spatial (region questions with reference boxes): the predicted region's box in the study's
  scene graph (or that region's mean box over all scenes) against the reference boxes: mean
  IoU (best-matching reference box), pointing accuracy (IoU > 0.5), mAP@0.5 / @0.75.
- Clinical (binary questions): sensitivity, specificity, PPV, NPV, MCC, AUROC of P(yes).
- Accuracy overall, per head and per question type.
- Explainability (models with an image): attention plausibility = IoU of the patches holding
  half the attention mass with the patches whose centres lie in a reference box, the
  attention mass inside the boxes, and the attention entropy (normalised by log N).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.eval.stats import Interval, bootstrap_mean_ci
from lib.vqa import metrics as M
from lib.vqa.answers import render_all
from lib.vqa.model import HEADS


def region_boxes(
    scene: pd.DataFrame,
) -> tuple[dict[tuple[int, int], list[float]], dict[int, list[float]]]:
    """(study, region) -> mean [0, 1] box in that study; region -> mean box over all."""
    cols = ["x1", "y1", "x2", "y2"]
    per = scene.groupby(["study_id", "region"])[cols].mean()
    mean = scene.groupby("region")[cols].mean()
    return (
        {(int(s), int(r)): v.tolist() for (s, r), v in zip(per.index, per.to_numpy(), strict=True)},
        {int(r): v.tolist() for r, v in zip(mean.index, mean.to_numpy(), strict=True)},
    )


def predicted_box(row: Mapping[str, Any], region: int, per, mean) -> list[float] | None:
    box = per.get((int(row["study_id"]), region)) or mean.get(region)
    if box is None:
        return None
    w, h = float(row["image_width"]), float(row["image_height"])
    return [box[0] * w, box[1] * h, box[2] * w, box[3] * h]


def _best_iou(box: list[float], refs: list[list[float]]) -> float:
    return max(M.box_iou(box, r) for r in refs)


def attention_scores(attention: np.ndarray, grid: tuple[int, int], boxes, width, height):
    """(plausibility IoU, mass in boxes) of one (N,) attention against pixel boxes."""
    gh, gw = grid
    att = attention.reshape(gh, gw)
    cy, cx = (np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw
    inside = np.zeros((gh, gw), bool)
    for x1, y1, x2, y2 in boxes:
        ys = (cy >= y1 / height) & (cy <= y2 / height)
        xs = (cx >= x1 / width) & (cx <= x2 / width)
        inside |= ys[:, None] & xs[None, :]
    order = np.argsort(-att.ravel())
    k = int(np.searchsorted(np.cumsum(att.ravel()[order]), 0.5) + 1)
    top = np.zeros(gh * gw, bool)
    top[order[:k]] = True
    top = top.reshape(gh, gw)
    union = (top | inside).sum()
    return float((top & inside).sum() / union) if union else 0.0, float(att[inside].sum())


def per_question(
    questions: pd.DataFrame,
    pred: np.ndarray,
    score: np.ndarray,
    attention: np.ndarray | None,
    grid: tuple[int, int] | None,
    scene: pd.DataFrame,
    vocab: Mapping[str, Any],
    bertscore_dir: Path | None,
) -> pd.DataFrame:
    """One row per test question: correctness, the rendered answer and its scores, the
    spatial and attention figures (NaN where they do not apply)."""
    from lib.vqa.train import targets

    _, target = targets(questions)
    rendered = render_all(questions, pred, vocab)
    refs = questions["answer_text"].astype(str).tolist()
    out = pd.DataFrame(
        {
            "question_id": questions["question_id"].to_numpy(),
            "subject_id": questions["subject_id"].to_numpy(),
            "question_type": questions["question_type"].to_numpy(),
            "head": questions["head"].to_numpy(),
            "target": target,
            "pred": pred,
            "score": score,
            "correct": (pred == target).astype(float),
            "answer": rendered,
            "em": M.exact_match(rendered, refs).astype(float),
            "f1": M.token_f1(rendered, refs),
            "rouge_l": M.rouge_l(rendered, refs),
        }
    )
    out["bertscore"] = M.bertscore(rendered, refs, bertscore_dir) if bertscore_dir else np.nan
    per, mean = region_boxes(scene)
    n = len(out)
    iou, plaus, mass, entropy = (np.full(n, np.nan) for _ in range(4))
    boxes_pred: list[list[list[float]]] = [[] for _ in range(n)]
    for i, row in enumerate(questions.to_dict("records")):
        refs_i = [list(b) for b in (row["boxes"] if row["boxes"] is not None else [])]
        if row["head"] == "region" and refs_i:
            box = predicted_box(row, int(pred[i]), per, mean)
            iou[i] = _best_iou(box, refs_i) if box else 0.0
            boxes_pred[i] = [box] if box else []
        if attention is not None:
            a = attention[i]
            entropy[i] = float(-(a * np.log(np.clip(a, 1e-12, None))).sum() / np.log(len(a)))
            if refs_i and grid is not None:
                plaus[i], mass[i] = attention_scores(
                    a, grid, refs_i, float(row["image_width"]), float(row["image_height"])
                )
    out["iou"], out["attention_iou"], out["attention_mass"] = iou, plaus, mass
    out["attention_entropy"] = entropy
    out.attrs["boxes_pred"] = boxes_pred
    out.attrs["boxes_ref"] = [
        [list(b) for b in (b_ if b_ is not None else [])] for b_ in questions["boxes"]
    ]
    out.attrs["bleu4"] = M.bleu4(rendered, refs)
    return out


def _interval(values: np.ndarray, ids: np.ndarray, rounds: int, seed: int, level: float) -> dict:
    keep = ~np.isnan(values)
    if not keep.any():
        return {"n": 0, "point": None, "low": None, "high": None}
    iv: Interval = bootstrap_mean_ci(values[keep], ids[keep], rounds, seed, level)[0]
    return {"n": int(keep.sum()), "point": iv.point, "low": iv.low, "high": iv.high}


INTERVAL_COLUMNS = (
    "correct",
    "em",
    "f1",
    "rouge_l",
    "bertscore",
    "iou",
    "attention_iou",
    "attention_mass",
    "attention_entropy",
)


def summarise(table: pd.DataFrame, rounds: int, seed: int, level: float) -> dict[str, Any]:
    """The metrics JSON of one model from its per-question table."""
    ids = table["subject_id"].to_numpy()
    result: dict[str, Any] = {"n_questions": len(table), "n_patients": len(set(ids))}
    result["intervals"] = {
        c: _interval(table[c].to_numpy(float), ids, rounds, seed, level) for c in INTERVAL_COLUMNS
    }
    result["accuracy_by_head"] = {}
    for h in HEADS:
        m = (table["head"] == h).to_numpy()
        v = table["correct"].to_numpy(float).copy()
        v[~m] = np.nan
        result["accuracy_by_head"][h] = _interval(v, ids, rounds, seed, level)
    result["accuracy_by_type"] = M.per_type_accuracy(
        table["correct"].to_numpy(), table["question_type"].astype(str).tolist()
    )
    result["bleu4"] = table.attrs.get("bleu4")
    region = (table["head"] == "region").to_numpy() & ~np.isnan(table["iou"].to_numpy())
    pb = [table.attrs["boxes_pred"][i] for i in np.flatnonzero(region)]
    sc = [
        [float(table["score"].iloc[i])] * len(pb[j]) for j, i in enumerate(np.flatnonzero(region))
    ]
    gt = [table.attrs["boxes_ref"][i] for i in np.flatnonzero(region)]
    result["spatial"] = {
        "n": int(region.sum()),
        "mean_iou": float(table["iou"][region].mean()) if region.any() else None,
        "pointing": float((table["iou"][region] > M.POINTING_IOU).mean()) if region.any() else None,
        "map50": M.average_precision(pb, sc, gt, 0.5) if region.any() else None,
        "map75": M.average_precision(pb, sc, gt, 0.75) if region.any() else None,
    }
    binary = (table["head"] == "binary").to_numpy()
    result["clinical"] = M.binary_clinical(
        table["target"][binary].to_numpy(), table["score"][binary].to_numpy()
    )
    return result
