"""Stage inject_labels: join the 14 CheXpert labels by study under data.label_policy."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lib.cli import run
from lib.config.loader import load_params
from lib.data.labels import inject_labels
from lib.data.mimic import CHEXPERT_COLUMNS
from lib.data.tables import read_csv_checked
from lib.headline import rows_kept_dropped, write_headline
from lib.io import write_json, write_parquet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=Path, required=True, help="output of filter_views")
    ap.add_argument("--chexpert", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--headline", type=Path, help="DVC metric: kept, dropped (omitted: none)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params).data
    images = pd.read_parquet(args.images)
    chexpert = read_csv_checked(args.chexpert, CHEXPERT_COLUMNS, "data.root")
    labeled, metrics = inject_labels(images, chexpert, params.label_policy, str(args.chexpert))
    write_parquet(args.out, labeled)
    write_json(args.metrics, metrics)
    if args.headline is not None:
        write_headline(args.headline, rows_kept_dropped(metrics, str(args.metrics)))
    print(
        f"inject_labels: {metrics['images_without_label_row']} of {metrics['rows_out']} images "
        f"have no label row (policy {params.label_policy}) -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
