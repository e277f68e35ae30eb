"""Uncertainty of the evaluation: patient-level bootstrap intervals and paired tests.

Rows (images, studies) of one patient are correlated, so resampling rows would understate
the spread; every function here resamples PATIENTS with replacement and keeps all rows of a
drawn patient together. A metric is passed as a callable on row indices, so one bootstrap
serves retrieval recall, mean AUC, or anything else computed from a subset of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

# metric(row_indices) -> value, or None where undefined on those rows (e.g. no positive).
# Indices may repeat: a patient drawn twice contributes its rows twice.
Metric = Callable[[np.ndarray], float | None]


@dataclass(frozen=True)
class Interval:
    """Percentile bootstrap interval. point: the metric on all rows; low / high: None when
    no round was defined; n_rounds_used: rounds whose metric was defined (the rest skipped).
    """

    point: float | None
    low: float | None
    high: float | None
    n_rounds_used: int


@dataclass(frozen=True)
class PairedTest:
    """Paired bootstrap of diff = metric_b − metric_a (b better when higher).

    low / high: percentile interval of the diff; p_value: two-sided, see paired_bootstrap.
    All but n_rounds_used are None when undefined (no defined round, or point undefined).
    """

    diff: float | None
    low: float | None
    high: float | None
    p_value: float | None
    n_rounds_used: int


def patient_bootstrap_indices(
    patient_ids: np.ndarray, n_rounds: int, seed: int
) -> Iterator[np.ndarray]:
    """Yield n_rounds arrays of row indices, each from one resample of the patients.

    Each round draws P patients (P = number of distinct patients) with replacement and
    returns the indices of all rows of the drawn patients, patient by patient, so a round's
    length varies with the patients drawn. Rows are grouped once (argsort by patient); a
    round is then two vectorised gathers, so 3,000 rows × 1,000 rounds takes well under a
    second. Same seed → same rounds.
    """
    ids = _check_ids(patient_ids)
    _check_rounds(n_rounds)
    # Rows sorted by patient: patient p owns order[starts[p] : starts[p] + counts[p]].
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_patients = len(counts)

    # A nested generator, so bad arguments raise at the call, not at the first next().
    def rounds() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        for _ in range(n_rounds):
            drawn = rng.integers(0, n_patients, size=n_patients)
            lengths = counts[drawn]
            # Output position j belongs to the i-th drawn patient; its offset within that
            # patient's rows is j − (first output position of patient i).
            out_start = np.cumsum(lengths) - lengths
            offset = np.arange(lengths.sum()) - np.repeat(out_start, lengths)
            yield order[np.repeat(starts[drawn], lengths) + offset]

    return rounds()


def bootstrap_ci(
    metric: Metric,
    patient_ids: np.ndarray,
    n_rounds: int,
    seed: int,
    level: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of metric over patient resamples.

    Rounds where metric returns None (undefined on that resample) are skipped and not
    counted in n_rounds_used; check it when a label is rare, as the interval then describes
    only the resamples that happened to contain positives.
    """
    ids = _check_ids(patient_ids)
    _check_level(level)
    point = _value(metric(np.arange(len(ids))), "metric")
    values = [
        v
        for idx in patient_bootstrap_indices(ids, n_rounds, seed)
        if (v := _value(metric(idx), "metric")) is not None
    ]
    low, high = _percentile_interval(np.asarray(values, dtype=np.float64), level)
    return Interval(point=point, low=low, high=high, n_rounds_used=len(values))


def bootstrap_mean_ci(
    values: np.ndarray,
    patient_ids: np.ndarray,
    n_rounds: int,
    seed: int,
    level: float = 0.95,
) -> list[Interval]:
    """``bootstrap_ci`` of the mean of each column of ``values`` (n,) or (n, k), at once.

    The same resamples as ``bootstrap_ci`` with the same seed (the same patients drawn in
    each round), computed from per-patient sums and counts: a round's mean is
    Σ_p w_p·sum_p / Σ_p w_p·count_p with w_p the times patient p was drawn. Thousands of
    means (per category, per map) then cost one matrix product each instead of a Python
    loop over the rounds.
    """
    ids = _check_ids(patient_ids)
    _check_rounds(n_rounds)
    _check_level(level)
    v = np.asarray(values, dtype=np.float64)
    v2 = v.reshape(len(v), -1)
    if len(v2) != len(ids) or not np.isfinite(v2).all():
        raise ValueError(f"values {v.shape} must be finite, one row per patient id ({len(ids)})")
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    n_patients = len(counts)
    sums = np.zeros((n_patients, v2.shape[1]))
    np.add.at(sums, inverse, v2)
    # The draws of patient_bootstrap_indices, in its order (one (rounds, P) call consumes the
    # generator as `rounds` calls of P do), as per-round counts of each patient.
    drawn = np.random.default_rng(seed).integers(0, n_patients, size=(n_rounds, n_patients))
    flat = (drawn + n_patients * np.arange(n_rounds)[:, None]).ravel()
    weights = np.bincount(flat, minlength=n_rounds * n_patients).reshape(n_rounds, n_patients)
    means = (weights @ sums) / (weights @ counts)[:, None]  # (rounds, k)
    point = v2.mean(axis=0)
    out = []
    for j in range(v2.shape[1]):
        low, high = _percentile_interval(means[:, j], level)
        out.append(Interval(float(point[j]), low, high, n_rounds))
    return out


