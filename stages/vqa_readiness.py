"""Stage vqa_readiness: the seed's phase 1 on a MIMIC-Ext-CXR-QBA-format directory
(data.vqa): checks, distributions, scene-graph quality and bias warnings, and the tables the
VQA stages train on (docs/vqa.md). A missing path fails; data unfit for training writes
"ready": false, which the VQA stages refuse (lib/vqa/readiness.require_ready)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lib.cli import run
from lib.config.loader import load_params
from lib.headline import kept_dropped, write_headline
from lib.io import save_figure, write_json, write_parquet
from lib.vqa import readiness as R
from lib.vqa.plots import distributions_figure
from lib.vqa.reader import read_qba

SKIPPED = "data.vqa is null"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder: questions/scene/vocab/report")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--headline", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    if params.data.vqa is None:
        qdf = pd.DataFrame(columns=R.QUESTION_COLUMNS).astype(R.QUESTION_DTYPES)
        sdf = pd.DataFrame(columns=R.SCENE_COLUMNS).astype(R.SCENE_DTYPES)
        vocab: dict = {k: [] for k in ("categories", "regions", "severities", "question_types")}
        vocab |= {"templates": {}, "negative_templates": {}}
        report = R.skipped_report(SKIPPED)
    else:
        data = read_qba(Path(params.data.vqa), params.vqa_data.max_malformed_fraction)
        master = pd.read_json(args.master, lines=True, dtype={"dicom_id": str})
        qdf, sdf, vocab, report = R.build(data, master, params.vqa_data, params.data.vqa)
    write_parquet(args.out / "questions.parquet", qdf)
    write_parquet(args.out / "scene.parquet", sdf)
    write_json(args.out / "vocab.json", vocab)
    write_json(args.out / "readiness.json", report)
    write_json(args.metrics, report)
    dropped = sum(report.get("dropped", {}).values())
    write_headline(args.headline, kept_dropped(len(qdf), dropped))
    args.plots.mkdir(parents=True, exist_ok=True)
    save_figure(args.plots / "distributions.png", distributions_figure(report))
    print(
        f"vqa_readiness: ready = {report['ready']}, {len(qdf)} questions kept, {dropped} "
        f"dropped; {len(report['warnings'])} warnings; reasons: {report['reasons'] or 'none'}"
    )
    for w in report["warnings"]:
        print(f"  warning: {w}")


if __name__ == "__main__":
    run(main)
