"""The seed spread (lib/eval/seeds.py): grouping runs by model, the statistics, the table."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lib.errors import DataError
from lib.eval.seeds import (
    Spread,
    read_replicates,
    spread_keys,
    spread_markdown,
    spread_summary,
    spreads,
    vs_baseline,
)

KEYS = spread_keys("100pct", 10)
NAMES = [k for k, _ in KEYS]


def run(zs: float, probe: float, r10: float, model: str | None = None, seed: int | None = None):
    m = {"zero_shot_mean_auc": zs, "probe_100pct_mean_auc": probe, "i2t_R@10": r10, "t2i_R@10": r10}
    if model is not None:
        m |= {"model": model, "seed": seed}
    return m


def test_keys_follow_the_largest_fraction_and_k():
    assert NAMES == ["zero_shot_mean_auc", "probe_100pct_mean_auc", "i2t_R@10", "t2i_R@10"]
    assert spread_keys("50pct", 5)[1] == ("probe_50pct_mean_auc", "Probe 50pct mean AUC")


def test_spreads_join_the_primary_run_and_the_replicates_in_seed_order():
    primary = {"A": run(0.70, 0.80, 0.2), "B": run(0.60, 0.70, 0.1)}
    reps = [run(0.74, 0.81, 0.3, "A", 2), run(0.72, 0.82, 0.25, "A", 1)]
    table = spreads(primary, {"A": 5, "B": 5}, reps, NAMES)
    a = table["A"]["zero_shot_mean_auc"]
    assert a.seeds == (1, 2, 5) and a.values == (0.72, 0.74, 0.70)
    assert a.mean == pytest.approx(0.72)
    assert a.sd == pytest.approx(np.std([0.72, 0.74, 0.70], ddof=1))
    assert table["B"]["zero_shot_mean_auc"].n == 1 and table["B"]["zero_shot_mean_auc"].sd is None


def test_a_missing_metric_is_left_out_not_counted_as_zero():
    primary = {"A": run(0.70, 0.80, 0.2) | {"probe_100pct_mean_auc": None}}
    table = spreads(primary, {"A": 0}, [run(0.72, 0.81, 0.3, "A", 1)], NAMES)
    assert table["A"]["probe_100pct_mean_auc"].values == (0.81,)


def test_a_replicate_of_an_unknown_model_or_a_repeated_seed_fails():
    with pytest.raises(ValueError, match="no such model"):
        spreads({"A": run(0.7, 0.8, 0.2)}, {"A": 0}, [run(0.7, 0.8, 0.2, "Z", 1)], NAMES)
    with pytest.raises(ValueError, match="twice"):
        spreads({"A": run(0.7, 0.8, 0.2)}, {"A": 0}, [run(0.7, 0.8, 0.2, "A", 0)], NAMES)


def test_vs_baseline_against_an_independent_welch_test():
    a = Spread((0, 1, 2), (0.70, 0.72, 0.71))
    b = Spread((0, 1, 2), (0.80, 0.79, 0.82))
    d = vs_baseline({"A": {"k": a}, "B": {"k": b}}, "A")["B"]["k"]
    assert d["difference"] == pytest.approx(np.mean(b.values) - np.mean(a.values))
    assert d["seed_sd"] == pytest.approx(max(np.std(a.values, ddof=1), np.std(b.values, ddof=1)))
    assert d["exceeds_2sd"] is True
    expected = stats.ttest_ind(b.values, a.values, equal_var=False).pvalue
    assert d["welch_p"] == pytest.approx(expected)
    # Within the spread: not flagged.
    c = Spread((0, 1, 2), (0.70, 0.73, 0.71))
    assert vs_baseline({"A": {"k": a}, "C": {"k": c}}, "A")["C"]["k"]["exceeds_2sd"] is False


def test_one_seed_has_no_sd_and_no_test():
    a, b = Spread((0,), (0.7,)), Spread((0,), (0.8,))
    d = vs_baseline({"A": {"k": a}, "B": {"k": b}}, "A")["B"]["k"]
    assert d["seed_sd"] is None and d["exceeds_2sd"] is None and d["welch_p"] is None


def test_markdown_with_one_seed_says_how_to_measure_the_spread():
    table = spreads({"A": run(0.7, 0.8, 0.2)}, {"A": 0}, [], NAMES)
    text = "\n".join(spread_markdown(table, KEYS, "A"))
    assert "replicates.seeds=[1,2]" in text and "±" not in text


def test_markdown_with_seeds_gives_mean_sd_and_the_comparison():
    primary = {"A": run(0.70, 0.80, 0.20), "B": run(0.80, 0.85, 0.30)}
    reps = [run(0.72, 0.82, 0.22, "A", 1), run(0.82, 0.86, 0.28, "B", 1)]
    table = spreads(primary, {"A": 0, "B": 0}, reps, NAMES)
    text = "\n".join(spread_markdown(table, KEYS, "A"))
    assert "| A | 0, 1 | 0.710 ± 0.014 |" in text
    assert "| B | Zero-shot mean AUC | +0.100 | 0.014 | yes |" in text
    assert "21.0 ± 1.4" in text  # recall in percent
    summary = spread_summary(table)
    assert summary["A"]["zero_shot_mean_auc"] == {"seeds": [0, 1], "mean": 0.71, "sd": 0.014142}


def test_a_difference_that_rounds_to_zero_has_no_minus_sign():
    a = Spread((0, 1), (0.80000, 0.80010))
    b = Spread((0, 1), (0.79990, 0.80000))
    table = {"A": {"zero_shot_mean_auc": a}, "B": {"zero_shot_mean_auc": b}}
    text = "\n".join(spread_markdown(table, KEYS[:1], "A"))
    assert "| B | Zero-shot mean AUC | +0.000 |" in text


def test_read_replicates_reads_every_listed_seed_and_names_a_missing_one(tmp_path):
    (tmp_path / "A-seed1.json").write_text('{"model": "A", "seed": 1}')
    (tmp_path / "A-seed7.json").write_text('{"model": "A", "seed": 7}')  # not listed: unread
    assert read_replicates(tmp_path, ["A"], [1]) == [{"model": "A", "seed": 1}]
    assert read_replicates(tmp_path, ["A"], []) == []
    with pytest.raises(DataError, match=r"B-seed1.json.*dvc repro replicate@B-1"):
        read_replicates(tmp_path, ["A", "B"], [1])
