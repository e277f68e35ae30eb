"""Stage logic of inject_labels: the 14 CheXpert labels joined by study, under a policy
for uncertain (-1) and blank values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lib.data.mimic import LABELS
from lib.data.tables import DropLog, parse_ids
from lib.errors import DataError

IGNORE = -1  # label value that losses and metrics mask out (policy u_ignore)
VALID_VALUES = (1.0, 0.0, -1.0)

# policy → (value for uncertain -1, value for blank); 1 stays 1 and 0 stays 0 everywhere.
POLICIES: dict[str, tuple[int, int]] = {
    "positive_only": (0, 0),  # the spec: only a stated positive counts
    "u_ones": (1, 0),
    "u_zeros": (0, 0),
    "u_ignore": (IGNORE, 0),
}


def apply_policy(raw: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Map raw CheXpert values (1, 0, -1, NaN) to int8 labels under ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown label policy {policy!r}; valid: {sorted(POLICIES)}")
    uncertain, blank = POLICIES[policy]
    values = raw.to_numpy(dtype=np.float64, copy=True)
    out = np.where(values == 1, 1, 0).astype(np.int8)
    out[values == -1] = uncertain
    out[np.isnan(values)] = blank
    return pd.DataFrame(out, columns=raw.columns, index=raw.index)


def check_label_values(chexpert: pd.DataFrame, source: str) -> None:
    """Fail on any value other than 1, 0, -1 or blank, naming the column and the value."""
    for label in LABELS:
        col = pd.to_numeric(chexpert[label], errors="coerce")
        bad = (col.isna() & chexpert[label].notna()) | (col.notna() & ~col.isin(VALID_VALUES))
        if bad.any():
            first = chexpert.loc[bad].iloc[0]
            values = sorted({str(v) for v in chexpert.loc[bad, label]})[:5]
            raise DataError(
                f"{source}: column '{label}' holds {int(bad.sum())} value(s) outside "
                f"1.0 / 0.0 / -1.0 / blank, e.g. {values} (first at study_id "
                f"{first['study_id']}); fix or re-download the CheXpert label file"
            )


def inject_labels(
    images: pd.DataFrame, chexpert: pd.DataFrame, policy: str, source: str = "chexpert"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Images with one int8 column per label and a ``labels_missing`` flag.

    Studies with no (usable) label row are kept and flagged: their labels are 0, or
    IGNORE under ``u_ignore`` (nothing is known about them).
    """
    log = DropLog()
    check_label_values(chexpert, source)
    chex = parse_ids(chexpert, ["subject_id", "study_id"], log)
    chex = log.drop(chex, chex.duplicated(keep="first"), "duplicate_label_row", "study_id")
    conflicting = chex["study_id"].duplicated(keep=False)
    chex = log.drop(chex, conflicting, "conflicting_label_rows_for_study", "study_id")
    chex = chex.set_index("study_id")

    raw = chex.reindex(images["study_id"].to_numpy())[list(LABELS)].astype("float64")
    label_subject = chex["subject_id"].reindex(images["study_id"].to_numpy()).to_numpy()
    has_row = ~np.isnan(label_subject.astype("float64"))
    mismatch = has_row & (label_subject != images["subject_id"].to_numpy())
    if mismatch.any():
        studies = images.loc[mismatch, "study_id"].drop_duplicates()
        log.note("label_row_subject_mismatch_studies", len(studies), [str(s) for s in studies])
        raw.loc[mismatch] = np.nan
    missing = ~has_row | mismatch

    labels = apply_policy(raw, policy)
    if policy == "u_ignore":
        labels.loc[missing] = IGNORE
    out = pd.concat([images.reset_index(drop=True), labels.reset_index(drop=True)], axis=1).assign(
        labels_missing=missing
    )

    study_missing = out.loc[out["labels_missing"], "study_id"].drop_duplicates()
    raw_kept = raw.reset_index(drop=True)
    metrics: dict[str, Any] = {
        "rows_in": len(images),
        "rows_out": len(out),
        "label_policy": policy,
        "label_rows": len(chex),
        "images_without_label_row": int(missing.sum()),
        "studies_without_label_row": len(study_missing),
        "studies_without_label_row_examples": [str(s) for s in study_missing.head(10)],
        "raw_values": {
            label: {
                "positive": int((raw_kept[label] == 1).sum()),
                "negative": int((raw_kept[label] == 0).sum()),
                "uncertain": int((raw_kept[label] == -1).sum()),
                "blank": int(raw_kept[label].isna().sum()),
            }
            for label in LABELS
        },
        "positives_after_policy": {label: int((out[label] == 1).sum()) for label in LABELS},
        # No image row is dropped here; rows of the label file itself may be.
        "dropped": {},
        "dropped_total": 0,
        **{f"label_file_{k}": v for k, v in log.metrics().items()},
    }
    return out, metrics
