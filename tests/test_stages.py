"""Stage scripts on bad input: a one-line error naming the file/key and the fix, exit 1,
no traceback."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_stage(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def run_filter_views(metadata: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_stage(
        "filter_views",
        "--metadata",
        str(metadata),
        "--out",
        str(tmp_path / "o.parquet"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--plots",
        str(tmp_path / "p"),
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_missing_metadata_names_file_and_params_key(tmp_path):
    proc = run_filter_views(tmp_path / "m.csv.gz", tmp_path)
    assert_clean_error(proc, "m.csv.gz", "not found", "data.root")
    assert not (tmp_path / "o.parquet").exists()


def test_wrong_columns_are_named(tmp_path):
    path = tmp_path / "meta.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("dicom_id,subject_id,study_id,View\nx,10000001,50000001,PA\n")
    proc = run_filter_views(path, tmp_path)
    assert_clean_error(proc, "meta.csv.gz", "missing column(s)", "ViewPosition")


def test_missing_reports_names_params_key(tmp_path):
    import pandas as pd

    images = tmp_path / "images.parquet"
    pd.DataFrame({"subject_id": [10000001], "study_id": [50000001]}).to_parquet(images)
    proc = run_stage(
        "extract_reports",
        "--images",
        str(images),
        "--reports",
        str(tmp_path / "none.zip"),
        "--out",
        str(tmp_path / "r.parquet"),
        "--metrics",
        str(tmp_path / "m.json"),
    )
    assert_clean_error(proc, "none.zip", "data.reports")


def test_bad_params_key_is_reported(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  label_polcy: u_ones\n")
    proc = run_stage(
        "filter_views",
        "--metadata",
        "x",
        "--out",
        "y",
        "--metrics",
        "z",
        "--plots",
        "p",
        "--params",
        str(params),
    )
    assert_clean_error(proc, "data.label_polcy", "valid keys")


@pytest.mark.parametrize(
    "stage", ["demo_data", "filter_views", "extract_reports", "inject_labels", "split", "qc"]
)
def test_every_stage_has_help(stage):
    proc = run_stage(stage, "--help")
    assert proc.returncode == 0 and "--out" in proc.stdout
