"""The triplets of every study of the master file: one table row per (study, entity,
position) mention, the label policy applied, and the counts the stage reports."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lib.data.mimic import LABELS
from lib.data.triplet_scores import label_agreement, predicted_labels
from lib.data.triplets import apply_label_policy, extract_many
from lib.errors import DataError

COLUMNS = ("study_id", "entity", "position", "certainty", "existence")


def master_studies(path: Path) -> tuple[list[int], list[str], dict[int, list[int]]]:
    """(study ids, report texts, study -> its 14 labels) of the master file, one per study
    (its images share the report and the labels), in file order. Studies without a CheXpert
    row (``labels_missing``: all-zero labels that say nothing) have no labels entry."""
    if not path.is_file():
        raise DataError(f"{path}: master file not found; run `dvc repro qc` first")
    studies: list[int] = []
    texts: list[str] = []
    labels: dict[int, list[int]] = {}
    seen: set[int] = set()
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            rec = json.loads(line)
            study = int(rec["study_id"])
            if study in seen:
                continue
            seen.add(study)
            text = rec.get("text")
            if not isinstance(text, str):
                raise DataError(
                    f"{path}:{n}: study {study} has no 'text' (got {text!r}); rebuild the "
                    "master file with `dvc repro qc`"
                )
            studies.append(study)
            texts.append(text)
            if not rec.get("labels_missing", False):
                labels[study] = [int(rec["labels"][lb]) for lb in LABELS]
    return studies, texts, labels


def triplet_table(
    studies: Iterable[int], texts: Iterable[str], policy: str
) -> tuple[pd.DataFrame, dict[str, object]]:
    """(table with ``COLUMNS``, counts). Uncertain mentions follow ``policy``
    (``apply_label_policy``): under ``u_ignore`` they are left out, and counted."""
    rows: list[tuple[int, str, str, str, int]] = []
    by_certainty: Counter[str] = Counter()
    left_out = 0
    without: list[int] = []
    studies = list(studies)
    for study, found in zip(studies, extract_many(texts), strict=True):
        kept = 0
        for t in found:
            by_certainty[t.certainty] += 1
            existence = apply_label_policy(t.certainty, policy)
            if existence is None:
                left_out += 1
                continue
            rows.append((study, t.entity, t.position, t.certainty, existence))
            kept += 1
        if not kept:
            without.append(study)
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(
        {"study_id": "int64", "existence": "int8"}
    )
    counts = {
        "studies": len(studies),
        "triplets": len(table),
        "studies_without_triplet": len(without),
        "studies_without_triplet_examples": without[:5],
        "mentions_by_certainty": dict(sorted(by_certainty.items())),
        "uncertain_left_out_by_policy": left_out,
        "label_policy": policy,
        "present_by_entity": _counts(table["entity"][table["existence"] == 1]),
        "absent_by_entity": _counts(table["entity"][table["existence"] == 0]),
        "by_position": _counts(table["position"]),
    }
    return table, counts


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(n) for k, n in values.value_counts().items()}


def agreement(table: pd.DataFrame, labels: dict[int, list[int]]) -> dict[str, object]:
    """``label_agreement`` of the table's studies against their CheXpert labels."""
    predicted = {
        int(study): predicted_labels(
            g["entity"].tolist(), g["existence"].tolist(), g["certainty"].tolist()
        )
        for study, g in table.groupby("study_id", sort=False)
    }
    return label_agreement(predicted, labels)
