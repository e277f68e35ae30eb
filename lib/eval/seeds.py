"""The spread of the test metrics over training seeds, which ``compare`` puts beside the
patient-bootstrap intervals.

The intervals of eval@X say how much a metric moves with the test patients; they say
nothing of how much it moves when the same model is trained again with another seed
(initialisation of the heads, batch order, dropout). On the demo that second spread is of
the same size as the differences between variants, so a difference between two variants
means something only where it exceeds it. The runs are train@X's (its ``train.seed``) and
the replicates (``replicates.seeds``, lib/runs/replicate.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from lib.errors import DataError
from lib.io import read_json


def spread_keys(full: str, k: int) -> tuple[tuple[str, str], ...]:
    """(key of metrics/eval/X.json, column title) of the metrics whose seed spread compare
    reports: zero-shot, the probe at the largest fraction ``full``, and R@``k`` both ways."""
    return (
        ("zero_shot_mean_auc", "Zero-shot mean AUC"),
        (f"probe_{full}_mean_auc", f"Probe {full} mean AUC"),
        (f"i2t_R@{k}", f"I2T R@{k}"),
        (f"t2i_R@{k}", f"T2I R@{k}"),
    )


def read_replicates(folder: Path, names: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """The metrics of replicate@<name>-<seed> for every model and seed of
    ``replicates.seeds``, from ``folder``; a missing one is an error naming the stage."""
    out = []
    for name in names:
        for seed in seeds:
            path = folder / f"{name}-seed{seed}.json"
            if not path.is_file():
                raise DataError(
                    f"{path}: not found, but replicates.seeds lists seed {seed}; run "
                    f"`dvc repro replicate@{name}-{seed}` (or `dvc repro`), or remove the "
                    "seed from replicates.seeds"
                )
            out.append(read_json(path))
    return out


@dataclasses.dataclass(frozen=True)
class Spread:
    """One metric of one model over its seeds."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (ddof 1); None with one seed."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None


def spreads(
    primary: Mapping[str, Mapping[str, Any]],
    primary_seeds: Mapping[str, int],
    replicates: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
) -> dict[str, dict[str, Spread]]:
    """model -> metric key -> its values over the primary run and the replicates (seed
    order). A replicate of a model not in ``primary`` is an error: compare would otherwise
    drop it silently."""
    runs: dict[str, dict[int, Mapping[str, Any]]] = {
        name: {primary_seeds[name]: m} for name, m in primary.items()
    }
    for r in replicates:
        name, seed = str(r["model"]), int(r["seed"])
        if name not in runs:
            raise ValueError(
                f"a replicate of model {name!r} (seed {seed}) but no such model in models: "
                f"{sorted(runs)}; remove metrics/eval/replicates/{name}-seed{seed}.json or "
                "run `dvc repro` to rebuild them"
            )
        if seed in runs[name]:
            raise ValueError(f"model {name}: seed {seed} appears twice among its runs")
        runs[name][seed] = r
    out: dict[str, dict[str, Spread]] = {}
    for name, by_seed in runs.items():
        seeds = tuple(sorted(by_seed))
        out[name] = {}
        for key in keys:
            values = [by_seed[s].get(key) for s in seeds]
            kept = [(s, float(v)) for s, v in zip(seeds, values, strict=True) if v is not None]
            if kept:
                out[name][key] = Spread(tuple(s for s, _ in kept), tuple(v for _, v in kept))
    return out


def welch_p(a: Spread, b: Spread) -> float | None:
    """Two-sided Welch t-test p-value of the seed means; None without two seeds on each side
    or with no spread at all."""
    if a.n < 2 or b.n < 2 or (a.sd == 0 and b.sd == 0):
        return None
    p = stats.ttest_ind(a.values, b.values, equal_var=False).pvalue
    return None if math.isnan(p) else float(p)


