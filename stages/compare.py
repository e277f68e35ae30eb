"""Stage compare: the results table of models A–E with intervals, paired tests against A,
the published figures beside them, and the cross-model plots (incl. Patch-IB maps)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lib.cli import run
from lib.config.loader import load_params
from lib.data.master import load_image
from lib.eval.compare import (
    data_description,
    explain_columns,
    paired_tests,
    results_markdown,
    summary_json,
    summary_table,
    tests_table,
)
from lib.eval.evaluate import QueryRows, fraction_key
from lib.eval.plots import efficiency_figure, explain_figure, grouped_bars_figure
from lib.io import atomic_path, save_figure, write_csv, write_json

DISPLAY_SIZE = 224  # pixels of the X-rays in the explainability figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", required=True, help="variant names, baseline first")
    ap.add_argument("--evals", type=Path, required=True, help="directory of eval@X outputs")
    ap.add_argument("--eval-metrics", type=Path, required=True, help="directory of X.json")
    ap.add_argument("--efficiency", type=Path, required=True, help="directory of eval_X.json")
    ap.add_argument("--embeddings", type=Path, required=True, help="directory of embed@X outputs")
    ap.add_argument("--root", type=Path, required=True, help="data.root (for the X-rays)")
    ap.add_argument("--demo-root", type=Path, required=True, help="where demo_data writes")
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    p = load_params(args.params).eval
    ks, names = tuple(p.recall_ks), args.models
    metrics = {n: _json(args.eval_metrics / f"{n}.json") for n in names}
    efficiency = {n: _json(args.efficiency / f"eval_{n}.json") for n in names}
    rows = {n: QueryRows.from_arrays(_npz(args.evals / n / "rows.npz")) for n in names}
    explain = {n: _npz(args.embeddings / n / "explain.npz") for n in names}
    tests = paired_tests(rows, ks, p.bootstrap, p.seed, p.ci_level, baseline=names[0])
    fractions = [fraction_key(f) for f in sorted(p.probe_fractions)]
    is_demo = args.root.resolve() == args.demo_root.resolve()
    details = _json(args.evals / names[0] / "details.json")
    data = data_description(str(args.root), is_demo, details, explain[names[0]]["grid"])

    write_json(args.summary, summary_json(metrics, tests, fractions, ks, is_demo))
    with atomic_path(args.report) as tmp:
        report = results_markdown(metrics, efficiency, tests, data, fractions, ks, p.ci_level)
        tmp.write_text(report, encoding="utf-8")

    table = summary_table(metrics, efficiency)
    write_csv(args.plots / "summary.csv", table)
    write_csv(args.plots / "paired_tests.csv", tests_table(tests))
    bars = [(f"{d}_R@{k}", f"{d.upper()} R@{k}") for d in ("i2t", "t2i") for k in ks]
    bars.append(("zero_shot_mean_auc", "zero-shot mean AUC"))
    save_figure(args.plots / "grouped_bars.png", grouped_bars_figure(table, bars))
    device = efficiency[names[0]]["device"]
    save_figure(args.plots / "efficiency.png", efficiency_figure(table, device))
    ref = explain[names[0]]
    images = [load_image(args.root / str(path), DISPLAY_SIZE) for path in ref["image"]]
    captions = [f"{lb}\n'{kw}'" for lb, kw in zip(ref["label"], ref["keyword"], strict=True)]
    figure = explain_figure(images, captions, explain_columns(explain))
    save_figure(args.plots / "explain.png", figure)
    print(f"compare: {len(names)} models -> {args.report}, {args.summary}")


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


if __name__ == "__main__":
    run(main)
