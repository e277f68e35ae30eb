"""Stage train@<variant>: staged training of one of models A–E on the master file."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from lib.cli import run
from lib.config.variants import Variant
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.io import atomic_path, save_figure, write_csv, write_json
from lib.train.distributed import cleanup, relaunch_with_torchrun
from lib.train.loop import train_variant
from lib.train.plots import loss_figure, lr_figure, metric_figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, required=True, help="output of resolve_config")
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True, help="data.root (images)")
    ap.add_argument("--pack", type=Path, help="output of pack_images (else decode the JPEGs)")
    ap.add_argument("--out", type=Path, required=True, help="best checkpoint + config")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--efficiency", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True)
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
    )
    if not trainer.dist.is_main:
        cleanup()
        return
    best = state.history[state.best_epoch - 1]
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        shutil.copy2(args.state_dir / "best.safetensors", tmp / "model.safetensors")
        (tmp / "config.json").write_text(
            json.dumps({**raw, "best_epoch": state.best_epoch, "epochs_run": state.epoch}, indent=2)
            + "\n"
        )
    write_json(
        args.metrics,
        {
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "stopped_early": state.stopped_early,
            **{
                k: (round(v, 6) if math.isfinite(v) else None)
                for k, v in best.items()
                if k.startswith("val_")
            },
        },
    )
    write_json(args.efficiency, trainer.efficiency())
    epochs = pd.DataFrame(state.history)
    steps = pd.DataFrame(state.lr_history, columns=["step", "lr"])
    write_csv(args.plots / "epochs.csv", epochs)
    write_csv(args.plots / "lr.csv", steps)
    name = variant.name
    save_figure(args.plots / "loss.png", loss_figure(name, epochs))
    for col, title in (
        ("val_combined", "combined metric"),
        ("val_mean_recall", "mean recall"),
        ("val_mean_auc", "mean AUC"),
    ):
        save_figure(
            args.plots / f"{col.removeprefix('val_')}.png", metric_figure(name, epochs, col, title)
        )
    save_figure(args.plots / "lr.png", lr_figure(name, steps))
    shutil.rmtree(args.state_dir, ignore_errors=True)  # finished: nothing left to resume
    cleanup()
    print(
        f"train@{name}: best epoch {state.best_epoch} of {state.epoch}, "
        f"combined {state.best_metric:.4f} -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
