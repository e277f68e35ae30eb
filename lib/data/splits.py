"""Stage logic of split: the official patient-disjoint split, applied per image."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib.data.tables import DropLog, parse_ids
from lib.errors import DataError

SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
SPLITS = ("train", "val", "test")


def find_leakage(df: pd.DataFrame) -> pd.DataFrame:
    """Patients that appear in more than one split: subject_id and the splits they span."""
    n_splits = df.groupby("subject_id")["split"].nunique()
    offenders = n_splits.index[n_splits > 1]
    part = df[df["subject_id"].isin(offenders)]
    per_subject = part.groupby("subject_id")["split"].agg(lambda s: sorted(set(s)))
    return per_subject.rename("splits").reset_index()


def apply_split(
    images: pd.DataFrame, split_file: pd.DataFrame, source: str = "split"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Images with a ``split`` column (train / val / test) taken from the official file.

    Raises DataError listing the offenders if a patient ends up in two splits.
    """
    log, file_log = DropLog(), DropLog()
    sp = parse_ids(split_file, ["subject_id", "study_id"], file_log)
    bad_value = ~sp["split"].isin(list(SPLIT_NAMES))
    if bad_value.any():
        values = sorted({str(v) for v in sp.loc[bad_value, "split"]})[:5]
        raise DataError(
            f"{source}: column 'split' holds {int(bad_value.sum())} value(s) other than "
            f"{list(SPLIT_NAMES)}, e.g. {values}; fix or re-download the split file"
        )
    sp = sp.drop_duplicates()
    conflicting = sp["dicom_id"].duplicated(keep=False)
    if conflicting.any():
        ids = sp.loc[conflicting, "dicom_id"].drop_duplicates().head(10).tolist()
        raise DataError(
            f"{source}: {int(conflicting.sum())} rows give one dicom_id different splits or ids, "
            f"e.g. {ids}; fix or re-download the split file"
        )
    split_file_rows = len(split_file)
    sp = sp.set_index("dicom_id")

    df = images.copy()
    matched = sp.reindex(df["dicom_id"].to_numpy())
    df = df.assign(
        split=matched["split"].map(SPLIT_NAMES).to_numpy(),
        _split_subject=matched["subject_id"].to_numpy(),
        _split_study=matched["study_id"].to_numpy(),
    )
    df = log.drop(df, df["split"].isna(), "not_in_split_file", "dicom_id")
    mismatch = (df["_split_subject"] != df["subject_id"]) | (df["_split_study"] != df["study_id"])
    df = log.drop(df, mismatch, "ids_differ_from_metadata", "dicom_id")
    df = df.drop(columns=["_split_subject", "_split_study"]).reset_index(drop=True)

    leaked = find_leakage(df)
    if len(leaked):
        lines = "\n".join(
            f"  subject_id {r.subject_id}: {', '.join(r.splits)}"
            for r in leaked.head(20).itertuples()
        )
        raise DataError(
            f"{source}: {len(leaked)} patient(s) appear in more than one split, which would leak "
            f"test patients into training:\n{lines}\nUse the official "
            "mimic-cxr-2.0.0-split.csv.gz, which is patient-disjoint"
        )
    counts = df["split"].value_counts()
    metrics = {
        "rows_in": len(images),
        "rows_out": len(df),
        "split_file_rows": split_file_rows,
        "images": {s: int(counts.get(s, 0)) for s in SPLITS},
        "patients": {s: int(df.loc[df["split"] == s, "subject_id"].nunique()) for s in SPLITS},
        "studies": {s: int(df.loc[df["split"] == s, "study_id"].nunique()) for s in SPLITS},
        "leaked_patients": 0,
        **log.metrics(),
        **{f"split_file_{k}": v for k, v in file_log.metrics().items()},
    }
    return df, metrics
