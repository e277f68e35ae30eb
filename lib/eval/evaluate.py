"""Test-split evaluation of one model from its embeddings (stage eval@X).

Retrieval (Recall@K both ways, ranks), zero-shot classification from prompts, the
ConVIRT data-fraction linear probe, and patient-level bootstrap intervals of all headline
numbers. NumPy only (no torch), on the embeddings of embed@X plus the prompt embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lib.config.params import EvalParams
from lib.data.master import Split
from lib.data.mimic import LABELS
from lib.errors import DataError
from lib.eval.embedding_files import Embeddings, study_reports
from lib.eval.label_retrieval import PRECISION_KS, label_retrieval_metrics
from lib.eval.metrics import (
    IGNORE_LABEL,
    auc_ap_columns,
    auc_per_label,
    chance_recall,
    retrieval_ranks,
    summarize_ranks,
    zero_shot_scores,
)
from lib.eval.probe import ProbeResult, fit_probe, fraction_key, on_shared_labels
from lib.eval.stats import Interval, TableMetric, bootstrap_table


def label_key(label: str) -> str:
    return label.replace(" ", "_")


@dataclass
class QueryRows:
    """Per-query results on the test split, for intervals here and paired tests in compare.

    Rows of the bootstrap: the N test images (image→text queries, zero-shot and probe
    rows) followed by the U unique report texts (text→image queries), each with the patient
    it belongs to, so a resampled patient brings all of its queries of both directions.
    """

    patient: np.ndarray  # (N + U,)
    n_images: int
    i2t_rank: np.ndarray  # (N,)
    t2i_rank: np.ndarray  # (U,)
    labels: np.ndarray  # (N, 14) 1 / 0 / -1
    zero_shot: np.ndarray  # (N, 14) zero-shot scores
    probe: dict[str, np.ndarray] = field(default_factory=dict)  # fraction key -> (N, 14)
    # fine-tuned encoder's test logits (eval.finetune), fraction key -> (N, 14)
    finetune: dict[str, np.ndarray] = field(default_factory=dict)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {
            "patient": self.patient,
            "n_images": np.int64(self.n_images),
            "i2t_rank": self.i2t_rank,
            "t2i_rank": self.t2i_rank,
            "labels": self.labels,
            "zero_shot": self.zero_shot,
        }
        out.update({f"probe_{k}": v for k, v in self.probe.items()})
        out.update({f"finetune_{k}": v for k, v in self.finetune.items()})
        return out

    FILE = "rows.npz"

    def save(self, folder: Path) -> None:
        np.savez(folder / self.FILE, **self.to_arrays())

    @classmethod
    def load(cls, folder: Path) -> QueryRows:
        with np.load(folder / cls.FILE) as npz:
            return cls.from_arrays({k: npz[k] for k in npz.files})

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> QueryRows:
        probe = {k.removeprefix("probe_"): a[k] for k in a if k.startswith("probe_")}
        ft = {k.removeprefix("finetune_"): a[k] for k in a if k.startswith("finetune_")}
        return cls(
            patient=a["patient"],
            n_images=int(a["n_images"]),
            i2t_rank=a["i2t_rank"],
            t2i_rank=a["t2i_rank"],
            labels=a["labels"],
            zero_shot=a["zero_shot"],
            probe=probe,
            finetune=ft,
        )


def row_metrics(
    rows: QueryRows,
    ks: tuple[int, ...],
    probes: bool = True,
    probe_labels: Sequence[str] = LABELS,
) -> TableMetric:
    """The bootstrap's table function: headline metrics on a resample of rows.

    idx indexes QueryRows' rows (images first, then report texts); repeats are allowed.
    probes=False leaves the linear-probe metrics out (the paired tests do not use them).
    The probe means of every fraction average one label set: those of ``probe_labels``
    (the labels every fraction scores, :func:`lib.eval.probe.shared_labels`) that each
    fraction defines on the resample (:func:`shared_means`).
    """
    n = rows.n_images
    scored = [("zero_shot", rows.zero_shot)]
    if probes:
        scored += [(f"finetune_{k}", s) for k, s in rows.finetune.items()]

    def table(idx: np.ndarray) -> dict[str, float | None]:
        img = idx[idx < n]
        txt = idx[idx >= n] - n
        out: dict[str, float | None] = {}
        recalls = []
        for name, rank, sel in (("i2t", rows.i2t_rank, img), ("t2i", rows.t2i_rank, txt)):
            for k in ks:
                v = float(np.mean(rank[sel] <= k)) if len(sel) else None
                out[f"{name}_R@{k}"] = v
                recalls.append(v)
        out["mean_recall"] = None if None in recalls else float(np.mean(recalls))
        for prefix, scores in scored:
            aucs, aps = _per_label(scores[img], rows.labels[img])
            if prefix == "zero_shot":
                out.update({f"zero_shot_auc_{label_key(lb)}": a for lb, a in aucs.items()})
            out[f"{prefix}_mean_auc"] = _mean(aucs.values())
            out[f"{prefix}_mean_ap"] = _mean(aps.values())
        if probes:
            out.update(shared_means(rows.probe, rows.labels, img, probe_labels))
        return out

    return table


def shared_means(
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    idx: np.ndarray,
    probe_labels: Sequence[str],
) -> dict[str, float | None]:
    """probe_<key>_mean_auc / _mean_ap of every fraction's scores ({key: (N, 14)}) on the
    rows ``idx``, each averaging the same labels: those of ``probe_labels`` that every
    fraction defines on these rows (a resample can lose a rare label's last positive)."""
    per = {key: _per_label(s[idx], labels[idx]) for key, s in scores.items()}
    common = [lb for lb in probe_labels if all(a[lb] is not None for a, _ in per.values())]
    out: dict[str, float | None] = {}
    for key, (aucs, aps) in per.items():
        out[f"probe_{key}_mean_auc"] = _mean(aucs[lb] for lb in common)
        out[f"probe_{key}_mean_ap"] = _mean(aps[lb] for lb in common)
    return out


def probe_table(
    scores: Mapping[str, np.ndarray], labels: np.ndarray, probe_labels: Sequence[str] = LABELS
) -> TableMetric:
    """The bootstrap's table function of probe scores alone ({fraction key: (N, 14)} on N
    test images): probe_<key>_mean_auc / _mean_ap, as row_metrics computes them. For a
    representation with no text side (the raw-pixel floor, lib/eval/pixels.py)."""

    def table(idx: np.ndarray) -> dict[str, float | None]:
        return shared_means(scores, labels, idx, probe_labels)

    return table


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # flat: metrics/eval/X.json
    details: dict[str, Any]  # per-label tables, probe thresholds and confusions
    rows: QueryRows
    recall_curve: dict[str, list[float]]  # k, i2t, t2i, chance_i2t, chance_t2i
    probes: dict[str, ProbeResult]


def evaluate(
    emb: Embeddings,
    splits: Mapping[str, Split],
    prompt_emb: np.ndarray,
    neg_prompt_emb: np.ndarray | None,
    params: EvalParams,
    finetune: Mapping[str, np.ndarray] | None = None,
    finetune_meta: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Every test metric of one model from its embeddings (see the module docstring);
    ``finetune``: the fine-tuned encoders' test logits by fraction key (eval.finetune,
    lib/eval/finetune.py), scored like the probe, with ``finetune_meta`` in the details."""
    emb.check_aligned(splits)
    test = splits["test"]
    report_study, report_texts = study_reports(test)
    x_test = emb.images["test"]
    ks = tuple(params.recall_ks)

    # Retrieval.
    ranks = retrieval_ranks(x_test, test.study, emb.report_emb, report_study, report_texts)
    retrieval = summarize_ranks(ranks, ks)
    n_img, n_txt = len(ranks.i2t), len(ranks.t2i)
    curve_k = list(range(1, params.recall_curve_max_k + 1))
    curve = {
        "k": [float(k) for k in curve_k],
        "i2t": [float(np.mean(ranks.i2t <= k)) for k in curve_k],
        "t2i": [float(np.mean(ranks.t2i <= k)) for k in curve_k],
        "chance_i2t": [chance_recall(ranks.i2t_positives, n_txt, k) for k in curve_k],
        "chance_t2i": [chance_recall(ranks.t2i_positives, n_img, k) for k in curve_k],
    }

    # Zero-shot classification.
    scale = emb.inverse_temperature
    zs = zero_shot_scores(x_test, prompt_emb, neg_prompt_emb, scale=scale)
    zs_table = auc_per_label(zs, test.labels, LABELS)
    single = None
    if neg_prompt_emb is not None:
        single = auc_per_label(zero_shot_scores(x_test, prompt_emb), test.labels, LABELS)

    # Linear probe at each data fraction; every fraction's mean over the same labels.
    probes = on_shared_labels(
        {
            fraction_key(f): fit_probe(
                emb.images["train"],
                splits["train"].labels,
                emb.images["val"],
                splits["val"].labels,
                x_test,
                test.labels,
                LABELS,
                fraction=f,
                seed=params.seed,
                C=params.probe_c,
            )
            for f in params.probe_fractions
        }
    )
    shared = next(iter(probes.values())).mean_labels if probes else ()

    # Fine-tuning at each data fraction (scores computed in embed@X).
    finetune = dict(finetune or {})
    for k, scores in finetune.items():
        if scores.shape != (len(x_test), len(LABELS)):
            raise DataError(
                f"fine-tuning scores {k} have shape {scores.shape}, not ({len(x_test)}, "
                f"{len(LABELS)}) for the test split; re-run embed@ (dvc repro)"
            )
    ft_tables = {k: auc_per_label(s, test.labels, LABELS) for k, s in finetune.items()}

    # Bootstrap rows: images, then report texts (patient of the study the text came from).
    subject_of_study = dict(zip(test.study.tolist(), test.subject.tolist(), strict=True))
    text_patient = np.array(
        [subject_of_study[int(report_study[r])] for r in ranks.candidate_row], dtype=np.int64
    )
    rows = QueryRows(
        patient=np.concatenate([test.subject, text_patient]),
        n_images=n_img,
        i2t_rank=ranks.i2t,
        t2i_rank=ranks.t2i,
        labels=test.labels,
        zero_shot=zs,
        probe={k: r.test_scores for k, r in probes.items()},
        finetune=finetune,
    )
    intervals = bootstrap_table(
        row_metrics(rows, ks, probe_labels=shared),
        rows.patient,
        params.bootstrap,
        params.seed,
        params.ci_level,
    )

    m: dict[str, Any] = {}
    for key in [k for k in retrieval if "R@" in k] + ["mean_recall"]:
        _with_ci(m, key, retrieval[key], intervals[key])
    for key in ("i2t_mean_rank", "i2t_median_rank", "t2i_mean_rank", "t2i_median_rank"):
        m[key] = retrieval[key]
    for k in ks:
        m[f"chance_i2t_R@{k}"] = chance_recall(ranks.i2t_positives, n_txt, k)
        m[f"chance_t2i_R@{k}"] = chance_recall(ranks.t2i_positives, n_img, k)
    _with_ci(m, "zero_shot_mean_auc", zs_table["mean_auc"], intervals["zero_shot_mean_auc"])
    _with_ci(m, "zero_shot_mean_ap", zs_table["mean_ap"], intervals["zero_shot_mean_ap"])
    if single is not None:
        m["zero_shot_single_prompt_mean_auc"] = single["mean_auc"]
    for lb in LABELS:
        m[f"zero_shot_auc_{label_key(lb)}"] = zs_table["auc"][lb]
    m["zero_shot_undefined_labels"] = len(zs_table["undefined_labels"])
    for k, r in probes.items():
        _with_ci(m, f"probe_{k}_mean_auc", r.mean_auc, intervals[f"probe_{k}_mean_auc"])
        _with_ci(m, f"probe_{k}_mean_ap", r.mean_ap, intervals[f"probe_{k}_mean_ap"])
        m[f"probe_{k}_labels_scored"] = (
            len(LABELS) - len(r.undefined_labels) - len(r.untrainable_labels)
        )
    # How many labels each fraction's probe mean covers (the same for every fraction).
    m["probe_mean_labels"] = len(shared)
    for k, t in ft_tables.items():
        _with_ci(m, f"finetune_{k}_mean_auc", t["mean_auc"], intervals[f"finetune_{k}_mean_auc"])
        _with_ci(m, f"finetune_{k}_mean_ap", t["mean_ap"], intervals[f"finetune_{k}_mean_ap"])
    m.update(
        label_retrieval_metrics(
            x_test,
            test.labels,
            test.study,
            test.subject,
            prompt_emb,
            PRECISION_KS,
            params.bootstrap,
            params.seed,
            params.ci_level,
        )
    )
    m["mean_patch_tokens_kept"] = float(np.mean(emb.test_tokens_kept))
    mass = emb.test_mask_mass
    m["mean_mask_mass"] = None if np.isnan(mass).all() else float(np.mean(mass))
    m["n_test_images"] = n_img
    m["n_test_report_texts"] = n_txt
    m["n_test_patients"] = len(np.unique(test.subject))
    m["bootstrap_rounds"] = params.bootstrap

    details = {
        "zero_shot_mode": "prompt pair" if neg_prompt_emb is not None else "single prompt",
        "prompt_template": params.prompt_template,
        "negative_prompt_template": params.negative_prompt_template,
        "no_finding_prompts": list(params.no_finding_prompts),
        "zero_shot": {
            "auc": zs_table["auc"],
            "ap": zs_table["ap"],
            "auc_ci": {lb: _ci(intervals[f"zero_shot_auc_{label_key(lb)}"]) for lb in LABELS},
            "undefined_labels": zs_table["undefined_labels"],
            "n_positive": zs_table["n_positive"],
            "n_negative": zs_table["n_negative"],
            "single_prompt_auc": None if single is None else single["auc"],
        },
        "probe": {k: r.to_dict() for k, r in probes.items()},
        "finetune": {
            k: {**dict((finetune_meta or {}).get(k, {})), "auc": t["auc"], "ap": t["ap"]}
            for k, t in ft_tables.items()
        },
        "ci_level": params.ci_level,
        "bootstrap_rounds": params.bootstrap,
        "seed": params.seed,
    }
    return EvalResult(
        metrics={k: _round(v) for k, v in m.items()},
        details=details,
        rows=rows,
        recall_curve=curve,
        probes=probes,
    )


def _per_label(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """AUC and AP per label, None where undefined (one class, or an untrainable probe's
    NaN column); ignored (-1) entries left out."""
    nan_col = np.isnan(scores).any(axis=0)
    valid = (labels != IGNORE_LABEL) & ~nan_col[None, :]
    auc, ap = auc_ap_columns(np.where(valid, scores, 0.0), labels == 1, valid)
    return (
        {lb: None if np.isnan(a) else float(a) for lb, a in zip(LABELS, auc, strict=True)},
        {lb: None if np.isnan(a) else float(a) for lb, a in zip(LABELS, ap, strict=True)},
    )


def _mean(values: Any) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _ci(iv: Interval) -> list[float | None]:
    return [iv.low, iv.high]


def _with_ci(out: dict[str, Any], key: str, value: float | None, iv: Interval) -> None:
    out[key] = value
    out[f"{key}_ci_low"] = iv.low
    out[f"{key}_ci_high"] = iv.high


def _round(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return round(float(v), 6)
    if isinstance(v, np.integer):
        return int(v)
    return v
