"""lib/eval/label_retrieval.py: ConVIRT's label-based retrieval (CheXpert 8×200 protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.data.mimic import LABELS
from lib.eval.label_retrieval import (
    CATEGORIES,
    chance_precision,
    image_to_image_hits,
    label_retrieval_metrics,
    single_category_images,
    text_to_image_hits,
)


def labels_with(*positives: tuple[str, ...], uncertain: str | None = None) -> np.ndarray:
    rows = np.zeros((len(positives), len(LABELS)), dtype=np.int64)
    for i, names in enumerate(positives):
        for name in names:
            rows[i, LABELS.index(name)] = 1
    if uncertain:
        rows[:, LABELS.index(uncertain)] = -1
    return rows


def test_only_images_with_exactly_one_convirt_positive_are_taken():
    labels = labels_with(
        ("Edema",),  # one category: kept
        ("Edema", "Cardiomegaly"),  # two: left out
        ("Lung Opacity",),  # not a ConVIRT category: no positive among them, left out
        ("Lung Opacity", "Pneumothorax"),  # one category plus a non-category: kept
        ("No Finding",),
        (),
    )
    chosen = single_category_images(labels)
    assert chosen.rows.tolist() == [0, 3, 4]
    assert [CATEGORIES[c] for c in chosen.category] == ["Edema", "Pneumothorax", "No Finding"]
    # An uncertain label (-1) is not a positive.
    assert single_category_images(labels_with(("Edema",), uncertain="Fracture")).rows.tolist() == [
        0
    ]


def brute_i2i(emb, category, study, k):
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = np.zeros((len(x), k), dtype=bool)
    for q in range(len(x)):
        cands = [j for j in range(len(x)) if study[j] != study[q]]
        ranked = sorted(cands, key=lambda j: (-(x[q] @ x[j]), j))[:k]
        out[q, : len(ranked)] = [category[j] == category[q] for j in ranked]
    return out


def test_image_to_image_hits_equal_brute_force_and_skip_the_own_study():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 8))
    category = rng.integers(0, 4, size=30)
    study = rng.integers(0, 20, size=30)
    emb[1] = emb[0] * 2.0  # the nearest possible neighbour of image 0 ...
    study[1] = study[0]  # ... is of its own study, so it must not count
    category[1] = category[0]
    hits = image_to_image_hits(emb, category, study, 10)
    np.testing.assert_array_equal(hits, brute_i2i(emb, category, study, 10))


def test_text_to_image_hits_equal_brute_force():
    rng = np.random.default_rng(1)
    emb, prompts = rng.normal(size=(25, 6)), rng.normal(size=(8, 6))
    category = rng.integers(0, 8, size=25)
    hits, order = text_to_image_hits(emb, prompts, category, 5)
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for c in range(8):
        p = prompts[c] / np.linalg.norm(prompts[c])
        ranked = sorted(range(25), key=lambda j: (-(p @ x[j]), j))[:5]
        assert order[c].tolist() == ranked
        assert hits[c].tolist() == [category[j] == c for j in ranked]


def test_chance_precision_by_hand():
    category = np.array([0, 0, 1, 1, 1])
    study = np.array([0, 1, 2, 3, 3])  # images 3 and 4 share a study
    # query 0: 1 of 4 candidates; 1: 1/4; 2: 2/4; 3: 1/3 (not 4); 4: 1/3 (not 3);
    # category 0's mean, then category 1's, then their mean
    expected = np.mean([np.mean([1 / 4, 1 / 4]), np.mean([2 / 4, 1 / 3, 1 / 3])])
    assert chance_precision(category, study) == pytest.approx(expected)


def test_metrics_of_a_perfect_embedding_and_of_no_text_side():
    names = ["Edema", "Cardiomegaly", "No Finding"]
    labels = labels_with(*[(names[i % 3],) for i in range(60)])
    cat = np.array([i % 3 for i in range(60)])
    emb = np.eye(8)[cat] + 1e-3 * np.random.default_rng(2).normal(size=(60, 8))
    prompts = np.zeros((len(LABELS), 8))
    for i, name in enumerate(names):
        prompts[LABELS.index(name), i] = 1.0
    prompts[prompts.sum(1) == 0, 7] = 1.0  # the other labels' prompts point elsewhere
    study = np.arange(60)
    m = label_retrieval_metrics(emb, labels, study, study // 2, prompts, (5, 10, 50), 50, 0, 0.95)
    assert m["label_retrieval_images"] == 60 and m["label_retrieval_n_Edema"] == 20
    for key in ("label_i2i_P@5", "label_i2i_P@10", "label_t2i_P@5", "label_t2i_P@10"):
        assert m[key] == pytest.approx(1.0) and m[f"{key}_ci_low"] <= 1.0
    # The prompts of the 5 categories with no image are left out (they could hit nothing).
    no_text = label_retrieval_metrics(emb, labels, study, study // 2, None, (5,), 20, 0, 0.95)
    assert "label_t2i_P@5" not in no_text and no_text["label_i2i_P@5"] == pytest.approx(1.0)
    assert m["label_chance_P"] == pytest.approx(19 / 59)
    assert m["label_i2i_P@50_max"] == pytest.approx(19 / 50)  # 20 images per category
    assert m["label_t2i_P@10_max"] == pytest.approx(1.0)


def test_precision_is_averaged_per_category_not_per_query():
    """Random embeddings of 90 "No Finding" and 10 Edema images: per query the precision is
    ~0.9 and ~0.1, so the per-query mean would be ~0.82; per category it is ~0.5."""
    cat = np.array([0] * 90 + [1] * 10)
    labels = labels_with(*[("No Finding",) if c == 0 else ("Edema",) for c in cat])
    emb = np.random.default_rng(3).normal(size=(100, 16))
    study = np.arange(100)
    m = label_retrieval_metrics(emb, labels, study, study, None, (10,), 10, 0, 0.95)
    assert m["label_i2i_P@10"] == pytest.approx(0.5, abs=0.1)
    assert m["label_chance_P"] == pytest.approx((89 / 99 + 9 / 99) / 2)
