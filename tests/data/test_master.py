"""Reading the master file (lib/data/master.py)."""

import json

import numpy as np
import pytest

from lib.data.master import first_per_study, read_master
from lib.data.mimic import LABELS
from lib.errors import DataError


def test_read_master(tmp_path):
    path = tmp_path / "m.jsonl"
    recs = [
        {
            "image": f"i{i}",
            "study_id": 50000000 + i,
            "subject_id": 10000000 + i,
            "text": f"t{i}",
            "dicom_id": f"d{i}",
            "split": s,
            "labels": {lb: int(lb == "Edema") for lb in LABELS},
        }
        for i, s in enumerate(["train", "train", "val", "test"])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    splits = read_master(path)
    assert len(splits["train"]) == 2 and splits["val"].texts == ["t2"]
    assert splits["test"].labels.shape == (1, 14)
    assert splits["test"].labels[0, LABELS.index("Edema")] == 1
    with pytest.raises(DataError, match="dvc repro qc"):
        read_master(tmp_path / "none.jsonl")


def test_first_per_study_keeps_the_order_of_first_appearance():
    assert first_per_study(np.array([7, 3, 7, 9, 3, 9])) == [0, 1, 3]
    assert first_per_study(np.array([], dtype=np.int64)) == []
