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
        "best_epoch": 2, "epochs_run": 2, "stopped_early": False, "collapsed_epochs": 0,
        "val_total": 2.4,
        "val_mean_auc": 0.6, "val_mean_recall": 0.2, "val_combined": 0.32,
    }  # fmt: skip
    s.best_epoch = 1
    m = best_metrics(s)
    assert m["val_mean_auc"] is None and m["val_combined"] == 0.123457


def test_collapsed_epochs_are_counted():
    s = state()
    s.history[1]["collapsed"] = 1.0
    assert best_metrics(s)["collapsed_epochs"] == 1


def test_collapse_level_is_the_weighted_ln_batch():
    """InfoNCE of all-alike embeddings: ln(B) each way, weighted; 1 % above is flagged."""
    from types import SimpleNamespace

    from lib.train.loop import COLLAPSE_TOLERANCE, Trainer

    fake = SimpleNamespace(
        mp=SimpleNamespace(contrastive_weight_i2t=0.5, contrastive_weight_t2i=0.5),
        tp=SimpleNamespace(batch_size=32),
    )
    fake.collapse_level = lambda: Trainer.collapse_level(fake)
    assert math.isclose(Trainer.collapse_level(fake), math.log(32))
    assert Trainer.is_collapsed(fake, math.log(32) * (1 - COLLAPSE_TOLERANCE / 2))
    assert not Trainer.is_collapsed(fake, math.log(32) * (1 - 2 * COLLAPSE_TOLERANCE))


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
