"""What train@X writes once training ends (lib/train/outputs.py)."""

import json
import math

from lib.train.loop import TrainState
from lib.train.outputs import best_metrics, write_curves, write_model_dir


def state() -> TrainState:
    rows = [
        {"epoch": 1, "phase": 1, "train_total": 3.0, "val_total": 2.9, "val_mean_auc": math.nan,
         "val_mean_recall": 0.1, "val_combined": 0.1234567891, "lr": 1e-3},
        {"epoch": 2, "phase": 2, "train_total": 2.5, "val_total": 2.4, "val_mean_auc": 0.6,
         "val_mean_recall": 0.2, "val_combined": 0.32, "lr": 5e-4},
    ]  # fmt: skip
    return TrainState(
        epoch=2, step=4, best_metric=0.32, best_epoch=2, history=rows,
        lr_history=[[1, 1e-3], [2, 1e-3], [3, 8e-4], [4, 5e-4]],
    )  # fmt: skip


def test_best_metrics_round_and_null_the_undefined():
    s = state()
    assert best_metrics(s) == {
        "best_epoch": 2, "epochs_run": 2, "stopped_early": False, "val_total": 2.4,
        "val_mean_auc": 0.6, "val_mean_recall": 0.2, "val_combined": 0.32,
    }  # fmt: skip
    s.best_epoch = 1
    m = best_metrics(s)
    assert m["val_mean_auc"] is None and m["val_combined"] == 0.123457


def test_model_dir_and_curves(tmp_path):
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"weights")
    write_model_dir(tmp_path / "model", weights, {"name": "A"}, state())
    assert (tmp_path / "model/model.safetensors").read_bytes() == b"weights"
    config = json.loads((tmp_path / "model/config.json").read_text())
    assert config == {"name": "A", "best_epoch": 2, "epochs_run": 2}
    write_curves(tmp_path / "plots", "A", state())
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == [
        "combined.png", "epochs.csv", "loss.png", "lr.csv", "lr.png", "mean_auc.png",
        "mean_recall.png",
    ]  # fmt: skip
