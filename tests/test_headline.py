"""The headline numbers (lib/headline.py): what dvc.yaml declares as DVC metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lib.errors import DataError
from lib.headline import (
    kept_dropped,
    model_headline,
    pointing_headline,
    rows_kept_dropped,
    write_headline,
)

REPO = Path(__file__).resolve().parents[1]


def test_model_headline_is_auc_and_recall_both_ways_in_four_decimals():
    full = {k: 0.5 for k in ("zero_shot_mean_auc", "zero_shot_mean_ap", "probe_1pct_mean_auc")}
    full |= {f"i2t_R@{k}": 0.1 * k for k in (1, 5, 10)} | {f"t2i_R@{k}": 0.05 for k in (1, 5, 10)}
    full |= {"probe_100pct_mean_auc": 0.912345, "probe_100pct_mean_auc_ci_low": 0.8}
    assert model_headline(full, "100pct", [1, 5, 10]) == {
        "zero_shot": 0.5,
        "probe": 0.9123,
        "R@1": 0.075,  # (0.1 + 0.05) / 2
        "R@10": 0.525,  # (1.0 + 0.05) / 2
    }
    # the pixel probe: no zero-shot, no retrieval
    assert model_headline({"probe_100pct_mean_auc": 0.8, "pca_dim": 256}, "100pct") == {
        "probe": 0.8
    }
    assert set(model_headline(full, "100pct", [5])) == {
        "zero_shot",
        "probe",
        "R@5",
    }


def test_headline_files_nest_their_numbers_under_the_file_stem(tmp_path):
    write_headline(tmp_path / "A.json", {"probe": 0.9})
    assert json.loads((tmp_path / "A.json").read_text()) == {"A": {"probe": 0.9}}


def test_pointing_headline_is_each_scored_model_on_its_primary_map():
    def g(maps):
        test = {k: {"pointing": {"mean": 0.1 * i, "low": 0.0}} for i, k in enumerate(maps)}
        return {"maps": list(maps), "floors": ["random"], "official_test": test}

    got = pointing_headline(
        {"A": g(["similarity"]), "B": g(["attention", "similarity"]), "F": g(["mask", "attention"])}
        | {"X": {}}
    )
    assert got == {"A": {"pointing": 0.0}, "B": {"pointing": 0.0}, "F": {"pointing": 0.0}}
    got = pointing_headline({"B": g(["similarity", "attention"])})
    assert got == {"B": {"pointing": 0.1}}  # attention, wherever it is listed


def test_data_headlines_are_kept_and_dropped():
    assert rows_kept_dropped({"rows_in": 10, "rows_out": 7, "views": {}}, "m.json") == {
        "kept": 7,
        "dropped": 3,
    }
    assert kept_dropped(5, 0) == {"kept": 5, "dropped": 0}
    with pytest.raises(DataError, match="m.json: no 'rows_in'"):
        rows_kept_dropped({"rows_out": 1}, "m.json")


def _numbers(x) -> int:
    if isinstance(x, dict):
        return sum(_numbers(v) for v in x.values())
    if isinstance(x, list):
        return sum(_numbers(v) for v in x)
    return int(isinstance(x, int | float) and not isinstance(x, bool))


def test_the_declared_dvc_metrics_are_the_committed_headline_files():
    """Issue 30.6: dvc.yaml declares as metrics only metrics/headline/ files (no timings,
    no per-label detail), about a hundred numbers in all; the full files stay outputs."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        outs = [o for s in repo.index.stages for o in s.outs]
    metrics = sorted({o.def_path for o in outs if o.metric})
    assert metrics and all(m.startswith("metrics/headline/") for m in metrics), metrics
    top = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    assert "metrics" not in top
    plain = {o.def_path for o in outs if not o.metric and not o.plot}
    assert {"metrics/eval/A.json", "metrics/qc.json", "metrics/summary.json"} <= plain
    assert "metrics/efficiency/eval/A.json" in plain and "metrics/grounding" in plain
    values = {}
    for rel in metrics:  # the committed ones (the variants of params.yaml)
        values[rel] = json.loads((REPO / rel).read_text(encoding="utf-8"))
    keys = {k for v in values.values() for inner in v.values() for k in inner}
    assert not {k for k in keys if "second" in k or "per_s" in k or "time" in k}
    assert 40 <= sum(_numbers(v) for v in values.values()) <= 110
    a = values["metrics/headline/eval/A.json"]["A"]
    detail = json.loads((REPO / "metrics/eval/A.json").read_text(encoding="utf-8"))
    assert a["zero_shot"] == round(detail["zero_shot_mean_auc"], 4)
    assert a["R@10"] == round((detail["i2t_R@10"] + detail["t2i_R@10"]) / 2, 4)
    # every key is unique across the files, so `dvc exp show` names a column by it alone
    flat = [f"{top}.{k}" for v in values.values() for top, inner in v.items() for k in inner]
    assert len(flat) == len(set(flat))
