"""The VQA readiness gate (the seed's phase 1): checks, distributions and bias warnings of a
MIMIC-Ext-CXR-QBA-format directory, and ``require_ready`` for the stages behind the gate."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.data.splits import SPLIT_NAMES
from lib.errors import DataError
from lib.vqa import schema as S
from lib.vqa.reader import QbaData


def require_ready(report_path: Path) -> None:
    """Raise DataError naming ``report_path`` unless it exists and says ``"ready": true``."""
    report_path = Path(report_path)
    if not report_path.is_file():
        raise DataError(
            f"{report_path}: no VQA readiness report; run `dvc repro vqa_readiness` first"
        )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if not report.get("ready", False):
        reasons = "; ".join(report.get("reasons", [])) or "no reason given"
        raise DataError(
            f"{report_path}: the VQA data is not ready ({reasons}); fix data.vqa or the "
            f"QBA directory and rerun `dvc repro vqa_readiness`"
        )


# --- building the tables and the report ---------------------------------------------------


PLACEHOLDERS = ("finding", "region", "severity")
_YES_NO = {1: "Yes", 0: "No"}


def frontal_images(master: pd.DataFrame, views: tuple[str, ...]) -> pd.DataFrame:
    """One row per study: its first image in the master file whose view is in ``views``."""
    m = master[master["view"].isin(views)]
    return m.drop_duplicates("study_id")[["study_id", "subject_id", "dicom_id", "split"]]


def _vocab(values: list[str | None], order: tuple[str, ...] = ()) -> list[str]:
    present = {v for v in values if v}
    known = [v for v in order if v in present]
    return known + sorted(present - set(known))


def _template(text: str, q: dict[str, Any]) -> str:
    """The answer text with its tags put back as placeholders (longest first)."""
    out = text
    for key in sorted(PLACEHOLDERS, key=lambda k: -len(str(q.get(_TAG[k]) or ""))):
        tag = q.get(_TAG[key])
        if tag and tag in out:
            out = out.replace(tag, "{" + key + "}")
    if q.get("positive") in _YES_NO and out.startswith(_YES_NO[q["positive"]]):
        out = "{answer}" + out[len(_YES_NO[q["positive"]]) :]
    return out


_TAG = {"finding": "entity", "region": "region", "severity": "severity"}


def templates(rows: list[dict[str, Any]], positive: int | None = None) -> dict[str, str]:
    """Question type -> its most frequent main-answer template (ties: first alphabetically)."""
    counts: dict[str, Counter[str]] = {}
    for q in rows:
        if positive is not None and q["positive"] != positive:
            continue
        counts.setdefault(q["question_type"], Counter())[_template(q["answer_text"], q)] += 1
    return {t: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for t, c in counts.items()}


def _share_warnings(counts: Counter[str], floor: float, what: str) -> list[str]:
    total = sum(counts.values())
    return [
        f"under-represented {what} {k!r}: {v} of {total} ({v / total:.1%} < {floor:.1%})"
        for k, v in sorted(counts.items())
        if total and v / total < floor
    ]


def build(
    data: QbaData, master: pd.DataFrame, params: Any, source: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """(questions, scene, vocab, report) of what ``read_qba`` found (docs/vqa.md).

    ``params`` is the ``vqa_data`` section. Questions are kept when their type has a head,
    their grade is at least ``min_grade``, their study has a frontal image in the master
    file, and the head's tag is there; the rest are counted by reason.
    """
    heads = S.head_of_types(
        {
            "binary": params.binary_types,
            "category": params.category_types,
            "region": params.region_types,
            "severity": params.severity_types,
        }
    )
    frontal = frontal_images(master, tuple(params.views)).set_index("study_id")
    images = data.images.set_index("dicom_id")
    min_rank = S.GRADES.index(params.min_grade)
    dropped: Counter[str] = Counter(data.malformed)
    kept: list[dict[str, Any]] = []
    all_grades: Counter[str] = Counter()
    for q in data.questions:
        all_grades[q["grade"]] += 1
        name = S.type_name(q["question_type"])
        if name not in heads:
            dropped["unsupported_type"] += 1
            continue
        head, canonical = heads[name]
        if S.GRADES.index(q["grade"]) < min_rank:
            dropped["below_min_grade"] += 1
            continue
        if q["study_id"] not in frontal.index:
            dropped["study_not_in_master"] += 1
            continue
        tag = {"binary": "positive", "category": "entity", "region": "region"}.get(head, "severity")
        if q[tag] is None:
            dropped[f"no_{tag}_tag"] += 1
            continue
        dicom = str(frontal.at[q["study_id"], "dicom_id"])
        if dicom not in images.index:
            dropped["image_not_in_metadata"] += 1
            continue
        kept.append({**q, "question_type": canonical, "head": head, "dicom_id": dicom})
    if params.max_questions_per_study:
        rng = random.Random(params.seed)
        by_study: dict[int, list[dict[str, Any]]] = {}
        for q in kept:
            by_study.setdefault(q["study_id"], []).append(q)
        kept = []
        for sid in sorted(by_study):
            qs = by_study[sid]
            if len(qs) > params.max_questions_per_study:
                dropped["over_max_per_study"] += len(qs) - params.max_questions_per_study
                qs = sorted(
                    rng.sample(qs, params.max_questions_per_study), key=lambda q: q["question_id"]
                )
            kept += qs

    obs = data.observations
    vocab = {
        "categories": _vocab([q["entity"] for q in kept] + [o["entity"] for o in obs]),
        "regions": _vocab([q["region"] for q in kept] + [o["region"] for o in obs]),
        "severities": _vocab([q["severity"] for q in kept], S.SEVERITY_ORDER),
        "question_types": sorted({q["question_type"] for q in kept}),
    }
    # A binary type's template is its "yes" answer's, its negative template its "no"
    # answer's, whichever is the more frequent; other types: their most frequent answer's.
    binary = {q["question_type"] for q in kept if q["head"] == "binary"}
    vocab["templates"] = templates(kept) | {
        t: v for t, v in templates(kept, positive=1).items() if t in binary
    }
    vocab["negative_templates"] = {
        t: v for t, v in templates(kept, positive=0).items() if t in binary
    }
    index = {
        k: {v: i for i, v in enumerate(vocab[k])} for k in ("categories", "regions", "severities")
    }

    rows = []
    for q in kept:
        img = images.loc[q["dicom_id"]]
        rows.append(
            {
                "question_id": q["question_id"],
                "study_id": q["study_id"],
                "subject_id": int(frontal.at[q["study_id"], "subject_id"]),
                "dicom_id": q["dicom_id"],
                "split": str(frontal.at[q["study_id"], "split"]),
                "question_type": q["question_type"],
                "head": q["head"],
                "question": q["question"],
                "grade": q["grade"],
                "answer_text": q["answer_text"],
                "binary": q["positive"] if q["head"] == "binary" else -1,
                "category": index["categories"].get(q["entity"], -1),
                "region": index["regions"].get(q["region"], -1),
                "severity": index["severities"].get(q["severity"], -1),
                "boxes": q["localization"].get(q["dicom_id"], []),
                "image_width": int(img["width"]),
                "image_height": int(img["height"]),
            }
        )
    qdf = pd.DataFrame(rows, columns=QUESTION_COLUMNS).astype(QUESTION_DTYPES)

    scene_rows = []
    for o in obs:
        box, img_id = o["box"], o["image_id"]
        if box is None or img_id not in images.index:
            scene_rows.append((o, None))
            continue
        w, h = float(images.at[img_id, "width"]), float(images.at[img_id, "height"])
        scene_rows.append((o, [box[0] / w, box[1] / h, box[2] / w, box[3] / h]))
    sdf = pd.DataFrame(
        [
            {
                "study_id": o["study_id"],
                "entity": index["categories"].get(o["entity"], -1),
                "region": index["regions"].get(o["region"], -1),
                "positive": -1 if o["positive"] is None else o["positive"],
                **dict(
                    zip(
                        ("x1", "y1", "x2", "y2"),
                        np.clip(b, 0, 1) if b else [np.nan] * 4,
                        strict=True,
                    )
                ),
            }
            for o, b in scene_rows
        ],
        columns=SCENE_COLUMNS,
    ).astype(SCENE_DTYPES)

    report = readiness_report(data, qdf, sdf, vocab, params, source, dropped, all_grades, master)
    return qdf, sdf, vocab, report


QUESTION_DTYPES = {
    "question_id": str, "study_id": "int64", "subject_id": "int64", "dicom_id": str,
    "split": str, "question_type": str, "head": str, "question": str, "grade": str,
    "answer_text": str, "binary": "int8", "category": "int16", "region": "int16",
    "severity": "int8", "boxes": object, "image_width": "int32", "image_height": "int32",
}  # fmt: skip
QUESTION_COLUMNS = list(QUESTION_DTYPES)
SCENE_DTYPES = {
    "study_id": "int64", "entity": "int16", "region": "int16", "positive": "int8",
    "x1": "float32", "y1": "float32", "x2": "float32", "y2": "float32",
}  # fmt: skip
SCENE_COLUMNS = list(SCENE_DTYPES)


def _dist(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(series.value_counts().items())}


def readiness_report(
    data: QbaData,
    qdf: pd.DataFrame,
    sdf: pd.DataFrame,
    vocab: dict[str, Any],
    params: Any,
    source: str,
    dropped: Counter[str],
    all_grades: Counter[str],
    master: pd.DataFrame,
) -> dict[str, Any]:
    """Checks (ready / reasons), distributions, scene-graph quality and bias warnings."""
    reasons: list[str] = []
    warnings: list[str] = []
    n_q = len(qdf)
    if n_q == 0:
        reasons.append("no QA pairs kept (see dropped)")
    elif n_q < params.min_questions:
        reasons.append(f"{n_q} QA pairs kept < vqa_data.min_questions = {params.min_questions}")
    master_images = set(master["dicom_id"])
    meta_in_master = int(data.images["dicom_id"].isin(master_images).sum())
    if meta_in_master == 0:
        reasons.append("no image of the QBA metadata is in the master file")
    for split in ("train", "test"):
        if n_q and not (qdf["split"] == split).any():
            reasons.append(f"no QA pairs in the {split} split")

    # Split check: each study's QBA split against the master's.
    ours = master.drop_duplicates("study_id").set_index("study_id")["split"]
    theirs = data.images.drop_duplicates("study_id").set_index("study_id")["split"]
    theirs = theirs.map(lambda v: SPLIT_NAMES.get(v, v))
    common = theirs.index.intersection(ours.index)
    mism = theirs.loc[common] != ours.loc[common]
    split_check = {
        "studies_compared": len(common),
        "mismatches": int(mism.sum()),
        "by_pair": _dist(theirs.loc[common][mism] + "->" + ours.loc[common][mism]),
        "studies_not_in_master": int(len(theirs) - len(common)),
    }
    if split_check["mismatches"]:
        warnings.append(
            f"{split_check['mismatches']} of {len(common)} studies have another split in the "
            f"QBA metadata than in the master file (the master's is used)"
        )

    binary = qdf.loc[qdf["head"] == "binary", "binary"]
    polarity = {"yes": int((binary == 1).sum()), "no": int((binary == 0).sum())}
    if len(binary) and min(polarity.values()) / len(binary) < params.min_polarity_fraction:
        warnings.append(
            f"polarity imbalance: {polarity} (minority below {params.min_polarity_fraction:.0%})"
        )
    reg = qdf.loc[qdf["head"] == "region", "region"]
    region_counts = Counter(vocab["regions"][i] for i in reg if i >= 0)
    warnings += _share_warnings(region_counts, params.min_region_fraction, "region")
    types = Counter(qdf["question_type"])
    for t, v in sorted(types.items()):
        if n_q and v / n_q > params.max_type_fraction:
            warnings.append(
                f"question-type skew: {t} is {v / n_q:.0%} of the questions "
                f"(> {params.max_type_fraction:.0%})"
            )
    per_graph = sdf.groupby("study_id").size() if len(sdf) else pd.Series(dtype=int)
    boxed = sdf["x1"].notna() if len(sdf) else pd.Series(dtype=bool)
    n_boxes = qdf["boxes"].map(len) if n_q else pd.Series(dtype=int)
    return {
        "ready": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "source": source,
        "qa_source": data.qa_source,
        "checks": {
            "qa_files": data.files,
            "scene_graph_files": data.scene_files,
            "questions_read": len(data.questions) + sum(data.malformed.values()),
            "questions_kept": n_q,
            "metadata_images": len(data.images),
            "metadata_images_in_master": meta_in_master,
            "studies_with_questions": int(qdf["study_id"].nunique()) if n_q else 0,
        },
        "dropped": dict(sorted(dropped.items())),
        "split_check": split_check,
        "distributions": {
            "polarity": polarity,
            "heads": _dist(qdf["head"]),
            "question_types": _dist(qdf["question_type"]),
            "regions": dict(sorted(region_counts.items())),
            "grades_read": dict(sorted(all_grades.items())),
            "grades_kept": _dist(qdf["grade"]),
            "splits": _dist(qdf["split"]),
        },
        "scene_graphs": {
            "graphs": len(per_graph),
            "observations": len(sdf),
            "observations_per_graph": float(per_graph.mean()) if len(per_graph) else None,
            "box_coverage": float(boxed.mean()) if len(sdf) else None,
            "questions_with_boxes": float((n_boxes > 0).mean()) if n_q else None,
        },
        "vocab_sizes": {k: len(vocab[k]) for k in ("categories", "regions", "severities")},
    }


def skipped_report(reason: str) -> dict[str, Any]:
    """The report when VQA is skipped (data.vqa null)."""
    return {"ready": False, "skipped": reason, "reasons": [reason], "warnings": []}


def skipped_reason(report_path: Path) -> str | None:
    """Why VQA is skipped (data.vqa null), from the readiness report; None when it is not."""
    report_path = Path(report_path)
    if not report_path.is_file():
        return None
    return json.loads(report_path.read_text(encoding="utf-8")).get("skipped")
