"""Stage train@<variant>: staged training of one of models A–E on the master file."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from lib.cli import run
from lib.config.variants import Variant
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.io import write_json
from lib.train.distributed import cleanup, relaunch_with_torchrun
from lib.train.loop import train_variant
from lib.train.outputs import best_metrics, write_curves, write_model_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, required=True, help="output of resolve_config")
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True, help="data.root (images)")
    ap.add_argument("--pack", type=Path, help="output of pack_images (else decode the JPEGs)")
    ap.add_argument("--out", type=Path, required=True, help="best checkpoint + config")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--efficiency", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True, help="DVCLive folder and figures")
    ap.add_argument("--state-dir", type=Path, required=True, help="resumable state")
    args = ap.parse_args()

    raw = json.loads(args.config.read_text(encoding="utf-8"))
    variant = Variant.from_dict(raw, str(args.config))
    nproc = variant.train.nproc_per_node
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        # train.nproc_per_node > 1: run this same command under torchrun, one process per
        # GPU (DistributedDataParallel); rank 0 writes the outputs.
        relaunch_with_torchrun("stages.train", nproc, sys.argv[1:], f"train@{variant.name}")
        return
    trainer, state = train_variant(
        variant,
        args.master,
        read_master(args.master),
        args.root,
        args.state_dir,
        progress=sys.stderr.isatty(),
        pack=Pack.open(args.pack) if args.pack else None,
        live_dir=args.plots,
    )
    if trainer.dist.is_main:
        write_model_dir(args.out, trainer.best_path, raw, state)
        write_json(args.metrics, best_metrics(state))
        write_json(args.efficiency, trainer.efficiency())
        write_curves(args.plots, variant.name, state)
        shutil.rmtree(args.state_dir, ignore_errors=True)  # finished: nothing left to resume
        print(
            f"train@{variant.name}: best epoch {state.best_epoch} of {state.epoch}, "
            f"combined {state.best_metric:.4f} -> {args.out}"
        )
    cleanup()


if __name__ == "__main__":
    run(main)
