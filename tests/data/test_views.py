import gzip

import pandas as pd
import pytest

from lib.data.mimic import METADATA_COLUMNS, image_relpath
from lib.data.tables import read_csv_checked
from lib.data.views import filter_views
from lib.errors import DataError


def meta(rows):
    base = {c: "" for c in METADATA_COLUMNS}
    return pd.DataFrame([{**base, **r} for r in rows], columns=list(METADATA_COLUMNS))


def did(tag: str) -> str:
    """A dicom_id of MIMIC's shape named by a short tag ("" stays blank)."""
    return "-".join([tag.encode().hex().rjust(8, "0")] * 5) if tag else ""


def row(dicom, view, subject="10000001", study="50000001", raw_dicom=False):
    return {
        "dicom_id": dicom if raw_dicom else did(dicom),
        "subject_id": subject,
        "study_id": study,
        "ViewPosition": view,
        "Rows": "3056",
        "Columns": "2544",
        "StudyDate": "21800506",
    }


def test_keeps_selected_views_and_counts_every_value():
    df = meta(
        [
            row("a", "PA"),
            row("b", "LATERAL"),
            row("c", "AP"),
            row("d", ""),
            row("e", "AP AXIAL"),
            row("f", "AP"),
        ]
    )
    out, m = filter_views(df, ("PA", "AP"))
    assert sorted(out["dicom_id"]) == [did("a"), did("c"), did("f")]
    assert m["views"]["AP"] == {"seen": 2, "kept": 2, "dropped": 0}
    assert m["views"]["(blank)"] == {"seen": 1, "kept": 0, "dropped": 1}
    assert m["views"]["AP AXIAL"]["dropped"] == 1
    assert m["dropped"] == {"view_not_selected": 3}
    assert m["rows_in"] == 6 and m["rows_out"] == 3
    assert out["subject_id"].dtype == "int64" and out["rows"].tolist() == [3056] * 3


def test_duplicates_and_bad_ids_are_dropped_and_counted():
    df = meta(
        [
            row("a", "PA"),
            row("a", "PA"),  # exact duplicate
            row("b", "PA"),
            row("b", "AP"),  # one dicom, two views
            row("c", "PA", subject="abc"),  # not an integer id
            row("d", "PA", study=""),  # missing id
            row("", "PA"),  # missing dicom_id
        ]
    )
    out, m = filter_views(df, ("PA", "AP"))
    assert out["dicom_id"].tolist() == [did("a")]
    assert m["dropped"] == {
        "conflicting_duplicate_dicom_id": 2,
        "duplicate_row": 1,
        "invalid_study_id": 1,
        "invalid_subject_id": 1,
        "missing_dicom_id": 1,
    }
    assert m["dropped_examples"]["invalid_subject_id"] == ["abc"]
    assert m["dropped_total"] == 6


def test_ids_not_of_mimic_shape_are_dropped_before_any_path(tmp_path):
    """A crafted dicom_id ("../../..") or an id of the wrong shape would build a path out of
    data.root (issue 27.7): each is dropped and counted by reason, with the bad value."""
    escape = "../../../../etc/passwd"
    df = meta(
        [
            row("a", "PA"),
            row(escape, "PA", raw_dicom=True),
            row("ABCDEF01-0-0-0-0", "PA", raw_dicom=True),  # not 5 x 8 lowercase hex
            row("c", "PA", subject="123"),  # not 8 digits starting with 1
            row("d", "PA", study="40000001"),  # study ids start with 5
        ]
    )
    out, m = filter_views(df, ("PA", "AP"))
    assert out["dicom_id"].tolist() == [did("a")]
    assert m["dropped"] == {"invalid_dicom_id": 2, "invalid_study_id": 1, "invalid_subject_id": 1}
    assert m["dropped_examples"]["invalid_dicom_id"] == [escape, "ABCDEF01-0-0-0-0"]
    assert m["dropped_examples"]["invalid_subject_id"] == ["123"]
    # The path builder refuses such an id too, naming it and the fix.
    with pytest.raises(DataError, match=r"dicom_id '\.\./.*filter_views"):
        image_relpath(10000001, 50000001, escape)


def test_selected_view_absent_is_reported():
    _, m = filter_views(meta([row("a", "PA")]), ("PA", "AP"))
    assert m["selected_views_not_found"] == ["AP"]


def test_read_csv_checked_errors_name_file_key_and_columns(tmp_path):
    with pytest.raises(DataError, match=r"not found; set data.root"):
        read_csv_checked(tmp_path / "x.csv.gz", ["a"], "data.root")
    path = tmp_path / "m.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("dicom_id,subject\nx,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['study_id'\]"):
        read_csv_checked(path, ["dicom_id", "study_id"], "data.root")
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="cannot be read"):
        read_csv_checked(bad, ["a"], "data.root")
