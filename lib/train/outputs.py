"""What train@X leaves behind once training ends (rank 0): the checkpoint folder, the
best epoch's validation metrics, and the curves (CSV + PNG) of every epoch."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from lib.io import atomic_path, save_figure, write_csv
from lib.train.loop import TrainState
from lib.train.plots import loss_figure, lr_figure, metric_figure

# Validation metrics drawn one figure each: (history column, title).
METRIC_FIGURES = (
    ("val_combined", "combined metric"),
    ("val_mean_recall", "mean recall"),
    ("val_mean_auc", "mean AUC"),
)


def write_model_dir(
    out: Path, best_weights: Path, config: dict[str, Any], state: TrainState
) -> None:
    """``out``/model.safetensors (the best epoch) and config.json: the resolved variant
    config plus the epoch it was taken at."""
    with atomic_path(out) as tmp:
        tmp.mkdir()
        shutil.copy2(best_weights, tmp / "model.safetensors")
        record = {**config, "best_epoch": state.best_epoch, "epochs_run": state.epoch}
        (tmp / "config.json").write_text(json.dumps(record, indent=2) + "\n")


def best_metrics(state: TrainState) -> dict[str, Any]:
    """metrics/train/X.json: the best epoch's validation metrics, rounded to 6 digits (an
    undefined one, NaN, as null)."""
    best = state.history[state.best_epoch - 1]
    return {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        # Epochs after the first whose train InfoNCE sat at its all-embeddings-alike value.
        "collapsed_epochs": sum(int(row.get("collapsed", 0)) for row in state.history),
        **{
            k: (round(v, 6) if math.isfinite(v) else None)
            for k, v in best.items()
            if k.startswith("val_")
        },
    }


def write_curves(folder: Path, name: str, state: TrainState) -> None:
    """epochs.csv (one row per epoch), lr.csv (one per optimizer step) and their figures."""
    epochs = pd.DataFrame(state.history)
    steps = pd.DataFrame(state.lr_history, columns=["step", "lr"])
    write_csv(folder / "epochs.csv", epochs)
    write_csv(folder / "lr.csv", steps)
    save_figure(folder / "loss.png", loss_figure(name, epochs))
    for col, title in METRIC_FIGURES:
        figure = metric_figure(name, epochs, col, title)
        save_figure(folder / f"{col.removeprefix('val_')}.png", figure)
    save_figure(folder / "lr.png", lr_figure(name, steps))
