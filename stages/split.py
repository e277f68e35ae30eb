"""Stage split: apply the official patient-disjoint split per image (validate -> val)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lib.cli import run
from lib.data.mimic import SPLIT_COLUMNS
from lib.data.splits import apply_split
from lib.data.tables import read_csv_checked
from lib.headline import rows_kept_dropped, write_headline
from lib.io import write_json, write_parquet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=Path, required=True, help="output of inject_labels")
    ap.add_argument("--split-file", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--headline", type=Path, help="DVC metric: kept, dropped (omitted: none)")
    args = ap.parse_args()

    images = pd.read_parquet(args.images)
    split_file = read_csv_checked(
        args.split_file, SPLIT_COLUMNS, "data.root", dtype={"dicom_id": str}
    )
    out, metrics = apply_split(images, split_file, str(args.split_file))
    write_parquet(args.out, out)
    write_json(args.metrics, metrics)
    if args.headline is not None:
        write_headline(args.headline, rows_kept_dropped(metrics, str(args.metrics)))
    print(f"split: {metrics['images']} images -> {args.out}")


if __name__ == "__main__":
    run(main)
