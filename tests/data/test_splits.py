import pandas as pd
import pytest

from lib.data.splits import apply_split
from lib.errors import DataError


def images(rows):
    return pd.DataFrame(rows, columns=["dicom_id", "subject_id", "study_id"])


def split_file(rows):
    return pd.DataFrame(rows, columns=["dicom_id", "study_id", "subject_id", "split"])


def test_official_split_applied_and_validate_renamed():
    imgs = images(
        [
            ("a", 10000001, 50000001),
            ("b", 10000002, 50000002),
            ("c", 10000003, 50000003),
            ("d", 10000004, 50000004),
        ]
    )
    sp = split_file(
        [
            ("a", 50000001, 10000001, "train"),
            ("b", 50000002, 10000002, "validate"),
            ("c", 50000003, 10000003, "test"),
            ("z", 50000009, 10000009, "train"),
        ]
    )
    out, m = apply_split(imgs, sp)
    assert out["split"].tolist() == ["train", "val", "test"]
    assert m["dropped"] == {"not_in_split_file": 1}
    assert m["dropped_examples"]["not_in_split_file"] == ["d"]
    assert m["images"] == {"train": 1, "val": 1, "test": 1}


def test_ids_that_disagree_with_metadata_are_dropped():
    imgs = images([("a", 10000001, 50000001), ("b", 10000002, 50000002)])
    sp = split_file([("a", 50000001, 10000001, "train"), ("b", 50000002, 10000999, "train")])
    out, m = apply_split(imgs, sp)
    assert out["dicom_id"].tolist() == ["a"]
    assert m["dropped"] == {"ids_differ_from_metadata": 1}


def test_leakage_lists_offending_patients():
    imgs = images([("a", 10000001, 50000001), ("b", 10000001, 50000002), ("c", 10000002, 50000003)])
    sp = split_file(
        [
            ("a", 50000001, 10000001, "train"),
            ("b", 50000002, 10000001, "test"),
            ("c", 50000003, 10000002, "test"),
        ]
    )
    with pytest.raises(DataError, match=r"(?s)1 patient\(s\).*subject_id 10000001: test, train"):
        apply_split(imgs, sp)


def test_bad_split_value_and_conflicting_rows():
    imgs = images([("a", 10000001, 50000001)])
    with pytest.raises(DataError, match="'split'.*holdout"):
        apply_split(imgs, split_file([("a", 50000001, 10000001, "holdout")]))
    with pytest.raises(DataError, match="different splits"):
        apply_split(
            imgs,
            split_file([("a", 50000001, 10000001, "train"), ("a", 50000001, 10000001, "test")]),
        )
