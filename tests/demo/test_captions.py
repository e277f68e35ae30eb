"""Figure captions of the pretraining corpus (lib/demo/captions.py)."""

from __future__ import annotations

import math
import random

import pytest

from lib.data.mimic import LABELS, NO_FINDING
from lib.demo.captions import ABSENT, NORMAL, TERMS, write_caption

FINDINGS = [lb for lb in LABELS if lb != NO_FINDING]


def test_every_finding_has_names_and_the_label_name_is_one_of_them():
    assert set(TERMS) == set(ABSENT) == set(FINDINGS)
    for label in FINDINGS:
        assert TERMS[label][0] == label.lower()
        assert ABSENT[label][0] == label.lower()


@pytest.mark.parametrize("label", FINDINGS)
def test_a_positive_finding_is_named(label):
    for seed in range(20):
        text = write_caption({label: 1.0}, random.Random(seed))
        named = [t for t in TERMS[label] if t in text.lower()]
        assert named, text


def test_uncertain_and_unmentioned_findings_are_not_named():
    labels = {"Pneumothorax": -1.0, "Edema": math.nan, "Cardiomegaly": 1.0}
    for seed in range(50):
        text = write_caption(labels, random.Random(seed)).lower()
        assert "pneumothorax" not in text and "collapsed lung" not in text
        assert "edema" not in text


def test_an_absent_finding_is_negated_never_stated():
    labels = {"Pleural Effusion": 0.0, "Cardiomegaly": 1.0}
    negated = 0
    for seed in range(200):
        text = write_caption(labels, random.Random(seed)).lower()
        if "pleural" in text:
            assert "without pleural" in text or "; no pleural" in text, text
            negated += 1
    assert 20 < negated < 120  # sometimes (P_ABSENT), not always


def test_a_study_with_no_positive_finding_reads_as_normal():
    for seed in range(30):
        text = write_caption({"No Finding": 1.0, "Edema": 0.0}, random.Random(seed))
        assert text in NORMAL or "no finding" in text


def test_the_wording_is_drawn_from_the_rng_only():
    labels = {"Cardiomegaly": 1.0, "Edema": 1.0, "Fracture": 0.0}
    a = [write_caption(labels, random.Random(3)) for _ in range(3)]
    assert len(set(a)) == 1
    many = {write_caption(labels, random.Random(s)) for s in range(40)}
    assert len(many) > 10
