"""Stage compare: the results table of the variants under models: with intervals and the
reference rows, paired tests against the baseline (the first variant), the published figures
beside them, and the cross-model plots (incl. Patch-IB maps); then the VQA section (every
model and floor of the VQA stages, lib/vqa/report.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.variants import baseline, descriptions, resolve_all
from lib.eval.compare import (
    data_description,
    explain_columns,
    explain_images,
    floor_tests,
    paired_tests,
    read_inputs,
    results_markdown,
    summary_json,
    summary_table,
    tests_table,
)
from lib.eval.evaluate import fraction_key
from lib.eval.plots import save_compare_plots
from lib.eval.seeds import read_replicates, spread_keys, spread_markdown, spread_summary, spreads
from lib.io import atomic_path, save_figure, write_json
from lib.vqa import report as V
from lib.vqa.plots import accuracy_by_type_figure

DISPLAY_SIZE = 224  # pixels of the X-rays in the explainability figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--evals", type=Path, required=True, help="directory of eval@X outputs")
    ap.add_argument("--eval-metrics", type=Path, required=True, help="directory of X.json")
    ap.add_argument("--efficiency", type=Path, required=True, help="directory of X.json (embed@)")
    ap.add_argument("--embeddings", type=Path, required=True, help="directory of embed@X outputs")
    ap.add_argument("--root", type=Path, required=True, help="data.root (for the X-rays)")
    ap.add_argument("--grounding", type=Path, help="directory of X.json (stage grounding)")
    ap.add_argument("--vqa-metrics", type=Path, help="directory of X.json (the VQA stages)")
    ap.add_argument("--vqa-tables", type=Path, help="directory of X.parquet (the VQA stages)")
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    p, names, base = params.eval, list(params.models), baseline(params)
    ks, fractions = tuple(p.recall_ks), [fraction_key(f) for f in sorted(p.probe_fractions)]
    got = read_inputs(
        names, args.evals, args.eval_metrics, args.efficiency, args.embeddings, args.grounding
    )
    seeds = {n: v.train.seed for n, v in resolve_all(params, str(args.params)).items()}
    reps = read_replicates(args.eval_metrics / "replicates", names, params.replicates.seeds)
    keys = spread_keys(fractions[-1], max(ks))
    spread = spreads(got.metrics, seeds, reps, [k for k, _ in keys])
    tests = paired_tests(got.rows, ks, p.bootstrap, p.seed, p.ci_level, baseline=base)
    floors = floor_tests(got.rows, got.floor_rows, fractions[-1], p.bootstrap, p.seed, p.ci_level)
    is_demo = params.data.demo
    data = data_description(str(args.root), is_demo, got.details, got.grids)
    summary = summary_json(
        got.metrics, tests, fractions, ks, is_demo, got.references, spread_summary(spread), floors
    )
    vqa_lines: list[str] = []
    if args.vqa_metrics is not None:
        vqa = V.read_results(args.vqa_metrics, args.vqa_tables, names)
        vqa_tests: tuple = ({}, {})
        if not vqa.skipped:
            vqa_tests = V.all_tests(vqa, names, base, p.bootstrap, p.seed, p.ci_level)
        summary["vqa"] = V.summary(vqa, *vqa_tests)
        vqa_lines = V.section(vqa, names, base, *vqa_tests, p.ci_level, is_demo)
    write_json(args.summary, summary)
    finetune = [fraction_key(f) for f in sorted(p.finetune_fractions)] if p.finetune else []
    report = results_markdown(
        got.metrics, got.efficiency, tests, data, fractions, ks, p.ci_level, got.references,
        spread_markdown(spread, keys, base), got.grounding, finetune, descriptions(params), floors,
    )  # fmt: skip
    if vqa_lines:
        report = report.rstrip("\n") + "\n" + "\n".join(vqa_lines) + "\n"
    with atomic_path(args.report) as tmp:
        tmp.write_text(report, encoding="utf-8")

    images, captions = explain_images(got.explain, args.root, DISPLAY_SIZE)
    table = summary_table(got.metrics, got.efficiency)
    device, columns = got.efficiency[base]["device"], explain_columns(got.explain)
    save_compare_plots(args.plots, table, tests_table(tests), ks, device, images, captions, columns)
    if vqa_lines and not vqa.skipped:
        fig = accuracy_by_type_figure(V.accuracy_by_type(vqa))
        save_figure(args.plots / "vqa_accuracy_by_type.png", fig)
    print(f"compare: {len(names)} models -> {args.report}, {args.summary}")


if __name__ == "__main__":
    run(main)
