"""benchmarks/chain_spread.json, the measured whole-chain seed spread that sets the
end-to-end test's tolerance (tests/test_pipeline.py): complete, and its tolerance the one
its own runs give."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location(
        "chain_spread", ROOT / "benchmarks/chain_spread.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_spread_covers_every_model_and_gives_its_tolerance():
    mod = bench()
    spread = json.loads((ROOT / "benchmarks/chain_spread.json").read_text())
    models = [*yaml.safe_load((ROOT / "params.yaml").read_text())["models"], "pretrained"]
    assert len(spread["seeds"]) >= 2
    for run in spread["runs"].values():
        assert set(run) == set(models)
    assert spread["machine"]
    assert mod.summarise({int(s): r for s, r in spread["runs"].items()}, models) == {
        k: spread[k] for k in ("per_model", "pooled_sd", "tolerance")
    }


def test_summarise_pools_the_variances_and_scales_by_three_root_two():
    mod = bench()
    runs = {
        0: {"A": {"zero_shot_mean_auc": 0.80, "probe_100pct_mean_auc": 0.90}},
        1: {"A": {"zero_shot_mean_auc": 0.82, "probe_100pct_mean_auc": 0.90}},
    }
    runs = {s: {"A": {**r["A"], "i2t_R@10": 0.5, "t2i_R@10": 0.5}} for s, r in runs.items()}
    out = mod.summarise(runs, ["A"])
    sd = math.sqrt(2 * 0.01**2)  # two values 0.02 apart: sd = 0.02 / sqrt(2)
    assert math.isclose(out["pooled_sd"]["zero_shot_mean_auc"], round(sd, 6))
    assert out["tolerance"]["zero_shot_mean_auc"] == round(3 * math.sqrt(2) * round(sd, 6), 4)
    assert out["tolerance"]["probe_100pct_mean_auc"] == 0.0


def test_a_runs_printed_seeds_are_read_back(tmp_path):
    mod = bench()
    log = tmp_path / "run.log"
    log.write_text('noise\nseed 2: 731 s {"A": {"zero_shot_mean_auc": 0.8}}\n')
    runs, seconds = mod.parse_log(log)
    assert runs == {2: {"A": {"zero_shot_mean_auc": 0.8}}} and seconds == {2: 731.0}
