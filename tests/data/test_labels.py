import numpy as np
import pandas as pd
import pytest

from lib.data.labels import IGNORE, apply_policy, inject_labels
from lib.data.mimic import LABELS
from lib.errors import DataError

RAW = pd.DataFrame({"x": [1.0, 0.0, -1.0, np.nan]})


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("positive_only", [1, 0, 0, 0]),
        ("u_ones", [1, 0, 1, 0]),
        ("u_zeros", [1, 0, 0, 0]),
        ("u_ignore", [1, 0, IGNORE, 0]),
    ],
)
def test_policies(policy, expected):
    assert apply_policy(RAW, policy)["x"].tolist() == expected


def test_unknown_policy():
    with pytest.raises(ValueError, match="u_ones"):
        apply_policy(RAW, "u_twos")


def images(studies, subjects=None):
    subjects = subjects or [10000001] * len(studies)
    return pd.DataFrame(
        {
            "dicom_id": [f"d{i}" for i in range(len(studies))],
            "subject_id": subjects,
            "study_id": studies,
        }
    )


def chex(rows):
    out = []
    for subject, study, values in rows:
        r = {"subject_id": subject, "study_id": study}
        r.update({lb: np.nan for lb in LABELS})
        r.update(values)
        out.append(r)
    return pd.DataFrame(out)


def test_join_by_study_and_missing_rows_flagged():
    imgs = images([50000001, 50000001, 50000002])
    c = chex([(10000001, 50000001, {"Cardiomegaly": 1.0, "Edema": -1.0})])
    out, m = inject_labels(imgs, c, "positive_only")
    assert out["Cardiomegaly"].tolist() == [1, 1, 0]
    assert out["Edema"].tolist() == [0, 0, 0]
    assert out["labels_missing"].tolist() == [False, False, True]
    assert m["studies_without_label_row"] == 1 and m["images_without_label_row"] == 1
    assert m["raw_values"]["Edema"] == {"positive": 0, "negative": 0, "uncertain": 2, "blank": 1}
    assert m["rows_out"] == 3 and m["dropped_total"] == 0


def test_u_ignore_marks_unlabelled_studies_ignored():
    out, _ = inject_labels(
        images([50000001, 50000002]), chex([(10000001, 50000001, {"Edema": -1.0})]), "u_ignore"
    )
    assert out["Edema"].tolist() == [IGNORE, IGNORE]
    assert out["Cardiomegaly"].tolist() == [0, IGNORE]


def test_subject_mismatch_and_duplicates_are_counted():
    imgs = images([50000001, 50000002, 50000003])
    c = chex(
        [
            (10000009, 50000001, {"Cardiomegaly": 1.0}),  # wrong patient
            (10000001, 50000002, {"Edema": 1.0}),
            (10000001, 50000002, {"Edema": 1.0}),
            (10000001, 50000003, {"Edema": 1.0}),
            (10000001, 50000003, {"Edema": 0.0}),
        ]
    )
    out, m = inject_labels(imgs, c, "positive_only")
    assert out["labels_missing"].tolist() == [True, False, True]
    assert out["Cardiomegaly"].tolist() == [0, 0, 0]
    assert m["label_file_dropped"] == {
        "conflicting_label_rows_for_study": 2,
        "duplicate_label_row": 1,
        "label_row_subject_mismatch_studies": 1,
    }


def test_bad_label_value_names_column_and_value():
    c = chex([(10000001, 50000001, {"Edema": 2.0})])
    with pytest.raises(DataError, match=r"'Edema'.*\['2.0'\].*50000001"):
        inject_labels(images([50000001]), c, "positive_only", "chexpert.csv.gz")
    c = chex([(10000001, 50000001, {"Fracture": "yes"})])
    with pytest.raises(DataError, match="'Fracture'"):
        inject_labels(images([50000001]), c, "positive_only")
