"""DVCLive logging of training epochs (lib/train/live.py)."""

from __future__ import annotations

import json
import math

from lib.train.live import EpochLog, metric_name


def test_metric_names():
    assert metric_name("train_total") == "train/total"
    assert metric_name("val_i2t_R@1") == "val/i2t_R@1"
    assert metric_name("lr") == "lr" and metric_name("phase") == "phase"


def test_epochs_become_steps_and_nothing_else_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder without git or DVC: nothing to save an experiment in
    folder = tmp_path / "live"
    rows = [
        {"epoch": 1, "phase": 1, "train_total": 3.5, "val_total": 3.4, "val_mean_auc": math.nan},
        {"epoch": 2, "phase": 2, "train_total": 3.1, "val_total": 3.2, "val_mean_auc": 0.6},
    ]
    with EpochLog(folder) as log:
        for row in rows:
            log.log(row)
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["step"] == 2 and summary["val"] == {"total": 3.2, "mean_auc": 0.6}
    total = (folder / "plots/metrics/train/total.tsv").read_text().split()
    assert total == ["step", "total", "1", "3.5", "2", "3.1"]
    # An undefined value (NaN) is left out rather than drawn as a point.
    assert (folder / "plots/metrics/val/mean_auc.tsv").read_text().split()[2:] == ["2", "0.6"]
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert not {w for w in written if w.endswith(("dvc.yaml", ".html", ".md"))}