def vs_baseline(
    table: Mapping[str, Mapping[str, Spread]], baseline: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """variant -> metric -> difference of seed means against ``baseline``, the larger of
    the two seed sds, whether the difference exceeds twice it, and Welch's p."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    base = table[baseline]
    for name, metrics in table.items():
        if name == baseline:
            continue
        out[name] = {}
        for key, s in metrics.items():
            if key not in base:
                continue
            b = base[key]
            sds = [x for x in (s.sd, b.sd) if x is not None]
            spread = max(sds) if sds else None
            diff = s.mean - b.mean
            out[name][key] = {
                "difference": diff,
                "seed_sd": spread,
                "exceeds_2sd": None if spread is None else bool(abs(diff) > 2 * spread),
                "welch_p": welch_p(s, b),
            }
    return out


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f}" if "R@" in key else f"{v:.3f}"


def spread_markdown(
    table: Mapping[str, Mapping[str, Spread]],
    keys: Sequence[tuple[str, str]],
    baseline: str,
) -> list[str]:
    """The "Training-seed spread" section of results.md (recall in percent)."""
    lines = ["## Training-seed spread", ""]
    if all(s.n < 2 for m in table.values() for s in m.values()):
        seeds = sorted({s for m in table.values() for sp in m.values() for s in sp.seeds})
        lines += [
            f"One training seed per model (train.seed = {', '.join(map(str, seeds))}), so "
            "this run does not measure how much each metric moves when a model is trained "
            "again with another seed. The intervals above cover the test patients only. To "
            "train every model with two more seeds and get the spread here:",
            "",
            "```bash",
            "dvc exp run -S 'replicates.seeds=[1,2]'",
            "```",
            "",
        ]
        return lines
    lines += [
        "Mean ± sample sd over each model's training seeds (train@X's seed and "
        "`replicates.seeds`; same data, split and schedule). A difference between two "
        "variants means little unless it exceeds this spread.",
        "",
        "| Model | Seeds | " + " | ".join(title for _, title in keys) + " |",
        "| --- | --- |" + " --- |" * len(keys),
    ]
    for name, metrics in table.items():
        seeds = next((s.seeds for s in metrics.values()), ())
        cells = []
        for key, _ in keys:
            s = metrics.get(key)
            if s is None:
                cells.append("—")
            elif s.sd is None:
                cells.append(_fmt(key, s.mean))
            else:
                cells.append(f"{_fmt(key, s.mean)} ± {_fmt(key, s.sd)}")
        lines.append(f"| {name} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    diffs = vs_baseline(table, baseline)
    if diffs:
        lines += [
            "",
            f"Against {baseline}: the difference of the seed means, the larger of the two seed "
            "sds, whether the difference exceeds twice that sd, and Welch's two-sided t-test "
            "over seeds (few seeds: a rough guide, not a verdict).",
            "",
            "| Variant | Metric | Difference of means | Seed sd | Exceeds 2 sd? | Welch p |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        titles = dict(keys)
        for name, metrics in diffs.items():
            for key, d in metrics.items():
                exceeds = {None: "—", True: "yes", False: "no"}[d["exceeds_2sd"]]
                p = "—" if d["welch_p"] is None else f"{d['welch_p']:.3f}"
                diff = d["difference"]
                magnitude = _fmt(key, abs(diff))
                # A difference that rounds to zero is shown as +0, never as -0.
                sign = "-" if diff < 0 and magnitude.strip("0.") else "+"
                lines.append(
                    f"| {name} | {titles[key]} | {sign}{magnitude} | "
                    f"{_fmt(key, d['seed_sd'])} | {exceeds} | {p} |"
                )
    lines.append("")
    return lines


def spread_summary(table: Mapping[str, Mapping[str, Spread]]) -> dict[str, Any]:
    """For metrics/summary.json: model -> metric -> seeds, mean, sd."""
    return {
        name: {
            key: {
                "seeds": list(s.seeds),
                "mean": round(s.mean, 6),
                "sd": None if s.sd is None else round(s.sd, 6),
            }
            for key, s in metrics.items()
        }
        for name, metrics in table.items()
    }
