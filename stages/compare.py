"""Stage compare: the results table of models A–E with intervals, paired tests against A,
the published figures beside them, and the cross-model plots (incl. Patch-IB maps)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib.cli import run
from lib.compare import TESTED, paired_tests, results_markdown
from lib.data import load_image
from lib.eval_plots import efficiency_figure, explain_figure, grouped_bars_figure
from lib.evaluate import QueryRows, fraction_key
from lib.io import atomic_path, save_figure, write_csv, write_json
from lib.params import load_params

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
    ks = tuple(p.recall_ks)
    names = args.models
    metrics = {n: _json(args.eval_metrics / f"{n}.json") for n in names}
    efficiency = {n: _json(args.efficiency / f"eval_{n}.json") for n in names}
    details = {n: _json(args.evals / n / "details.json") for n in names}
    rows = {}
    for n in names:
        with np.load(args.evals / n / "rows.npz") as npz:
            rows[n] = QueryRows.from_arrays({k: npz[k] for k in npz.files})
    tests = paired_tests(rows, ks, p.bootstrap, p.seed, p.ci_level, baseline=names[0])
    explain = {}
    for n in names:
        with np.load(args.embeddings / n / "explain.npz") as npz:
            explain[n] = {k: npz[k] for k in npz.files}

    fractions = [fraction_key(f) for f in sorted(p.probe_fractions)]
    grid = tuple(int(g) for g in explain[names[0]]["grid"])
    is_demo = args.root.resolve() == args.demo_root.resolve()
    data = {
        "description": (
            f"the synthetic demo corpus ({args.root}), NOT MIMIC-CXR: a pipeline check, not a "
            "result"
            if is_demo
            else f"MIMIC-CXR-JPG at {args.root}, official test split"
        ),
        "is_demo": is_demo,
        "zero_shot_mode": _zero_shot_mode(details[names[0]]),
        "patch_tokens_total": grid[0] * grid[1],
    }

    # summary.json: the headline numbers of every model (deterministic; timings live in
    # metrics/efficiency) and the tests against the baseline.
    headline = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in ks] + [
        "mean_recall",
        "zero_shot_mean_auc",
        "zero_shot_mean_ap",
        *[f"probe_{f}_mean_auc" for f in fractions],
        *[f"probe_{f}_mean_ap" for f in fractions],
    ]
    summary = {
        "models": {
            n: {
                k: metrics[n].get(k)
                for key in headline
                for k in (key, f"{key}_ci_low", f"{key}_ci_high")
            }
            | {"mean_patch_tokens_kept": metrics[n]["mean_patch_tokens_kept"]}
            for n in names
        },
        "tests_vs_" + names[0]: tests,
        "test_images": metrics[names[0]]["n_test_images"],
        "demo_data": is_demo,
    }
    write_json(args.summary, summary)
    with atomic_path(args.report) as tmp:
        tmp.write_text(
            results_markdown(metrics, efficiency, tests, data, fractions, ks, p.ci_level),
            encoding="utf-8",
        )

    # Plots across models.
    table = pd.DataFrame(
        [
            {
                "model": n,
                **{k: v for k, v in metrics[n].items() if not isinstance(v, str)},
                "inference_images_per_second": efficiency[n]["inference_images_per_second"],
            }
            for n in names
        ]
    )
    write_csv(args.plots / "summary.csv", table)
    bars = [(f"{d}_R@{k}", f"{d.upper()} R@{k}") for d in ("i2t", "t2i") for k in ks]
    bars.append(("zero_shot_mean_auc", "zero-shot mean AUC"))
    save_figure(args.plots / "grouped_bars.png", grouped_bars_figure(table, bars))
    save_figure(
        args.plots / "efficiency.png", efficiency_figure(table, efficiency[names[0]]["device"])
    )
    tests_table = pd.DataFrame(
        [
            {"variant": v, "metric": dict(TESTED)[k], **t}
            for v, ts in tests.items()
            for k, t in ts.items()
        ]
    )
    write_csv(args.plots / "paired_tests.csv", tests_table)
    save_figure(args.plots / "explain.png", _explain_figure(explain, names, args.root, grid))
    print(f"compare: {len(names)} models -> {args.report}, {args.summary}")


def _explain_figure(explain: dict, names: list[str], root: Path, grid: tuple[int, int]) -> Figure:
    ref = explain[names[0]]
    for n in names[1:]:
        if not np.array_equal(explain[n]["dicom"], ref["dicom"]):
            raise ValueError(
                f"explain.npz of {n} and {names[0]} show different images; rerun `dvc repro`"
            )
    images = [load_image(root / str(path), DISPLAY_SIZE) for path in ref["image"]]
    captions = [f"{lb}\n'{kw}'" for lb, kw in zip(ref["label"], ref["keyword"], strict=True)]
    columns = []
    for n in names:
        e = explain[n]
        has_mask = not np.isnan(e["mask"]).all()
        has_att = not np.isnan(e["attention"]).all()
        if has_mask:
            masks = [
                np.where(kept, m, np.nan).reshape(grid)
                for m, kept in zip(e["mask"], e["kept"], strict=True)
            ]
            title = f"{n}: mask z" + (" (kept tokens)" if not e["kept"].all() else "")
            columns.append((title, masks))
        elif has_att:
            columns.append(
                (f"{n}: finding word → patch attention", [a.reshape(grid) for a in e["attention"]])
            )
    return explain_figure(images, captions, columns)


def _zero_shot_mode(details: dict) -> str:
    if details["zero_shot_mode"] == "prompt pair":
        return (
            f'P(positive) of the prompt pair "{details["prompt_template"]}" / '
            f'"{details["negative_prompt_template"]}"'
        )
    return f'cosine similarity to the prompt "{details["prompt_template"]}"'


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    run(main)
