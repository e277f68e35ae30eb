"""VQA metrics (the seed's phase 3): answers, spatial reasoning, clinical relevance, per type.

- Answers: exact match and token F1 after SQuAD's normalisation (lowercase, punctuation and
  the articles a/an/the removed, whitespace collapsed), per pair; BLEU-4 (corpus), ROUGE-L
  (per pair) and BERTScore (per pair) from torchmetrics, not written here. BERTScore runs a
  LOCAL Hugging Face BERT folder (``model_dir``): the demo backbone's text tower
  (data/backbone/demo) or any HF-format text model; nothing is downloaded.
- Spatial: box IoU, mean IoU, pointing accuracy (IoU > 0.5), average precision of scored
  boxes against ground-truth boxes at an IoU threshold (mAP@0.5 / @0.75: VOC-style,
  all-point interpolation, greedy matching by score).
- Clinical: sensitivity, specificity, PPV, NPV, MCC and AUROC of a binary head; None where a
  figure is undefined (no positives, ...), never NaN, so the dict goes straight into JSON.

Pure functions on NumPy arrays / lists; results are NumPy arrays or Python floats.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lib.eval.metrics import binary_auc_ap

Box = Sequence[float]  # [x1, y1, x2, y2], x2 >= x1, y2 >= y1
POINTING_IOU = 0.5
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


# --- answers ------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, punctuation and articles removed, spaces collapsed."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _pairs(preds: Sequence[str], refs: Sequence[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions against {len(refs)} references")


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(n,) float 1.0 where the normalised prediction equals the normalised reference."""
    _pairs(preds, refs)
    return np.array(
        [
            float(normalize_answer(p) == normalize_answer(r))
            for p, r in zip(preds, refs, strict=True)
        ],
        dtype=np.float64,
    )


def _f1(pred: str, ref: str) -> float:
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def token_f1(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(n,) SQuAD token F1 of each pair (bag of normalised tokens; both empty = 1)."""
    _pairs(preds, refs)
    return np.array([_f1(p, r) for p, r in zip(preds, refs, strict=True)], dtype=np.float64)


def bleu4(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 (torchmetrics BLEUScore, uniform weights, no smoothing) of the
    normalised texts, one reference each."""
    from torchmetrics.functional.text import bleu_score

    _pairs(preds, refs)
    if not preds:
        return 0.0
    p = [normalize_answer(x) for x in preds]
    r = [[normalize_answer(x)] for x in refs]
    return float(bleu_score(p, r, n_gram=4))


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(n,) ROUGE-L F-measure of each pair (torchmetrics rouge_score, rougeL)."""
    from torchmetrics.functional.text import rouge_score

    _pairs(preds, refs)
    out = np.zeros(len(preds), dtype=np.float64)
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        if normalize_answer(p) and normalize_answer(r):
            out[i] = float(rouge_score(p, r, rouge_keys="rougeL")["rougeL_fmeasure"])
        else:
            out[i] = float(normalize_answer(p) == normalize_answer(r))
    return out


def load_text_tower(model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a local Hugging Face BERT folder, never downloading.

    A plain HF folder (model.safetensors; never a pickled .bin) loads with from_pretrained; an
    open_clip ``local-dir:`` folder (the demo backbone: BERT config + tokenizer beside
    open_clip_model.safetensors) loads the text tower's ``text.transformer.*`` weights.
    """
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: no config.json; BERTScore needs a local Hugging Face text model "
            f"folder (e.g. data/backbone/demo after stage demo_backbone)"
        )
    from lib.model.backbone import refuse_remote_code

    refuse_remote_code(model_dir, f"local-dir:{model_dir}")  # no folder code ever runs
    local = {"local_files_only": True, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **local)
    if (model_dir / "model.safetensors").is_file():
        return AutoModel.from_pretrained(str(model_dir), use_safetensors=True, **local), tokenizer
    clip_weights = model_dir / "open_clip_model.safetensors"
    if not clip_weights.is_file():
        raise FileNotFoundError(
            f"{model_dir}: no model.safetensors (a pickled pytorch_model.bin is not loaded: "
            "save the model with safe_serialization) and no open_clip_model.safetensors"
        )
    from safetensors.torch import load_file

    prefix = "text.transformer."
    state = {
        k.removeprefix(prefix): v
        for k, v in load_file(clip_weights).items()
        if k.startswith(prefix)
    }
    model = BertModel(BertConfig.from_pretrained(str(model_dir)), add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ValueError(
            f"{clip_weights}: text tower weights do not fit the BERT config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model, tokenizer


def bertscore(
    preds: Sequence[str], refs: Sequence[str], model_dir: Path, batch_size: int = 64
) -> np.ndarray:
    """(n,) BERTScore F1 of each pair (torchmetrics bert_score, last hidden layer, no idf,
    no baseline rescaling) with the local text tower in ``model_dir``."""
    import torch
    from torchmetrics.functional.text.bert import bert_score

    _pairs(preds, refs)
    if not preds:
        return np.zeros(0)
    model, tokenizer = load_text_tower(model_dir)
    max_length = int(getattr(model.config, "max_position_embeddings", 512))
    with torch.no_grad():
        out = bert_score(
            list(preds),
            list(refs),
            model=model,
            user_tokenizer=tokenizer,
            max_length=max_length,
            batch_size=batch_size,
            device="cpu",
        )
    return np.asarray(out["f1"], dtype=np.float64).reshape(-1)


# --- spatial ------------------------------------------------------------------------------


def box_iou(a: Box, b: Box) -> float:
    """IoU of two [x1, y1, x2, y2] boxes (0 where they do not overlap or both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def pairwise_iou(preds: Sequence[Box], gts: Sequence[Box]) -> np.ndarray:
    """(len(preds), len(gts)) IoU matrix."""
    return np.array([[box_iou(p, g) for g in gts] for p in preds], dtype=np.float64).reshape(
        len(preds), len(gts)
    )


def pair_ious(preds: Sequence[Box], gts: Sequence[Box]) -> np.ndarray:
    """(n,) IoU of each predicted box with its own ground-truth box."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted boxes against {len(gts)} ground-truth boxes")
    return np.array([box_iou(p, g) for p, g in zip(preds, gts, strict=True)], dtype=np.float64)


def mean_iou(preds: Sequence[Box], gts: Sequence[Box]) -> float | None:
    """Mean IoU of paired boxes (None without pairs)."""
    ious = pair_ious(preds, gts)
    return float(ious.mean()) if len(ious) else None


def pointing_accuracy(
    preds: Sequence[Box], gts: Sequence[Box], threshold: float = POINTING_IOU
) -> float | None:
    """Fraction of paired boxes with IoU > ``threshold`` (the seed's 0.5; None without pairs)."""
    ious = pair_ious(preds, gts)
    return float((ious > threshold).mean()) if len(ious) else None


def average_precision(
    pred_boxes: Sequence[Sequence[Box]],
    scores: Sequence[Sequence[float]],
    gt_boxes: Sequence[Sequence[Box]],
    iou_threshold: float = 0.5,
) -> float | None:
    """AP of scored detections over images (VOC all-point interpolation).

    pred_boxes[i] / scores[i]: the detections of image i; gt_boxes[i]: its ground truth.
    Detections are taken by score (all images together); each is a true positive when its
    best-IoU unmatched ground-truth box of the same image has IoU >= ``iou_threshold``.
    None without ground-truth boxes.
    """
    if not (len(pred_boxes) == len(scores) == len(gt_boxes)):
        raise ValueError("pred_boxes, scores and gt_boxes must list the same images")
    n_gt = sum(len(g) for g in gt_boxes)
    if n_gt == 0:
        return None
    dets = [
        (float(s), i, list(b))
        for i, (bs, ss) in enumerate(zip(pred_boxes, scores, strict=True))
        for b, s in zip(bs, ss, strict=True)
    ]
    dets.sort(key=lambda d: -d[0])
    matched = [np.zeros(len(g), dtype=bool) for g in gt_boxes]
    tp = np.zeros(len(dets))
    for k, (_, i, box) in enumerate(dets):
        if not len(gt_boxes[i]):
            continue
        ious = pairwise_iou([box], gt_boxes[i])[0]
        ious[matched[i]] = -1.0
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold:
            matched[i][j] = True
            tp[k] = 1.0
    if not len(dets):
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(dets) + 1)
    # All-point interpolation: precision made monotone from the right.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


