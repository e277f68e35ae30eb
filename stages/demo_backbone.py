"""Stage demo_backbone: BiomedCLIP in miniature, CLIP-pretrained on a synthetic corpus of its
own whose patients are disjoint from the demo's (lib/runs/pretrain.py), written as an
open_clip local-dir folder that models A–E fine-tune. Real runs (model.backbone set to
BiomedCLIP or another folder) skip the pretraining and record why."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.params import DEMO_BACKBONE
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.io import write_json
from lib.model.backbone import load_backbone
from lib.runs.pretrain import pretrain_backbone, skip_record
from lib.train.loop import Data
from lib.train.outputs import write_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--pack", type=Path, required=True, help="output of pack_images")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True, help="DVCLive folder and figures")
    ap.add_argument("--state-dir", type=Path, required=True, help="resumable state")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    if params.model.backbone != DEMO_BACKBONE:
        metrics = skip_record(args.out, params.model.backbone)
        write_json(args.metrics, metrics)
        print(f"demo_backbone: skipped, {metrics['skipped']}")
        return
    splits = read_master(args.master)
    pack = Pack.open(args.pack)

    def demo_val(spec: str) -> Data:
        return Data.build(pack.usable(splits["val"]), Path("."), load_backbone(spec), pack=pack)

    metrics, state = pretrain_backbone(
        params,
        splits,
        demo_val,
        args.out,
        args.state_dir,
        args.plots,
        workers=params.demo.workers,
        progress=sys.stderr.isatty(),
    )
    write_json(args.metrics, metrics)
    write_curves(args.plots, "pretraining", state)
    shutil.rmtree(args.state_dir, ignore_errors=True)  # finished: nothing left to resume
    print(
        f"demo_backbone: pretrained on {metrics['corpus_images']} images of "
        f"{metrics['corpus_patients']} other patients; demo val zero-shot mean AUC "
        f"{metrics['demo_val_zero_shot_mean_auc']:.3f} -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
