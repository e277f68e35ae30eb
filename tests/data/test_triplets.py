"""Triplet extraction on hand-written MIMIC-style sentences, label policies, vocabulary."""

import pytest

from lib.data.mimic import LABELS
from lib.data.triplet_vocab import (
    ENTITY_BY_NAME,
    ENTITY_NAMES,
    POSITION_NAMES,
    UNSPECIFIED,
    chexpert_entity,
    vocab_record,
)
from lib.data.triplets import Triplet, apply_label_policy, extract


def test_negation():
    assert extract("No pneumothorax.") == [Triplet("pneumothorax", UNSPECIFIED, "absent")]
    got = extract("There is no evidence of pleural effusion or pneumothorax.")
    assert {(t.entity, t.certainty) for t in got} == {
        ("pleural effusion", "absent"),
        ("pneumothorax", "absent"),
    }


def test_uncertainty_overrides_negex():
    assert extract("Cannot exclude pneumonia.") == [Triplet("pneumonia", UNSPECIFIED, "uncertain")]


def test_laterality():
    got = extract("Left basilar atelectasis and small right pleural effusion.")
    assert got == [
        Triplet("atelectasis", "left lung base", "present"),
        Triplet("pleural effusion", "right pleura", "present"),
    ]


def test_several_findings_one_sentence():
    got = extract(
        "Patchy opacity at the right lung base, likely atelectasis, though pneumonia "
        "cannot be excluded."
    )
    assert {(t.entity, t.certainty) for t in got} == {
        ("opacity", "present"),
        ("atelectasis", "uncertain"),
        ("pneumonia", "uncertain"),
    }


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("positive_only", 0), ("u_zeros", 0), ("u_ones", 1), ("u_ignore", None)],
)
def test_label_policy(policy, expected):
    assert apply_label_policy("uncertain", policy) == expected
    assert apply_label_policy("present", policy) == 1
    assert apply_label_policy("absent", policy) == 0


def test_vocab_invariants():
    rec = vocab_record()
    assert len(ENTITY_NAMES) == len(set(ENTITY_NAMES)) == len(rec["entities"]) == 75
    assert len(POSITION_NAMES) == len(set(POSITION_NAMES)) == len(rec["positions"]) == 51
    assert UNSPECIFIED not in POSITION_NAMES
    for label in LABELS:
        assert ENTITY_BY_NAME[chexpert_entity(label)].chexpert == label
