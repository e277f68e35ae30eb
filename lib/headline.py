"""The headline numbers: what dvc.yaml declares as DVC metrics (``metrics/headline/``).

Each stage writes its full results to its own file (``metrics/eval/X.json``,
``metrics/grounding/X.json``, ``metrics/qc.json``, ...: plain outputs, read by compare, the
tests and the benchmarks) and, beside it, the few numbers that say whether a change helped,
so that ``dvc metrics diff`` and ``dvc exp show`` list those and nothing else (issue 30):
per model zero-shot and probe mean AUC, R@1 and R@10 both ways, and grounding pointing; per
data stage the images (reports, rows) kept and dropped. Timings are never headline numbers:
no diff of two runs on the same inputs would ever be empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lib.errors import DataError


def kept_dropped(kept: int, dropped: int) -> dict[str, int]:
    """A data stage's headline: what it passed on and what it left out."""
    return {"kept": int(kept), "dropped": int(dropped)}


def rows_kept_dropped(metrics: Mapping[str, Any], source: str) -> dict[str, int]:
    """:func:`kept_dropped` of a stage whose metrics count ``rows_in`` and ``rows_out``."""
    missing = [k for k in ("rows_in", "rows_out") if k not in metrics]
    if missing:
        raise DataError(f"{source}: no '{missing[0]}' among its metrics; the stage must count it")
    return kept_dropped(metrics["rows_out"], metrics["rows_in"] - metrics["rows_out"])


def model_keys(full: str, ks: Sequence[int] = ()) -> tuple[str, ...]:
    """The headline keys of a model's test metrics (metrics/eval/X.json's names): zero-shot
    and probe (at the largest fraction ``full``) mean AUC, and R@ the smallest and largest of
    ``ks`` (eval.recall_ks: R@1 and R@10) both ways; no ``ks``, no retrieval."""
    recall = sorted({min(ks), max(ks)}) if ks else []
    return (
        "zero_shot_mean_auc",
        f"probe_{full}_mean_auc",
        *(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in recall),
    )


def model_headline(metrics: Mapping[str, Any], full: str, ks: Sequence[int] = ()) -> dict[str, Any]:
    """The headline of ``metrics`` (one model's, or a reference row's): the keys of
    :func:`model_keys` that it has (the pixel probe has no zero-shot or retrieval)."""
    return {k: metrics[k] for k in model_keys(full, ks) if k in metrics}


def pointing_headline(grounding: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{model: {map: pointing game on the official-test phrases}} from stage grounding's
    results by model; a model that was not scored (no phrase) has none. The floors (random
    map, centre prior) move with the data only: they stay in the detail files."""
    return {
        name: {kind: g["official_test"][kind]["pointing"]["mean"] for kind in g["maps"]}
        for name, g in grounding.items()
        if "official_test" in g
    }
