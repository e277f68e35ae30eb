"""Benchmark: the data stages (filter_views → qc) on MIMIC-CXR-sized inputs.

Writes metadata, split, CheXpert and report files of the real size (377,110 images,
227,835 studies, 65,379 patients; report text from the demo's report writer) plus an
IMAGE_FILENAMES listing instead of pixels, then runs each stage script as the DVC
pipeline does and reports wall time and peak RSS per stage.

    python benchmarks/data_stages.py                 # full MIMIC size
    python benchmarks/data_stages.py --scale 0.1     # a tenth, for a quick look
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.data.mimic import METADATA_COLUMNS, image_relpath, report_relpath  # noqa: E402
from lib.demo.corpus import (  # noqa: E402
    STUDY_TYPES,
    chexpert_row,
    draw_states,
    write_csv_gz,
    write_reports_zip,
)
from lib.demo.synth_reports import compose_report  # noqa: E402

MIMIC = {"images": 377_110, "studies": 227_835, "patients": 65_379}


def make_inputs(out: Path, scale: float, seed: int = 0) -> None:
    """MIMIC-shaped metadata, split, labels, reports zip and image listing (no pixels)."""
    rng = np.random.default_rng(seed)
    n_pat = round(MIMIC["patients"] * scale)
    n_std = round(MIMIC["studies"] * scale)
    subjects = 10_000_000 + rng.choice(9_999_999, n_pat, replace=False)
    study_subject = np.sort(np.concatenate([subjects, rng.choice(subjects, n_std - n_pat)]))
    studies = 50_000_000 + rng.choice(9_999_999, n_std, replace=False)
    split_of = dict(
        zip(
            subjects,
            rng.choice(["train", "validate", "test"], n_pat, p=[0.977, 0.008, 0.015]),
            strict=True,
        )
    )
    p = np.array([w for w, _ in STUDY_TYPES])
    types = rng.choice(len(STUDY_TYPES), n_std, p=p)
    meta, split, labels, reports = [], [], [], {}
    n_img_target = round(MIMIC["images"] * scale)
    for i, (subject, study) in enumerate(zip(study_subject, studies, strict=True)):
        views = STUDY_TYPES[types[i]][1]
        states = draw_states(rng, "AP" in views)
        text, _ = compose_report(
            states,
            frontal_views=[v for v in views if v in ("PA", "AP")],
            n_images=len(views),
            rng=rng,
        )
        reports[report_relpath(int(subject), int(study))] = text
        labels.append({"subject_id": subject, "study_id": study, **chexpert_row(states)})
        for view in views:
            dicom = "-".join(rng.bytes(20).hex()[j : j + 8] for j in range(0, 40, 8))
            meta.append(
                (
                    dicom,
                    subject,
                    study,
                    "CHEST (PA AND LAT)",
                    view,
                    3056,
                    2544,
                    21800506,
                    213014.531,
                    "CHEST (PA AND LAT)",
                    "",
                    "Erect",
                )
            )
            split.append((dicom, study, subject, split_of[subject]))
    meta = meta[:n_img_target] if len(meta) > n_img_target else meta
    split = split[: len(meta)]
    out.mkdir(parents=True, exist_ok=True)
    mdf = pd.DataFrame(meta, columns=list(METADATA_COLUMNS))
    write_csv_gz(mdf, out / "mimic-cxr-2.0.0-metadata.csv.gz")
    write_csv_gz(
        pd.DataFrame(split, columns=["dicom_id", "study_id", "subject_id", "split"]),
        out / "mimic-cxr-2.0.0-split.csv.gz",
    )
    write_csv_gz(pd.DataFrame(labels), out / "mimic-cxr-2.0.0-chexpert.csv.gz")
    write_reports_zip(reports, out / "mimic-cxr-reports.zip")
    listing = [
        image_relpath(s, t, d)
        for d, s, t in zip(mdf["dicom_id"], mdf["subject_id"], mdf["study_id"], strict=True)
    ]
    (out / "IMAGE_FILENAMES").write_text("\n".join(listing) + "\n")
    print(f"inputs: {len(mdf):,} images, {n_std:,} studies, {n_pat:,} patients in {out}")


def run_stage(name: str, args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one stage run as its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{name}", *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {name} failed")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--make-only", action="store_true", help="only write the inputs")
    args = ap.parse_args()
    raw = args.workdir / f"mimic_x{args.scale:g}"
    if args.make_only:
        make_inputs(raw, args.scale)
        return
    if not (raw / "IMAGE_FILENAMES").exists():
        # In a child process: a forked child's peak RSS would include this process's memory.
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--scale",
                str(args.scale),
                "--workdir",
                str(args.workdir),
                "--make-only",
            ],
            check=True,
        )
        print(f"made inputs in {time.perf_counter() - t:.0f} s")
    work = args.workdir / f"run_x{args.scale:g}"
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(root=str(raw), reports=str(raw / "mimic-cxr-reports.zip"))
    params["qc"]["image_listing"] = str(raw / "IMAGE_FILENAMES")
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    p = ["--params", str(work / "params.yaml")]
    w = str(work)
    stages = [
        (
            "filter_views",
            [
                "--metadata",
                f"{raw}/mimic-cxr-2.0.0-metadata.csv.gz",
                "--out",
                f"{w}/images.parquet",
                "--metrics",
                f"{w}/filter_views.json",
                "--plots",
                f"{w}/plots",
                *p,
            ],
        ),
        (
            "extract_reports",
            [
                "--images",
                f"{w}/images.parquet",
                "--reports",
                f"{raw}/mimic-cxr-reports.zip",
                "--out",
                f"{w}/reports.parquet",
                "--metrics",
                f"{w}/extract_reports.json",
                *p,
            ],
        ),
        (
            "inject_labels",
            [
                "--images",
                f"{w}/images.parquet",
                "--chexpert",
                f"{raw}/mimic-cxr-2.0.0-chexpert.csv.gz",
                "--out",
                f"{w}/labeled.parquet",
                "--metrics",
                f"{w}/inject_labels.json",
                *p,
            ],
        ),
        (
            "split",
            [
                "--images",
                f"{w}/labeled.parquet",
                "--split-file",
                f"{raw}/mimic-cxr-2.0.0-split.csv.gz",
                "--out",
                f"{w}/split.parquet",
                "--metrics",
                f"{w}/split.json",
            ],
        ),
        (
            "qc",
            [
                "--images",
                f"{w}/split.parquet",
                "--reports",
                f"{w}/reports.parquet",
                "--root",
                str(raw),
                "--out",
                f"{w}/master.jsonl",
                "--metrics",
                f"{w}/qc.json",
                "--plots",
                f"{w}/plots",
                *p,
            ],
        ),
    ]
    total, peak = 0.0, 0.0
    rows = []
    for name, stage_args in stages:
        seconds, rss = run_stage(name, stage_args)
        total, peak = total + seconds, max(peak, rss)
        rows.append(f"| {name} | {seconds:.1f} | {rss:,.0f} |")
    print("\n| stage | seconds | peak RSS (MiB) |\n|---|---:|---:|")
    print("\n".join(rows))
    print(f"| **total** | **{total:.1f}** | **{peak:,.0f}** |")


if __name__ == "__main__":
    main()