def paired_bootstrap(
    metric_a: Metric,
    metric_b: Metric,
    patient_ids: np.ndarray,
    n_rounds: int,
    seed: int,
    level: float = 0.95,
) -> PairedTest:
    """Paired bootstrap test of metric_b − metric_a on the same rows.

    Both metrics are evaluated on the SAME resampled indices each round, so the variation
    shared by the two models (which patients are easy) cancels in the difference. A round is
    used only when both metrics are defined.

    p-value: two-sided, from the bootstrap distribution of the difference d (centred on the
    observed difference, which is what the percentile interval also uses):
    p = min(1, 2 · min(#(d ≤ 0) + 1, #(d ≥ 0) + 1) / (B + 1)), B = rounds used. The +1
    counts the observed sample as one round, so p is never 0 (smallest 2 / (B + 1)); ties
    d = 0 count on both sides, so identical models give p = 1. It is the smallest α at which
    the (1 − α) percentile interval of the diff would exclude 0.
    """
    ids = _check_ids(patient_ids)
    _check_level(level)
    everything = np.arange(len(ids))
    a_all = _value(metric_a(everything), "metric_a")
    b_all = _value(metric_b(everything), "metric_b")
    diffs = []
    for idx in patient_bootstrap_indices(ids, n_rounds, seed):
        a = _value(metric_a(idx), "metric_a")
        b = _value(metric_b(idx), "metric_b")
        if a is not None and b is not None:
            diffs.append(b - a)
    diff = None if a_all is None or b_all is None else b_all - a_all
    return _paired_result(diff, np.asarray(diffs, dtype=np.float64), level)


def _paired_result(diff: float | None, d: np.ndarray, level: float) -> PairedTest:
    low, high = _percentile_interval(d, level)
    p_value = None
    if len(d):
        tail = min(int((d <= 0).sum()), int((d >= 0).sum())) + 1
        p_value = float(min(1.0, 2.0 * tail / (len(d) + 1)))
    return PairedTest(diff=diff, low=low, high=high, p_value=p_value, n_rounds_used=len(d))


# table(row_indices) -> {name: value or None}: many metrics from one pass over the rows.
TableMetric = Callable[[np.ndarray], Mapping[str, float | None]]


def bootstrap_table(
    metrics: TableMetric,
    patient_ids: np.ndarray,
    n_rounds: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, Interval]:
    """bootstrap_ci for every metric a table function returns, on the same resamples.

    ``metrics(idx)`` returns a dict of values (None = undefined on those rows); the keys of
    the full-data call define the table. Each key gets the Interval bootstrap_ci would give
    it with the same seed (same rounds), at the cost of one pass over the rounds.
    """
    ids = _check_ids(patient_ids)
    _check_level(level)
    point = {k: _value(v, k) for k, v in metrics(np.arange(len(ids))).items()}
    values: dict[str, list[float]] = {k: [] for k in point}
    for idx in patient_bootstrap_indices(ids, n_rounds, seed):
        row = metrics(idx)
        for k in point:
            if (v := _value(row.get(k), k)) is not None:
                values[k].append(v)
    out = {}
    for k, p in point.items():
        low, high = _percentile_interval(np.asarray(values[k], dtype=np.float64), level)
        out[k] = Interval(point=p, low=low, high=high, n_rounds_used=len(values[k]))
    return out


def paired_bootstrap_table(
    metrics_a: TableMetric,
    metrics_b: TableMetric,
    patient_ids: np.ndarray,
    n_rounds: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, PairedTest]:
    """paired_bootstrap for every key the two table functions share, on the same resamples.

    The keys are those of metrics_a on all rows (metrics_b must return them too). Each key's
    PairedTest equals what paired_bootstrap would give it with the same seed.
    """
    ids = _check_ids(patient_ids)
    _check_level(level)
    everything = np.arange(len(ids))
    a_all, b_all = metrics_a(everything), metrics_b(everything)
    missing = sorted(set(a_all) - set(b_all))
    if missing:
        raise ValueError(f"metrics_b does not return {missing}; both must return the same keys")
    diffs: dict[str, list[float]] = {k: [] for k in a_all}
    for idx in patient_bootstrap_indices(ids, n_rounds, seed):
        a_row, b_row = metrics_a(idx), metrics_b(idx)
        for k in a_all:
            a, b = _value(a_row.get(k), k), _value(b_row.get(k), k)
            if a is not None and b is not None:
                diffs[k].append(b - a)
    out = {}
    for k in a_all:
        d = np.asarray(diffs[k], dtype=np.float64)
        a, b = _value(a_all[k], k), _value(b_all[k], k)
        out[k] = _paired_result(None if a is None or b is None else b - a, d, level)
    return out


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm–Bonferroni adjusted p-values of a family of tests (None stays None).

    Sorted ascending, p_(i) is multiplied by (m − i + 1) for i = 1..m, made monotone
    (a running maximum) and capped at 1. Controls the family-wise error rate at any
    dependence between the tests, e.g. four variants each compared with A on three metrics.
    """
    defined = sorted((p, k) for k, p in p_values.items() if p is not None)
    m = len(defined)
    out: dict[str, float | None] = {k: None for k in p_values}
    running = 0.0
    for i, (p, k) in enumerate(defined):
        if not 0 <= p <= 1:
            raise ValueError(f"p-value of {k!r} is {p}; p-values lie in [0, 1]")
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def _value(v: float | None, name: str) -> float | None:
    if v is None:
        return None
    f = float(v)
    if not np.isfinite(f):
        # NaN would silently poison the percentiles; undefined rounds must say None.
        raise ValueError(f"{name} returned {f}; return None where the metric is undefined")
    return f


def _check_ids(patient_ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError(f"patient_ids {ids.shape} must be a non-empty 1-D array, one per row")
    return ids


def _check_rounds(n_rounds: int) -> None:
    if int(n_rounds) != n_rounds or n_rounds < 1:
        raise ValueError(f"n_rounds = {n_rounds} must be a positive integer (e.g. 1000)")


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level = {level} must be in (0, 1), e.g. 0.95 (not 95)")
