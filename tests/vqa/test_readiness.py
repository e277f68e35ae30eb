"""The VQA readiness gate (lib/vqa/readiness.py): each check with one failing case, the
bias warnings, the tables it builds, and require_ready's refusal naming the report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lib.config.loader import load_params
from lib.errors import DataError
from lib.vqa.reader import read_qba
from lib.vqa.readiness import build, require_ready, skipped_reason, skipped_report
from tests.vqa.qba_fixture import FINDINGS, make_qba, master_frame, study_questions, write_study

REPO = Path(__file__).resolve().parents[2]
PARAMS = dataclasses.replace(
    load_params(REPO / "params.yaml").vqa_data, min_questions=10, max_type_fraction=0.6
)


def _build(root: Path, rows, params=PARAMS, master_rows=None):
    data = read_qba(root, params.max_malformed_fraction)
    return build(data, master_frame(master_rows or rows), params, str(root))


def test_a_well_formed_folder_is_ready(tmp_path):
    rows = make_qba(tmp_path)
    qdf, sdf, vocab, report = _build(tmp_path, rows)
    assert report["ready"] and not report["reasons"]
    assert len(qdf) == 24 * 5 and set(qdf["split"]) == {"train", "val", "test"}
    assert report["distributions"]["heads"] == {
        "binary": 48,
        "category": 24,
        "region": 24,
        "severity": 24,
    }
    # the prefix-less type is mapped to the params' identifier
    assert "D02_has_finding" in set(qdf["question_type"])
    assert vocab["regions"] == sorted(r for _, r in FINDINGS)
    assert vocab["severities"] == ["mild"]
    assert vocab["templates"]["D03_where_is_finding"] == "The {finding} is in the {region}."
    # yes and no are as frequent here: each keeps its own template
    assert vocab["templates"]["D02_has_finding"] == "{answer}, there is {finding}."
    assert vocab["negative_templates"]["D02_has_finding"] == "{answer}, there is no {finding}."
    assert vocab["templates"]["D01_is_abnormal"] == "{answer}, the chest X-ray is abnormal."
    assert set(vocab["negative_templates"]) == {"D01_is_abnormal", "D02_has_finding"}
    assert report["scene_graphs"]["observations_per_graph"] == 1.0
    assert report["scene_graphs"]["box_coverage"] == 1.0
    assert report["split_check"]["mismatches"] == 0
    assert sdf["x2"].max() <= 1.0  # boxes as fractions of the image


def test_too_few_questions_is_not_ready(tmp_path):
    rows = make_qba(tmp_path, n_studies=4)  # 20 questions
    params = dataclasses.replace(PARAMS, min_questions=50)
    report = _build(tmp_path, rows, params)[3]
    assert not report["ready"] and "< vqa_data.min_questions = 50" in report["reasons"][0]


def test_no_question_kept_is_not_ready(tmp_path):
    rows = make_qba(tmp_path, n_studies=4)
    params = dataclasses.replace(PARAMS, min_grade="A++")
    _, _, _, report = _build(tmp_path, rows, params)
    assert not report["ready"] and "no QA pairs kept" in report["reasons"][0]
    assert report["dropped"] == {"below_min_grade": 20}


def test_no_test_split_is_not_ready(tmp_path):
    rows = make_qba(tmp_path, split_of=lambda i: "train")
    report = _build(tmp_path, rows)[3]
    assert not report["ready"] and "no QA pairs in the test split" in report["reasons"]


def test_images_outside_the_master_file_are_not_ready(tmp_path):
    rows = make_qba(tmp_path)
    other = [(f"other{i}", 90000000 + i, 70000000 + i, "train") for i in range(3)]
    report = _build(tmp_path, rows, master_rows=other)[3]
    assert not report["ready"]
    assert "no image of the QBA metadata is in the master file" in report["reasons"]
    assert report["dropped"]["study_not_in_master"] == 120


def test_split_mismatches_are_counted_and_the_masters_split_is_used(tmp_path):
    rows = make_qba(tmp_path)
    master = [(d, p, s, "train" if sp == "val" else sp) for d, p, s, sp in rows]
    qdf, _, _, report = _build(tmp_path, rows, master_rows=master)
    assert report["split_check"]["mismatches"] == 6
    assert report["split_check"]["by_pair"] == {"val->train": 6}
    assert "val" not in set(qdf["split"])
    assert any("another split" in w for w in report["warnings"])


def test_polarity_imbalance_warns(tmp_path):
    rows = make_qba(tmp_path)
    for dicom, subject, study, _ in rows:  # every binary answer yes
        write_study(
            tmp_path, subject, study, study_questions(dicom, "edema", "bilateral lungs", True)
        )
    report = _build(tmp_path, rows)[3]
    assert report["ready"] and report["distributions"]["polarity"] == {"yes": 48, "no": 0}
    assert any(w.startswith("polarity imbalance") for w in report["warnings"])


def test_an_under_represented_region_warns(tmp_path):
    rows = make_qba(tmp_path)
    params = dataclasses.replace(PARAMS, min_region_fraction=0.3)  # each region is 25 %
    warnings = _build(tmp_path, rows, params)[3]["warnings"]
    assert sum(w.startswith("under-represented region") for w in warnings) == 4


def test_question_type_skew_warns(tmp_path):
    rows = make_qba(tmp_path)
    params = dataclasses.replace(PARAMS, max_type_fraction=0.15)  # each type is 20 %
    warnings = _build(tmp_path, rows, params)[3]["warnings"]
    assert sum(w.startswith("question-type skew") for w in warnings) == 5


def test_unsupported_types_and_missing_tags_are_counted(tmp_path):
    rows = make_qba(tmp_path)
    dicom, subject, study, _ = rows[0]
    qs = study_questions(dicom, "edema", "bilateral lungs", True)
    describe = {**qs[0], "question_id": "q9", "question_type": "B01_describe_all"}
    no_region = json.loads(json.dumps(qs[2]))
    no_region["answers"][0]["regions"] = []
    write_study(tmp_path, subject, study, [*qs[:2], no_region, describe])
    report = _build(tmp_path, rows)[3]
    assert report["dropped"] == {"unsupported_type": 1, "no_region_tag": 1}


def test_require_ready_names_the_report(tmp_path):
    path = tmp_path / "readiness.json"
    with pytest.raises(DataError, match=r"readiness.json: no VQA readiness report"):
        require_ready(path)
    path.write_text(json.dumps({"ready": False, "reasons": ["no QA pairs kept"]}))
    with pytest.raises(DataError, match=r"readiness.json: the VQA data is not ready \(no QA"):
        require_ready(path)
    path.write_text(json.dumps({"ready": True, "reasons": []}))
    require_ready(path)


def test_a_skipped_report_is_told_apart_from_a_failed_one(tmp_path):
    path = tmp_path / "readiness.json"
    path.write_text(json.dumps(skipped_report("data.vqa is null")))
    assert skipped_reason(path) == "data.vqa is null"
    path.write_text(json.dumps({"ready": False, "reasons": ["x"]}))
    assert skipped_reason(path) is None
