"""Stage compare: the results table of models A–E with intervals and the reference rows,
paired tests against A, the published figures beside them, and the cross-model plots
(incl. Patch-IB maps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.variants import resolve_all
from lib.data.images import load_image
from lib.eval.compare import (
    REFERENCES,
    data_description,
    explain_columns,
    floor_tests,
    paired_tests,
    results_markdown,
    summary_json,
    summary_table,
    tests_table,
)
from lib.eval.embeddings import ExplainMaps
from lib.eval.evaluate import QueryRows, fraction_key
from lib.eval.plots import save_compare_plots
from lib.eval.seeds import read_replicates, spread_keys, spread_markdown, spread_summary, spreads
from lib.io import atomic_path, read_json, write_json

DISPLAY_SIZE = 224  # pixels of the X-rays in the explainability figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--evals", type=Path, required=True, help="directory of eval@X outputs")
    ap.add_argument("--eval-metrics", type=Path, required=True, help="directory of X.json")
    ap.add_argument("--efficiency", type=Path, required=True, help="directory of X.json (embed@)")
    ap.add_argument("--embeddings", type=Path, required=True, help="directory of embed@X outputs")
    ap.add_argument("--root", type=Path, required=True, help="data.root (for the X-rays)")
    ap.add_argument("--demo-root", type=Path, required=True, help="where demo_data writes")
    ap.add_argument("--grounding", type=Path, help="directory of X.json (stage grounding)")
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    p, names = params.eval, list(params.models)  # A, the baseline, first
    ks = tuple(p.recall_ks)
    metrics = {n: read_json(args.eval_metrics / f"{n}.json") for n in names}
    references = {r: read_json(args.eval_metrics / f"{r}.json") for r in REFERENCES}
    efficiency = {n: read_json(args.efficiency / f"{n}.json") for n in names}
    rows = {n: QueryRows.load(args.evals / n) for n in names}
    explain = {n: ExplainMaps.load(args.embeddings / n) for n in names}
    seeds = {n: v.train.seed for n, v in resolve_all(params, str(args.params)).items()}
    reps = read_replicates(args.eval_metrics / "replicates", names, params.replicates.seeds)
    fractions = [fraction_key(f) for f in sorted(p.probe_fractions)]
    keys = spread_keys(fractions[-1], max(ks))
    spread = spreads(metrics, seeds, reps, [k for k, _ in keys])
    tests = paired_tests(rows, ks, p.bootstrap, p.seed, p.ci_level, baseline=names[0])
    # The floors with per-image rows (eval_pretrained's; the pixel floor saves none).
    floor_rows = {
        r: QueryRows.load(args.evals / r)
        for r in REFERENCES
        if (args.evals / r / QueryRows.FILE).is_file()
    }
    floors = floor_tests(rows, floor_rows, fractions[-1], p.bootstrap, p.seed, p.ci_level)
    is_demo = args.root.resolve() == args.demo_root.resolve()
    grounding = {}
    if args.grounding is not None:  # A–E, then the pretrained backbone
        for n in [*names, "pretrained"]:
            if (args.grounding / f"{n}.json").is_file():
                grounding[n] = read_json(args.grounding / f"{n}.json")
    details = read_json(args.evals / names[0] / "details.json")
    grids = {n: e.grid for n, e in explain.items()}
    data = data_description(str(args.root), is_demo, details, grids)

    write_json(
        args.summary,
        summary_json(
            metrics, tests, fractions, ks, is_demo, references, spread_summary(spread), floors
        ),
    )
    with atomic_path(args.report) as tmp:
        report = results_markdown(
            metrics,
            efficiency,
            tests,
            data,
            fractions,
            ks,
            p.ci_level,
            references,
            spread_markdown(spread, keys, names[0]),
            grounding,
            [fraction_key(f) for f in sorted(p.finetune_fractions)] if p.finetune else [],
            floors,
        )
        tmp.write_text(report, encoding="utf-8")

    ref = explain[names[0]]
    images = [load_image(args.root / str(path), DISPLAY_SIZE) for path in ref.image]
    captions = [f"{lb}\n'{kw}'" for lb, kw in zip(ref.label, ref.keyword, strict=True)]
    table, device = summary_table(metrics, efficiency), efficiency[names[0]]["device"]
    columns = explain_columns(explain)
    save_compare_plots(args.plots, table, tests_table(tests), ks, device, images, captions, columns)
    print(f"compare: {len(names)} models -> {args.report}, {args.summary}")


if __name__ == "__main__":
    run(main)
