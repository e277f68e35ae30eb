"""The VQA run's pieces that decide what a number means: the scene nodes the model sees
(no leak of the study's findings), the floors, answer rendering of "no", and the paired
tests and section of results.md (lib/vqa/report.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.vqa.answers import render_all
from lib.vqa.report import FLOORS, REFERENCES, VqaResults, beats, paired, section
from lib.vqa.train import frequent_answers, predict_frequent, scene_nodes

SCENE = pd.DataFrame(
    {
        "study_id": [1, 1, 2, 3],
        "entity": [0, 1, 2, 0],
        "region": [0, 1, 1, 2],
        "positive": [1, 1, 1, 1],
        "x1": [0.1, 0.5, 0.3, 0.2],
        "y1": [0.1, 0.5, 0.3, 0.2],
        "x2": [0.4, 0.9, 0.7, 0.6],
        "y2": [0.4, 0.9, 0.7, 0.6],
    }
).astype({"x1": "float32", "y1": "float32", "x2": "float32", "y2": "float32"})


def test_anatomy_nodes_are_one_atlas_for_every_study():
    """Study 4 has no observation and study 1 two: both see the same nodes, the regions of
    the train studies (1, 2) with their mean boxes; no entity."""
    sc = scene_nodes(SCENE, np.array([1, 4, 3]), "anatomy", reference=np.array([1, 2]))
    assert (sc.boxes[0] == sc.boxes[1]).all() and (sc.boxes[1] == sc.boxes[2]).all()
    assert sc.mask.sum(1).tolist() == [2, 2, 2]
    assert sc.region[0].tolist() == [1, 2] and (sc.entity == 0).all()
    np.testing.assert_allclose(sc.boxes[0, 1, :4], [0.4, 0.4, 0.8, 0.8], atol=1e-6)
    np.testing.assert_allclose(sc.boxes[0, 1, 4:], [0.4, 0.4], atol=1e-6)  # w, h


def test_full_nodes_are_the_studys_own_observations():
    sc = scene_nodes(SCENE, np.array([1, 4]), "full", reference=np.array([1]))
    assert sc.mask.sum(1).tolist() == [2, 1]  # study 4: one empty node
    assert sc.entity[0].tolist() == [1, 2] and sc.region[1].tolist() == [0, 0]


def _questions(types, heads, targets):
    cols = {h: [-1] * len(types) for h in ("binary", "category", "region", "severity")}
    for i, (h, t) in enumerate(zip(heads, targets, strict=True)):
        cols[h][i] = t
    return pd.DataFrame(
        {"question_id": [f"q{i}" for i in range(len(types))], "question_type": types,
         "head": heads, **cols}
    )  # fmt: skip


def test_the_frequent_floor_answers_each_types_mode():
    train = _questions(["has", "has", "has", "where", "where"], ["binary"] * 3 + ["region"] * 2,
                       [1, 0, 0, 2, 2])  # fmt: skip
    answers = frequent_answers(train)
    assert answers == {"has": 0, "where": 2}
    test = _questions(["where", "has", "new"], ["region", "binary", "binary"], [1, 0, 1])
    assert predict_frequent(answers, test).pred.tolist() == [2, 0, 0]


def test_a_no_renders_the_negative_template():
    vocab = {
        "categories": ["effusion"],
        "regions": [],
        "severities": [],
        "templates": {"D02": "{answer}, there is {finding}."},
        "negative_templates": {"D02": "{answer}, there is no {finding}."},
    }
    q = _questions(["D02", "D02"], ["binary", "binary"], [1, 0]).assign(category=0)
    assert render_all(q, [1, 0], vocab) == ["Yes, there is effusion.", "No, there is no effusion."]


def _table(correct, heads, subjects):
    n = len(correct)
    return pd.DataFrame(
        {"question_id": [f"q{i}" for i in range(n)], "subject_id": subjects, "head": heads,
         "correct": np.asarray(correct, float)}
    )  # fmt: skip


def test_paired_tests_and_the_floor_verdict():
    rng = np.random.default_rng(0)
    n = 400
    heads = np.array(["binary", "region", "category", "severity"])[np.arange(n) % 4]
    subjects = np.arange(n) // 2
    floor = _table(rng.random(n) < 0.5, heads, subjects)
    better = _table(rng.random(n) < 0.9, heads, subjects)
    tests = paired(floor, better, 300, 0, 0.95, "floor/better")
    assert tests["all"].diff > 0.3 and beats(tests["binary"]) and beats(tests["region"])
    same = paired(floor, floor, 300, 0, 0.95, "floor/floor")
    assert same["all"].diff == 0 and not beats(same["all"]) and same["all"].p_value == 1


def _metrics(acc):
    iv = {"point": acc, "low": acc - 0.05, "high": acc + 0.05}
    none = {"point": None, "low": None, "high": None}
    return {
        "n_questions": 400, "n_patients": 200, "questions_per_split": {"train": 9, "val": 3},
        "bertscore_model": "data/backbone/demo",
        "intervals": {"correct": iv, "em": iv, "f1": iv, "rouge_l": iv, "bertscore": iv,
                      "attention_iou": none, "attention_mass": none,
                      "attention_entropy": none},
        "accuracy_by_head": {h: iv for h in ("binary", "category", "region", "severity")},
        "bleu4": 0.5, "spatial": {"mean_iou": 0.4, "pointing": 0.3}, "clinical": {"mcc": 0.2},
    }  # fmt: skip


def test_the_section_lists_every_row_and_the_verdicts():
    rng = np.random.default_rng(1)
    n = 200
    heads = np.array(["binary", "region"])[np.arange(n) % 2]
    rows = ["A", *REFERENCES, *FLOORS]
    tables = {r: _table(rng.random(n) < 0.8, heads, np.arange(n)) for r in rows}
    tables["question_only"] = _table(np.zeros(n), heads, np.arange(n))
    res = VqaResults({r: _metrics(0.8) for r in rows}, tables)
    base = {r: paired(tables["A"], tables[r], 200, 0, 0.95, r) for r in rows[1:]}
    floor = {r: paired(tables["question_only"], tables[r], 200, 0, 0.95, r)
             for r in ["A", *REFERENCES]}  # fmt: skip
    text = "\n".join(section(res, ["A"], "A", base, floor, 0.95, True))
    assert "| Model A | 0.800 [0.750, 0.850] |" in text
    assert "*floor:* question only (no image, no scene graph)" in text
    assert "the text tower of `data/backbone/demo`" in text
    assert text.count("| yes |") == 2  # A and the pretrained row beat the floor on both
    skipped = section(VqaResults({}, {}, "data.vqa is null"), ["A"], "A", {}, {}, 0.95, True)
    assert skipped[-1] == "Skipped: data.vqa is null."
