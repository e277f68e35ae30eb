"""Stage filter_views: keep images whose ViewPosition is in data.views."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lib.cli import run
from lib.config.loader import load_params
from lib.data.mimic import METADATA_COLUMNS
from lib.data.plots import views_figure
from lib.data.tables import read_csv_checked
from lib.data.views import filter_views
from lib.headline import rows_kept_dropped, write_headline
from lib.io import save_figure, write_csv, write_json, write_parquet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metadata", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--headline", type=Path, help="DVC metric: kept, dropped (omitted: none)")
    ap.add_argument("--plots", type=Path, required=True, help="directory for plot files")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params).data
    meta = read_csv_checked(
        args.metadata,
        METADATA_COLUMNS,
        "data.root",
        dtype={"dicom_id": str, "ViewPosition": str},
        keep_default_na=False,
        na_values={"subject_id": [""], "study_id": [""]},
    )
    images, metrics = filter_views(meta, params.views)
    write_parquet(args.out, images)
    write_json(args.metrics, metrics)
    if args.headline is not None:
        write_headline(args.headline, rows_kept_dropped(metrics, str(args.metrics)))
    views = pd.DataFrame([{"view": v, **c} for v, c in metrics["views"].items()])
    write_csv(args.plots / "views.csv", views)
    save_figure(args.plots / "views.png", views_figure(metrics["views"]))
    print(
        f"filter_views: kept {metrics['rows_out']} of {metrics['rows_in']} images "
        f"(views {list(params.views)}) -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
