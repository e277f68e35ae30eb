"""Stage qc: drop unusable rows, gate on data fitness, write the master JSONL file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from lib.cli import run
from lib.config.loader import load_params
from lib.data.plots import label_distribution_figure, label_distribution_table, text_length_figure
from lib.data.qc import (
    master_lines,
    pipeline_drops,
    read_holdout,
    read_listing,
    run_qc,
    write_jsonl,
)
from lib.headline import rows_kept_dropped, write_headline
from lib.io import atomic_path, save_figure, write_csv, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=Path, required=True, help="output of split")
    ap.add_argument("--reports", type=Path, required=True, help="output of extract_reports")
    ap.add_argument("--root", type=Path, required=True, help="data.root (holds files/)")
    ap.add_argument("--out", type=Path, required=True, help="master JSONL file")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--headline", type=Path, help="DVC metric: kept, dropped (omitted: none)")
    ap.add_argument("--plots", type=Path, required=True, help="directory for plot files")
    ap.add_argument(
        "--stage-metrics",
        type=Path,
        nargs="*",
        default=[],
        help="metrics files of the earlier data stages, summarised in --metrics",
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    listing = read_listing(Path(params.qc.image_listing)) if params.qc.image_listing else None
    source = params.data.holdout_patients_from
    holdout = read_holdout(Path(source)) if source else None
    images = pd.read_parquet(args.images)
    reports = pd.read_parquet(args.reports)
    kept, metrics = run_qc(
        images, reports, args.root, params.data.min_report_chars, params.qc, listing, holdout
    )
    with atomic_path(args.out) as tmp:
        write_jsonl(master_lines(kept), tmp)

    earlier = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in args.stage_metrics}
    metrics["pipeline"] = pipeline_drops({**earlier, "qc": metrics})
    write_json(args.metrics, metrics)
    if args.headline is not None:
        write_headline(args.headline, rows_kept_dropped(metrics, str(args.metrics)))
    table = label_distribution_table(metrics["distribution"])
    write_csv(args.plots / "label_distribution.csv", table)
    save_figure(args.plots / "label_distribution.png", label_distribution_figure(table))
    words = pd.DataFrame({"split": kept["split"], "words": kept["text_words"]})
    save_figure(args.plots / "text_length.png", text_length_figure(words))
    sizes = {s: d["total"] for s, d in metrics["distribution"].items()}
    print(f"qc: {metrics['rows_out']} of {metrics['rows_in']} images kept {sizes} -> {args.out}")
    for warning in metrics["warnings"]:
        print(f"qc warning: {warning}")


if __name__ == "__main__":
    run(main)
