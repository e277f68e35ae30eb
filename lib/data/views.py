"""Stage logic of filter_views: keep the frontal images (ViewPosition in data.views)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib.data.mimic import (
    DICOM_ID_PATTERN,
    METADATA_COLUMNS,
    STUDY_ID_PATTERN,
    SUBJECT_ID_PATTERN,
)
from lib.data.tables import DropLog, parse_ids

BLANK_VIEW = "(blank)"
# Columns carried forward; Rows/Columns are the image geometry later stages may use.
IMAGE_COLUMNS = ("dicom_id", "subject_id", "study_id", "view", "rows", "cols", "study_date")


def filter_views(
    metadata: pd.DataFrame, views: tuple[str, ...]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows of the official metadata whose ViewPosition is in ``views``, one per dicom_id.

    Returns the kept images and a metrics dict counting every view value seen, kept and
    dropped, and every row dropped by reason (ids not of MIMIC-CXR's shape included).
    """
    log = DropLog()
    n_in = len(metadata)
    df = metadata.loc[:, list(METADATA_COLUMNS)]
    df = log.drop(
        df,
        df["dicom_id"].isna() | (df["dicom_id"].astype(str).str.strip() == ""),
        "missing_dicom_id",
        "study_id",
    )
    df = parse_ids(df, ["subject_id", "study_id"], log)
    # Ids become file paths (files/pXX/p<subject>/s<study>/<dicom_id>.jpg): an id not of
    # MIMIC-CXR's shape ("../..", "/", a short number) is dropped before any path is built.
    for col, pattern in (
        ("subject_id", SUBJECT_ID_PATTERN),
        ("study_id", STUDY_ID_PATTERN),
        ("dicom_id", DICOM_ID_PATTERN),
    ):
        bad = ~df[col].astype(str).str.fullmatch(pattern)
        df = log.drop(df, bad, f"invalid_{col}", col)  # examples show the bad values
    df = log.drop(df, df.duplicated(keep="first"), "duplicate_row", "dicom_id")
    conflicting = df["dicom_id"].duplicated(keep=False)
    df = log.drop(df, conflicting, "conflicting_duplicate_dicom_id", "dicom_id")

    view = df["ViewPosition"].fillna("").astype(str).str.strip()
    seen = view.replace("", BLANK_VIEW).value_counts()
    keep = view.isin(views)
    kept = view[keep].value_counts()
    df = log.drop(df.assign(view=view), ~keep, "view_not_selected", "dicom_id")

    out = pd.DataFrame(
        {
            "dicom_id": df["dicom_id"].astype(str),
            "subject_id": df["subject_id"].astype("int64"),
            "study_id": df["study_id"].astype("int64"),
            "view": df["view"].astype(str),
            "rows": pd.to_numeric(df["Rows"], errors="coerce").astype("Int64"),
            "cols": pd.to_numeric(df["Columns"], errors="coerce").astype("Int64"),
            "study_date": pd.to_numeric(df["StudyDate"], errors="coerce").astype("Int64"),
        }
    ).reset_index(drop=True)
    per_view = {
        str(v): {"seen": int(n), "kept": int(kept.get(v, 0)), "dropped": int(n - kept.get(v, 0))}
        for v, n in seen.items()
    }
    metrics = {
        "rows_in": n_in,
        "rows_out": len(out),
        "views_selected": list(views),
        "views": per_view,
        **log.metrics(),
    }
    missing_views = [v for v in views if v not in per_view]
    if missing_views:
        metrics["selected_views_not_found"] = missing_views
    return out, metrics
