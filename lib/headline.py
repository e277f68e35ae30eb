"""The headline numbers: what dvc.yaml declares as DVC metrics (``metrics/headline/``).

Each stage writes its full results to its own file (``metrics/eval/X.json``,
``metrics/grounding/X.json``, ``metrics/qc.json``, ...: plain outputs, read by compare, the
tests and the benchmarks) and, beside it, the few numbers that say whether a change helped,
so that ``dvc metrics diff`` and ``dvc exp show`` list those and nothing else (issue 30):
per model zero-shot and probe mean AUC, R@1 and R@10 (the mean of both ways), and grounding
pointing; per
data stage the images (reports, rows) kept and dropped. Timings are never headline numbers:
no diff of two runs on the same inputs would ever be empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lib.errors import DataError
from lib.io import write_json


def kept_dropped(kept: int, dropped: int) -> dict[str, int]:
    """A data stage's headline: what it passed on and what it left out."""
    return {"kept": int(kept), "dropped": int(dropped)}


def rows_kept_dropped(metrics: Mapping[str, Any], source: str) -> dict[str, int]:
    """:func:`kept_dropped` of a stage whose metrics count ``rows_in`` and ``rows_out``."""
    missing = [k for k in ("rows_in", "rows_out") if k not in metrics]
    if missing:
        raise DataError(f"{source}: no '{missing[0]}' among its metrics; the stage must count it")
    return kept_dropped(metrics["rows_out"], metrics["rows_in"] - metrics["rows_out"])


# The map whose pointing game is a model's headline: its most specific one (the mask of C-E,
# else the local alignment's attention, else the global head's similarity).
PRIMARY_MAPS: tuple[str, ...] = ("mask", "attention", "similarity")


def recall_mean(metrics: Mapping[str, Any], k: int) -> float:
    """R@k averaged over the two directions (I2T and T2I; each is in the detail file)."""
    return (float(metrics[f"i2t_R@{k}"]) + float(metrics[f"t2i_R@{k}"])) / 2


def model_headline(metrics: Mapping[str, Any], full: str, ks: Sequence[int] = ()) -> dict[str, Any]:
    """The headline of ``metrics`` (one model's, or a reference row's): zero-shot and probe
    (at the largest fraction ``full``) mean AUC, and R@ the smallest and largest of ``ks``
    (eval.recall_ks: R@1 and R@10) averaged over both directions; what it has (the pixel
    probe has no zero-shot or retrieval). Four decimals: short enough that ``dvc exp show
    --only-changed`` fits two models' changes in 200 columns."""
    out: dict[str, Any] = {}
    if "zero_shot_mean_auc" in metrics:
        out["zero_shot"] = round(float(metrics["zero_shot_mean_auc"]), 4)
    out["probe"] = round(float(metrics[f"probe_{full}_mean_auc"]), 4)
    if ks and "i2t_R@1" in metrics:
        for k in sorted({min(ks), max(ks)}):
            out[f"R@{k}"] = round(recall_mean(metrics, k), 4)
    return out


def write_headline(path: Path, values: Mapping[str, Any]) -> None:
    """``values`` under the file's stem (``metrics/headline/eval/A.json``: ``{"A": ...}``):
    DVC names a metric by its key alone when no other file has it, so ``dvc exp show``'s
    columns read ``A.zero_shot``, ``qc.kept``, not ``metrics/headline/...json:kept``."""
    write_json(path, {path.stem: dict(values)})


def pointing_headline(grounding: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{model: {"pointing": pointing game on the official-test phrases of its primary map}}
    (``PRIMARY_MAPS``) from stage grounding's results by model; a model that was not scored
    (no phrase) has none. Every map's, and the floors', stay in the detail files."""
    out = {}
    for name, g in grounding.items():
        if "official_test" not in g or not g["maps"]:
            continue
        kind = next(k for k in PRIMARY_MAPS if k in g["maps"])
        out[name] = {"pointing": g["official_test"][kind]["pointing"]["mean"]}
    return out
