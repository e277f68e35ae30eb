"""Stage logic of qc: the readiness gate in front of training.

Drops unusable rows (counted by reason), checks that the data is fit (images found,
no empty split, no leakage, few missing images) and builds the master records.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.config.params import QCParams
from lib.data.labels import IGNORE
from lib.data.mimic import LABELS, SUBJECT_IN_PATH, image_relpath
from lib.data.splits import SPLITS, find_leakage
from lib.data.tables import DropLog
from lib.errors import DataError

JPEG_MAGIC = b"\xff\xd8\xff"
MASTER_FIELDS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "split",
    "view",
    "image",
    "findings",
    "impression",
    "text",
    "labels",
    "labels_missing",
)


def check_image(path: str, mode: str) -> str | None:
    """None if the image is usable, else the reason (``image_missing``/``image_unreadable``)."""
    try:
        if mode == "exists":
            return None if os.stat(path).st_size > 0 else "image_unreadable"
        with open(path, "rb") as fh:
            return None if fh.read(3) == JPEG_MAGIC else "image_unreadable"
    except FileNotFoundError:
        return "image_missing"
    except OSError:
        return "image_unreadable"


def image_problems(
    relpaths: pd.Series, root: Path, params: QCParams, listing: set[str] | None
) -> np.ndarray:
    """Per image: '' if usable, else why not. With a listing, nothing touches the disk."""
    if listing is not None:
        # Plain set membership: ~20x faster than Series.isin on Arrow strings at MIMIC size.
        return np.array(["" if p in listing else "image_missing" for p in relpaths], dtype=object)
    paths = [str(root / p) for p in relpaths]
    with ThreadPoolExecutor(params.io_threads) as pool:
        found = pool.map(check_image, paths, [params.image_check] * len(paths), chunksize=256)
        return np.array([r or "" for r in found], dtype=object)


def read_listing(path: Path) -> set[str]:
    """Image paths relative to the data root, one per line (MIMIC-CXR-JPG's IMAGE_FILENAMES)."""
    if not path.is_file():
        raise DataError(f"{path}: image listing not found; fix qc.image_listing or set it to null")
    with path.open(encoding="utf-8") as fh:
        return {line.strip().removeprefix("./") for line in fh if line.strip()}


_SUBJECT_IN_PATH = re.compile(SUBJECT_IN_PATH)


def read_holdout(path: Path) -> set[int]:
    """Subject ids to keep out of training and validation (``data.holdout_patients_from``).

    Accepts a CSV with a ``subject_id`` column; a CSV with a ``path`` column in the
    MIMIC-CXR-JPG layout (``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``: MS-CXR's own
    file, whose patients are then held out); or a plain file of subject ids, one per line.
    """
    if not path.is_file():
        raise DataError(f"{path}: not found; fix data.holdout_patients_from or set it to null")
    head = path.read_text(encoding="utf-8").splitlines()[:1]
    first = head[0].split(",")[0].strip() if head else ""
    if "," in (head or [""])[0] or first in ("subject_id", "path"):  # a CSV with a header
        df = pd.read_csv(path, dtype=str)
        if "subject_id" in df.columns:
            values = df["subject_id"].dropna().str.strip()
            bad = values[~values.str.fullmatch(r"\d+")]
            if len(bad):
                raise DataError(
                    f"{path}: column 'subject_id' holds non-numeric values, e.g. "
                    f"{bad.iloc[0]!r}; give MIMIC-CXR subject ids (8 digits)"
                )
            return {int(v) for v in values}
        if "path" in df.columns:
            found = df["path"].fillna("").str.extract(_SUBJECT_IN_PATH)[0]
            if found.isna().any():
                bad = df.loc[found.isna(), "path"].iloc[0]
                raise DataError(
                    f"{path}: column 'path' value {bad!r} is not a MIMIC-CXR-JPG image path "
                    "(files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg)"
                )
            return {int(v) for v in found}
        raise DataError(
            f"{path}: a CSV needs a 'subject_id' or a 'path' column (MS-CXR's file has "
            f"'path'); found {list(df.columns)[:8]}"
        )
    ids: set[int] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        value = line.strip()
        if not value:
            continue
        if not value.isdigit():
            raise DataError(
                f"{path}: line {n} is {value!r}, not a subject id; one MIMIC-CXR subject_id "
                "per line"
            )
        ids.add(int(value))
    return ids


def run_qc(
    images: pd.DataFrame,
    reports: pd.DataFrame,
    root: Path,
    min_report_chars: int,
    params: QCParams,
    listing: set[str] | None = None,
    holdout: set[int] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Kept rows (image + report + labels) and the QC metrics; raises DataError when the
    data is unfit for training, with every reason in one message.

    ``holdout``: subject ids whose train and validation images are dropped (counted as
    ``holdout_patient``), e.g. MS-CXR's patients, so that phrase grounding is scored on
    images no model has seen; their test images stay."""
    log = DropLog()
    n_in = len(images)
    if n_in == 0:
        raise DataError(
            "qc: no images reached quality control; check data.root and data.views "
            "(see metrics/filter_views.json for the views found)"
        )
    df = images.copy()
    df["image"] = [
        image_relpath(s, t, d)
        for s, t, d in zip(df["subject_id"], df["study_id"], df["dicom_id"], strict=True)
    ]
    missing_inputs = missing_labels_and_reports(images, reports)
    problems = image_problems(df["image"], root, params, listing)
    n_missing = int((problems != "").sum())
    for reason in ("image_missing", "image_unreadable"):
        df = log.drop(df, pd.Series(problems == reason, index=df.index), reason, "image")
        problems = problems[problems != reason]

    rep = reports.set_index("study_id")
    df = df.join(rep.drop(columns=["subject_id"]), on="study_id")
    df["status"] = df["status"].fillna("missing")
    for status in ("missing", "subject_mismatch", "unreadable"):
        df = log.drop(df, df["status"] == status, f"report_{status}", "study_id")
    df = log.drop(df, df["report_chars"] < min_report_chars, "report_too_short", "study_id")
    df = log.drop(df, df["text"].fillna("").str.strip() == "", "text_empty", "study_id")
    holdout_metrics: dict[str, Any] = {}
    if holdout is not None:
        held = df["subject_id"].isin(holdout)
        holdout_metrics = {
            "holdout_patients": len(holdout),
            "holdout_patients_found": int(df.loc[held, "subject_id"].nunique()),
            "holdout_patients_in_test": int(
                df.loc[held & (df["split"] == "test"), "subject_id"].nunique()
            ),
        }
        df = log.drop(df, held & (df["split"] != "test"), "holdout_patient", "subject_id")
    df = df.sort_values(["subject_id", "study_id", "dicom_id"]).reset_index(drop=True)
    # Texts are whitespace-collapsed, so words = spaces + 1 (vectorised, no Python split).
    df["text_words"] = df["text"].str.count(" ").astype("int64") + 1

    metrics: dict[str, Any] = {
        "rows_in": n_in,
        "rows_out": len(df),
        "missing_image_fraction": round(n_missing / n_in, 6),
        **{f"missing_{k}_fraction": round(len(v) / n_in, 6) for k, v in missing_inputs.items()},
        **holdout_metrics,
        **log.metrics(),
        **distribution(df),
    }
    failures = readiness_failures(df, n_missing, n_in, params)
    failures += missing_input_failures(missing_inputs, n_in, params)
    metrics["warnings"] = readiness_warnings(df)
    metrics["ready"] = not failures
    if failures:
        raise DataError(
            "qc: the data is not fit for training:\n"
            + "\n".join(f"  - {f}" for f in failures)
            + "\nDropped rows by reason: "
            + json.dumps(metrics["dropped"])
        )
    return df, metrics


def missing_labels_and_reports(images: pd.DataFrame, reports: pd.DataFrame) -> dict[str, pd.Series]:
    """Study ids (one per image) of the images that reached QC without a CheXpert label row
    (``label``) and without a readable report (``report``: missing, subject mismatch or
    unreadable), before any row is dropped."""
    status = images["study_id"].map(reports.set_index("study_id")["status"]).fillna("missing")
    no_label = images["labels_missing"].astype(bool) if "labels_missing" in images else False
    return {
        "label": images.loc[no_label, "study_id"],
        "report": images.loc[status != "ok", "study_id"],
    }


def missing_input_failures(missing: dict[str, pd.Series], n_in: int, params: QCParams) -> list[str]:
    """A label file or reports archive that does not match the images (issue 27.2): the
    images would train on all-zero labels, or most of them drop out, without a word."""
    fixes = {
        "label": (
            "have no CheXpert label row",
            params.max_missing_label_fraction,
            "check that data.root's mimic-cxr-2.0.0-chexpert.csv.gz belongs to this metadata "
            "file (its study_ids must match; see metrics/inject_labels.json)",
        ),
        "report": (
            "have no readable report",
            params.max_missing_report_fraction,
            "check that data.reports is the complete mimic-cxr-reports.zip for this data.root "
            "(see metrics/extract_reports.json)",
        ),
    }
    failures = []
    for kind, (what, limit, fix) in fixes.items():
        studies = missing[kind]
        if len(studies) / n_in > limit:
            examples = [str(s) for s in studies.drop_duplicates().head(5)]
            failures.append(
                f"{len(studies)} of {n_in} images ({len(studies) / n_in:.2%}) {what} (study_id "
                f"e.g. {examples}), above qc.max_missing_{kind}_fraction = {limit}; {fix}, "
                "or raise the threshold"
            )
    return failures


def readiness_failures(df: pd.DataFrame, n_missing: int, n_in: int, params: QCParams) -> list[str]:
    failures = []
    if n_missing / n_in > params.max_missing_image_fraction:
        failures.append(
            f"{n_missing} of {n_in} images ({n_missing / n_in:.2%}) are missing or unreadable, "
            f"above qc.max_missing_image_fraction = {params.max_missing_image_fraction}; "
            "check data.root (it must hold files/) or raise the threshold"
        )
    if len(df) == 0:
        failures.append("no usable rows are left after quality control")
    else:
        for split in SPLITS:
            if not (df["split"] == split).any():
                failures.append(f"split '{split}' is empty after quality control")
        leaked = find_leakage(df)
        if len(leaked):
            failures.append(f"{len(leaked)} patient(s) appear in more than one split")
    return failures


def readiness_warnings(df: pd.DataFrame, min_positives: int = 10) -> list[str]:
    """Bias and reliability warnings that do not block training."""
    warnings = []
    for split in ("val", "test"):
        part = df[df["split"] == split]
        if part.empty:
            continue
        few = [lb for lb in LABELS if int((part[lb] == 1).sum()) < min_positives]
        if few:
            warnings.append(
                f"{split}: fewer than {min_positives} positives for {few}; their AUCs will be noisy"
            )
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    if len(train) and len(test):
        for lb in LABELS:
            p_tr, p_te = (train[lb] == 1).mean(), (test[lb] == 1).mean()
            if min(p_tr, p_te) > 0 and max(p_tr, p_te) / min(p_tr, p_te) > 2:
                warnings.append(
                    f"{lb}: prevalence differs more than 2x between train ({p_tr:.1%}) "
                    f"and test ({p_te:.1%})"
                )
    return warnings


def distribution(df: pd.DataFrame) -> dict[str, Any]:
    """The spec's distribution table (positives per label and split), views and text lengths."""
    table: dict[str, Any] = {}
    for split in SPLITS:
        part = df[df["split"] == split]
        entry: dict[str, Any] = {
            "total": len(part),
            "patients": int(part["subject_id"].nunique()),
            "studies": int(part["study_id"].nunique()),
        }
        entry.update({lb: int((part[lb] == 1).sum()) for lb in LABELS})
        ignored = {lb: int((part[lb] == IGNORE).sum()) for lb in LABELS}
        if any(ignored.values()):
            entry["ignored"] = ignored
        table[split] = entry
    words = df["text_words"] if len(df) else pd.Series(dtype=float)
    return {
        "distribution": table,
        "views": {str(k): int(v) for k, v in df["view"].value_counts().sort_index().items()},
        "text_words": {
            q: float(words.quantile(v)) if len(words) else 0.0
            for q, v in (("p05", 0.05), ("median", 0.5), ("p95", 0.95))
        },
    }


_STR_FIELDS = ("dicom_id", "split", "view", "image", "findings", "impression", "text")


def master_lines(df: pd.DataFrame) -> Iterator[str]:
    """One JSON line per image, fields in the order of ``MASTER_FIELDS``.

    Assembled from per-field encodings rather than ``json.dumps`` of a nested dict: the
    label block repeats across images and is encoded once per distinct label vector,
    which makes writing MIMIC's ~240k records several times faster.
    """
    enc = json.encoder.encode_basestring  # the C string encoder json.dumps itself uses
    strs = {c: [enc(v) for v in df[c].astype(str)] for c in _STR_FIELDS}
    subjects, studies = df["subject_id"].tolist(), df["study_id"].tolist()
    missing = ["true" if v else "false" for v in df["labels_missing"]]
    label_rows = df[list(LABELS)].to_numpy(dtype=np.int64)
    label_json: dict[bytes, str] = {}
    for i in range(len(df)):
        key = label_rows[i].tobytes()
        labels = label_json.get(key)
        if labels is None:
            labels = json.dumps(dict(zip(LABELS, label_rows[i].tolist(), strict=True)))
            label_json[key] = labels
        yield (
            f'{{"dicom_id": {strs["dicom_id"][i]}, "subject_id": {subjects[i]}, '
            f'"study_id": {studies[i]}, "split": {strs["split"][i]}, '
            f'"view": {strs["view"][i]}, "image": {strs["image"][i]}, '
            f'"findings": {strs["findings"][i]}, "impression": {strs["impression"][i]}, '
            f'"text": {strs["text"][i]}, "labels": {labels}, '
            f'"labels_missing": {missing[i]}}}\n'
        )


def write_jsonl(lines: Iterable[str], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(lines)


def pipeline_drops(stage_metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Image rows dropped by every data stage, by reason (from their metrics files)."""
    return {
        stage: {"dropped": m.get("dropped", {}), "dropped_total": m.get("dropped_total", 0)}
        for stage, m in stage_metrics.items()
    }
