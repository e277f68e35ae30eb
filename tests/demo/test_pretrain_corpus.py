"""The demo backbone's pretraining corpus (lib/demo/pretrain_corpus.py): frontal images with
their report sections, patients disjoint from the demo's and MIMIC's, deterministic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lib.config.params import DataParams, DemoParams, Params, PretrainParams
from lib.data.master import read_master
from lib.data.mimic import LABELS
from lib.demo.pretrain_corpus import PRETRAIN_SUBJECTS, build_corpus, check_disjoint
from lib.errors import DataError
from tests.conftest import TINY_BACKBONE, params_section, repo_params


def tiny_params(**pretrain: object) -> Params:
    return repo_params(
        demo=params_section(DemoParams, image_size=64, workers=1, min_positive_rate=0.0),
        data=params_section(DataParams, image_size=TINY_BACKBONE.image_size),
        backbone=TINY_BACKBONE,
        pretrain=params_section(
            PretrainParams, **{"n_patients": 40, "caption_fraction": 0.0, **pretrain}
        ),
    )


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(tiny_params(), workers=1)


def test_corpus_is_frontal_images_with_report_sections(corpus):
    n = len(corpus.split)
    assert n > 40
    assert corpus.pixels.shape == (n, 32, 32) and corpus.pixels.dtype == np.uint8
    assert corpus.pixels.std() > 10  # rendered radiographs, not blanks
    assert all(len(t) >= 30 for t in corpus.split.texts)
    assert not any("FINDINGS:" in t or "IMPRESSION:" in t for t in corpus.split.texts)
    assert corpus.split.labels.shape == (n, len(LABELS))
    assert corpus.dropped["not_frontal"] > 0  # laterals exist in every corpus drawn


def test_corpus_patients_lie_outside_the_demo_and_mimic_ranges(corpus, small_master):
    low, high = PRETRAIN_SUBJECTS
    assert ((corpus.split.subject >= low) & (corpus.split.subject < high)).all()
    demo = read_master(small_master[0])
    check_disjoint(corpus.split, demo, "test")  # no overlap: passes
    assert not set(corpus.split.study) & {s for sp in demo.values() for s in sp.study}


def test_shared_patient_is_refused(corpus, small_master):
    demo = read_master(small_master[0])
    clash = dataclasses.replace(demo["train"], subject=demo["train"].subject.copy())
    clash.subject[0] = corpus.split.subject[3]
    with pytest.raises(DataError, match="subject_id.*disjoint"):
        check_disjoint(corpus.split, {**demo, "train": clash}, "test")


def test_corpus_is_deterministic_and_follows_its_seed(corpus):
    again = build_corpus(tiny_params(), workers=2)  # worker count does not matter
    assert np.array_equal(again.pixels, corpus.pixels)
    assert again.split.texts == corpus.split.texts
    other = build_corpus(tiny_params(seed=5), workers=1)
    assert other.split.texts != corpus.split.texts


def test_caption_fraction_replaces_that_share_of_texts_and_nothing_else(corpus):
    captioned = build_corpus(tiny_params(caption_fraction=0.5), workers=1)
    assert np.array_equal(captioned.pixels, corpus.pixels)
    assert np.array_equal(captioned.split.labels, corpus.split.labels)
    changed = [a != b for a, b in zip(corpus.split.texts, captioned.split.texts, strict=True)]
    assert 0.3 < np.mean(changed) < 0.7
    new = [t for t, c in zip(captioned.split.texts, changed, strict=True) if c]
    assert all(
        t.lower().startswith(
            (
                "chest",
                "a chest",
                "frontal",
                "figure",
                "portable",
                "posteroanterior",
                "normal",
                "unremarkable",
            )
        )
        for t in new
    ), new[:5]
    again = build_corpus(tiny_params(caption_fraction=0.5), workers=1)
    assert again.split.texts == captioned.split.texts
