"""Stage extract_reports: findings, impression and training text of every needed study,
read straight from the reports zip (or an unpacked files/ tree)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from lib.cli import run
from lib.config.loader import load_params
from lib.data.reports import ReportSource, extract_reports
from lib.headline import kept_dropped, write_headline
from lib.io import write_json, write_parquet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=Path, required=True, help="output of filter_views")
    ap.add_argument("--reports", type=Path, required=True, help="zip or directory (data.reports)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--headline", type=Path, help="DVC metric: kept, dropped (omitted: none)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params).data
    images = pd.read_parquet(args.images, columns=["subject_id", "study_id"])
    source = ReportSource(args.reports)
    try:
        # Worker count changes speed only, never the output.
        workers = len(os.sched_getaffinity(0))
        reports, metrics = extract_reports(images, source, params.sections, workers=workers)
    finally:
        source.close()
    write_parquet(args.out, reports)
    write_json(args.metrics, metrics)
    if args.headline is not None:
        write_headline(args.headline, kept_dropped(metrics["studies"], metrics["dropped_total"]))
    print(f"extract_reports: {metrics['status']} for {metrics['studies']} studies -> {args.out}")


if __name__ == "__main__":
    run(main)