# --- clinical -----------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def binary_clinical(
    y_true: Sequence[int] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float | int | None]:
    """Sensitivity, specificity, PPV, NPV, MCC (at ``threshold``) and AUROC of a binary head.

    y_true (n,) 0/1; y_score (n,) probability of 1 (or 0/1 predictions). Undefined figures
    are None: sensitivity without positives, MCC where a margin is empty, AUROC with one class.
    """
    t = np.asarray(y_true).astype(int)
    s = np.asarray(y_score, dtype=np.float64)
    if t.shape != s.shape:
        raise ValueError(f"y_true {t.shape} and y_score {s.shape} differ in shape")
    if len(t) and not np.isin(t, (0, 1)).all():
        raise ValueError("y_true must be 0/1")
    if np.isnan(s).any():
        raise ValueError("y_score has NaN")
    p = s >= threshold
    tp = int((p & (t == 1)).sum())
    tn = int((~p & (t == 0)).sum())
    fp = int((p & (t == 0)).sum())
    fn = int((~p & (t == 1)).sum())
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    mcc = float((tp * tn - fp * fn) / math.sqrt(den)) if den > 0 else None
    auroc, _ = binary_auc_ap(t, s) if len(t) else (None, None)
    return {
        "n": len(t),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "mcc": mcc,
        "auroc": auroc,
    }


def per_type_accuracy(
    correct: Sequence[float] | np.ndarray, types: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """Question type -> {"n", "accuracy"} of 0/1 ``correct`` flags, types sorted."""
    c = np.asarray(correct, dtype=np.float64)
    if len(c) != len(types):
        raise ValueError(f"{len(c)} flags against {len(types)} question types")
    out: dict[str, dict[str, float | int]] = {}
    for qt in sorted(set(types)):
        m = np.array([t == qt for t in types])
        out[qt] = {"n": int(m.sum()), "accuracy": float(c[m].mean())}
    return out


def none_if_nan(values: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``values`` with NaN floats replaced by None (JSON-safe)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}
