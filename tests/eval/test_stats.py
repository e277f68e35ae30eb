import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lib.eval.stats import (
    bootstrap_ci,
    bootstrap_mean_ci,
    bootstrap_table,
    holm,
    paired_bootstrap,
    paired_bootstrap_table,
    patient_bootstrap_indices,
)


def mean_of(x):
    return lambda idx: float(np.mean(x[idx]))


# ---------------------------------------------------------------- indices


def test_indices_keep_each_patients_rows_together():
    # Patient 0 has 10 rows, patients 1..9 one row each, interleaved so grouping is needed.
    ids = np.array([0] * 10 + list(range(1, 10)))
    ids = ids[np.random.default_rng(1).permutation(len(ids))]
    rows_of = {p: set(np.flatnonzero(ids == p).tolist()) for p in np.unique(ids)}
    n_big = []
    for idx in patient_bootstrap_indices(ids, 200, seed=0):
        drawn, counts = np.unique(ids[idx], return_counts=True)
        for p, c in zip(drawn, counts, strict=True):
            # A patient drawn k times contributes each of its rows exactly k times.
            k = c // len(rows_of[p])
            assert c == k * len(rows_of[p]) and k >= 1
            row_counts = np.bincount(idx[ids[idx] == p], minlength=len(ids))
            assert set(np.flatnonzero(row_counts).tolist()) == rows_of[p]
            assert set(row_counts[row_counts > 0].tolist()) == {k}
        # Ten patients drawn in total: the number of rows is 10·k0 + (10 − k0).
        k0 = int((ids[idx] == 0).sum()) // 10
        assert len(idx) == 10 * k0 + (10 - k0)
        n_big.append(k0)
    # k0 ~ Binomial(10, 0.1): mean 1; rows never resampled one by one.
    assert 0.7 < np.mean(n_big) < 1.3


