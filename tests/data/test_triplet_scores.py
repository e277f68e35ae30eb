"""The triplets' table, its counts and its agreement with CheXpert labels, by hand."""

import json

import pytest

from lib.data.mimic import LABELS
from lib.data.triplet_scores import NO_FINDING, label_agreement, predicted_labels
from lib.data.triplet_table import agreement, master_studies, triplet_table
from lib.errors import DataError


def _labels(**present: int) -> list[int]:
    return [present.get(lb.replace(" ", "_"), 0) for lb in LABELS]


def test_predicted_labels_and_no_finding():
    assert predicted_labels(["pleural effusion"], [1], ["present"]) == {"Pleural Effusion"}
    assert predicted_labels(["pleural effusion"], [0], ["absent"]) == {NO_FINDING}
    # an uncertain finding is not "No Finding", even when the policy makes it absent
    assert predicted_labels(["pneumonia"], [0], ["uncertain"]) == set()
    # support devices may accompany No Finding, as in CheXpert
    got = predicted_labels(["endotracheal tube"], [1], ["present"])
    assert got == {"Support Devices", NO_FINDING}


def test_label_agreement_by_hand():
    labels = {
        1: _labels(Pleural_Effusion=1),
        2: _labels(Pneumonia=1, Edema=-1),
        3: _labels(No_Finding=1),
    }
    predicted = {1: {"Pleural Effusion", "Edema"}, 2: {"Edema"}}  # 3: nothing -> No Finding
    got = label_agreement(predicted, labels)
    micro = got["micro"]
    # tp: effusion@1; fp: edema@1 (edema@2 is ignored, -1); fn: pneumonia@2
    assert (micro["tp"], micro["fp"], micro["fn"]) == (1, 1, 1)
    assert micro["precision"] == micro["recall"] == 0.5
    assert got["per_label"][NO_FINDING]["tp"] == 1
    assert got["ignored_cells"] == 1
    assert got["per_label"]["Fracture"]["precision"] is None  # never predicted: undefined


def test_triplet_table_applies_the_label_policy():
    texts = ["Cannot exclude pneumonia. No pneumothorax.", "Heart size is normal."]
    table, counts = triplet_table([10, 11], texts, "u_ignore")
    rows = table[["study_id", "entity", "existence"]].values.tolist()
    # a normal observation is an entity of its own, and rules its finding out
    assert rows == [[10, "pneumothorax", 0], [11, "normal heart size", 1], [11, "cardiomegaly", 0]]
    assert counts["uncertain_left_out_by_policy"] == 1
    ones, _ = triplet_table([10], texts[:1], "u_ones")
    assert dict(zip(ones["entity"], ones["existence"], strict=True)) == {
        "pneumonia": 1,
        "pneumothorax": 0,
    }
    assert str(ones["existence"].dtype) == "int8"


def test_master_studies_one_row_per_study_and_no_labels_without_a_row(tmp_path):
    path = tmp_path / "master.jsonl"
    row = {"study_id": 5, "text": "No effusion.", "labels": dict.fromkeys(LABELS, 0)}
    rows = [row, row, {**row, "study_id": 6, "labels_missing": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    studies, texts, labels = master_studies(path)
    assert studies == [5, 6] and texts == ["No effusion."] * 2 and list(labels) == [5]
    table, _ = triplet_table(studies, texts, "positive_only")
    assert agreement(table, labels)["studies"] == 1
    path.write_text(json.dumps({**row, "text": None}) + "\n")
    with pytest.raises(DataError, match="master.jsonl:1: study 5 has no 'text'"):
        master_studies(path)