def test_indices_deterministic_by_seed_and_validated():
    ids = np.repeat(np.arange(50), 3)
    a = list(patient_bootstrap_indices(ids, 5, seed=7))
    b = list(patient_bootstrap_indices(ids, 5, seed=7))
    c = list(patient_bootstrap_indices(ids, 5, seed=8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    with pytest.raises(ValueError, match="n_rounds"):
        patient_bootstrap_indices(ids, 0, seed=0)
    with pytest.raises(ValueError, match="patient_ids"):
        patient_bootstrap_indices(np.array([]), 5, seed=0)


def test_indices_fast_enough():
    ids = np.random.default_rng(0).integers(0, 1000, size=3000)
    t0 = time.perf_counter()
    total = sum(len(idx) for idx in patient_bootstrap_indices(ids, 1000, seed=0))
    assert time.perf_counter() - t0 < 3.0
    assert 2.5e6 < total < 3.5e6


def test_string_patient_ids():
    ids = np.array(["p10", "p2", "p10", "p3"])
    for idx in patient_bootstrap_indices(ids, 20, seed=0):
        # p10's two rows (0 and 2) always travel together.
        assert (idx == 0).sum() == (idx == 2).sum()


# ---------------------------------------------------------------- intervals


def test_ci_of_mean_matches_normal_theory():
    n = 400
    x = np.random.default_rng(0).standard_normal(n)
    ci = bootstrap_ci(mean_of(x), np.arange(n), n_rounds=2000, seed=0)
    assert ci.point == pytest.approx(x.mean())
    assert ci.n_rounds_used == 2000
    half = 1.96 * x.std() / np.sqrt(n)
    assert ci.low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_ci_resamples_patients_not_rows():
    # 40 patients × 10 identical rows: the effective n is 40, not 400, so the interval is
    # √10 times wider than a row bootstrap would give.
    per_patient = np.random.default_rng(1).standard_normal(40)
    x = np.repeat(per_patient, 10)
    ids = np.repeat(np.arange(40), 10)
    ci = bootstrap_ci(mean_of(x), ids, n_rounds=2000, seed=0)
    half = 1.96 * per_patient.std() / np.sqrt(40)
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.15)
    rows = bootstrap_ci(mean_of(x), np.arange(400), n_rounds=2000, seed=0)
    assert (ci.high - ci.low) / (rows.high - rows.low) == pytest.approx(np.sqrt(10), rel=0.2)


def test_ci_skips_undefined_rounds():
    # One positive among 30 patients: about (29/30)^30 ≈ 36 % of resamples miss it, and AUC
    # is undefined there.
    rng = np.random.default_rng(0)
    y = np.zeros(30, dtype=int)
    y[0] = 1
    s = rng.random(30)

    def auc(idx):
        return None if y[idx].min() == y[idx].max() else float(roc_auc_score(y[idx], s[idx]))

    ci = bootstrap_ci(auc, np.arange(30), n_rounds=500, seed=0)
    missing = sum(1 for idx in patient_bootstrap_indices(np.arange(30), 500, 0) if 0 not in idx)
    assert ci.n_rounds_used == 500 - missing
    assert 0.25 * 500 < missing < 0.47 * 500
    assert ci.low <= ci.point <= ci.high

    never = bootstrap_ci(lambda idx: None, np.arange(5), n_rounds=10, seed=0)
    assert never == type(never)(point=None, low=None, high=None, n_rounds_used=0)


def test_ci_rejects_nan_and_bad_level():
    with pytest.raises(ValueError, match="return None"):
        bootstrap_ci(lambda idx: float("nan"), np.arange(5), n_rounds=3, seed=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(lambda idx: 0.0, np.arange(5), n_rounds=3, seed=0, level=95)


def test_ci_deterministic():
    x = np.random.default_rng(3).standard_normal(100)
    a = bootstrap_ci(mean_of(x), np.arange(100), n_rounds=200, seed=5)
    b = bootstrap_ci(mean_of(x), np.arange(100), n_rounds=200, seed=5)
    c = bootstrap_ci(mean_of(x), np.arange(100), n_rounds=200, seed=6)
    assert a == b and a != c


# ---------------------------------------------------------------- paired test


def test_identical_models_give_zero_diff_and_p_one():
    x = np.random.default_rng(0).random(200)
    t = paired_bootstrap(mean_of(x), mean_of(x), np.arange(200), n_rounds=300, seed=0)
    assert t.diff == 0 and t.low == 0 and t.high == 0
    assert t.p_value == 1.0 and t.n_rounds_used == 300


def test_clearly_better_model_is_significant():
    rng = np.random.default_rng(0)
    a = rng.random(300)
    b = a + 0.1 + 0.05 * rng.standard_normal(300)  # per-row gain 0.1, small noise
    t = paired_bootstrap(mean_of(a), mean_of(b), np.arange(300), n_rounds=1000, seed=0)
    assert t.diff == pytest.approx(np.mean(b - a))
    assert t.low > 0 and t.high > t.low
    # No round has d ≤ 0, so p is the floor 2 / (B + 1).
    assert t.p_value == pytest.approx(2 / 1001) and t.p_value < 0.01
    # Swapping the models mirrors the result.
    r = paired_bootstrap(mean_of(b), mean_of(a), np.arange(300), n_rounds=1000, seed=0)
    assert r.diff == pytest.approx(-t.diff) and r.p_value == t.p_value
    assert r.high == pytest.approx(-t.low) and r.low == pytest.approx(-t.high)


def test_pairing_uses_the_same_rows_for_both_models():
    # b = a + 0.01 on every row: unpaired, the tiny gain would drown in a's spread (sd 1);
    # paired, every round's diff is exactly 0.01.
    a = np.random.default_rng(0).standard_normal(100)
    b = a + 0.01
    t = paired_bootstrap(mean_of(a), mean_of(b), np.arange(100), n_rounds=200, seed=0)
    assert t.low == pytest.approx(0.01) and t.high == pytest.approx(0.01)
    assert t.p_value == pytest.approx(2 / 201)


def test_no_difference_gives_large_p():
    rng = np.random.default_rng(0)
    a, b = rng.random(300), rng.random(300)  # same distribution, independent noise
    t = paired_bootstrap(mean_of(a), mean_of(b), np.arange(300), n_rounds=1000, seed=0)
    assert t.low < 0 < t.high
    assert t.p_value > 0.05


def test_paired_skips_rounds_where_either_is_undefined():
    ids = np.arange(30)

    def a(idx):
        return None if 0 not in idx else 1.0

    t = paired_bootstrap(a, lambda idx: 2.0, ids, n_rounds=300, seed=0)
    used = sum(1 for idx in patient_bootstrap_indices(ids, 300, 0) if 0 in idx)
    assert t.n_rounds_used == used < 300
    assert t.diff == 1.0 and t.low == t.high == 1.0
    assert t.p_value == pytest.approx(2 / (used + 1))


def test_paired_deterministic():
    rng = np.random.default_rng(0)
    a, b = rng.random(100), rng.random(100)
    ids = np.repeat(np.arange(25), 4)
    one = paired_bootstrap(mean_of(a), mean_of(b), ids, n_rounds=200, seed=1)
    two = paired_bootstrap(mean_of(a), mean_of(b), ids, n_rounds=200, seed=1)
    assert one == two


# ---------------------------------------------------------------- tables, Holm


def test_table_equals_one_metric_at_a_time():
    rng = np.random.default_rng(3)
    x, y = rng.random(120), rng.random(120)
    ids = np.repeat(np.arange(40), 3)

    def table(idx):
        return {"x": float(np.mean(x[idx])), "y": float(np.mean(y[idx])), "never": None}

    out = bootstrap_table(table, ids, n_rounds=200, seed=5)
    assert out["x"] == bootstrap_ci(mean_of(x), ids, 200, 5)
    assert out["y"] == bootstrap_ci(mean_of(y), ids, 200, 5)
    assert out["never"].point is None and out["never"].n_rounds_used == 0


def test_paired_table_equals_one_metric_at_a_time():
    rng = np.random.default_rng(4)
    a, b = rng.random(90), rng.random(90) + 0.05
    ids = np.repeat(np.arange(30), 3)
    out = paired_bootstrap_table(
        lambda i: {"m": float(np.mean(a[i]))}, lambda i: {"m": float(np.mean(b[i]))}, ids, 300, 2
    )
    assert out["m"] == paired_bootstrap(mean_of(a), mean_of(b), ids, 300, 2)
    with pytest.raises(ValueError, match="same keys"):
        paired_bootstrap_table(lambda i: {"m": 1.0}, lambda i: {"n": 1.0}, ids, 10, 0)


def test_holm_known_answer():
    # m = 4: sorted p 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5.
    got = holm({"a": 0.03, "b": 0.01, "c": 0.5, "d": 0.02, "e": None})
    assert got == pytest.approx({"a": 0.06, "b": 0.04, "c": 0.5, "d": 0.06, "e": None})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="lie in"):
        holm({"a": 1.5})


def test_bootstrap_mean_ci_matches_bootstrap_ci_of_the_mean():
    rng = np.random.default_rng(3)
    patients = rng.integers(0, 25, size=120)
    values = rng.normal(size=(120, 3))
    fast = bootstrap_mean_ci(values, patients, n_rounds=300, seed=5, level=0.9)
    for j in range(3):
        slow = bootstrap_ci(
            lambda idx, j=j: float(values[idx, j].mean()), patients, 300, 5, level=0.9
        )
        assert fast[j].point == pytest.approx(slow.point)
        assert fast[j].low == pytest.approx(slow.low)
        assert fast[j].high == pytest.approx(slow.high)
        assert fast[j].n_rounds_used == 300


def test_bootstrap_mean_ci_refuses_non_finite_values():
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_ci(np.array([1.0, np.nan]), np.array([0, 1]), 10, 0)
