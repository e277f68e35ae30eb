"""Per-epoch training metrics through DVCLive, so ``dvc exp show`` lists them and
``dvc plots show`` draws the curves while train@X runs.

The logger only writes files into its folder (a declared output of train@X): it saves no
experiment, writes no dvc.yaml, makes no report, and never talks to Studio or any other
server (``DVC_STUDIO_OFFLINE`` is forced on; DVC's analytics are off by default here).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any


def metric_name(column: str) -> str:
    """History column → DVCLive metric: ``train_total`` → ``train/total``, ``val_i2t_R@1``
    → ``val/i2t_R@1``; ``lr`` and ``phase`` unchanged."""
    for prefix in ("train_", "val_"):
        if column.startswith(prefix):
            return f"{prefix[:-1]}/{column.removeprefix(prefix)}"
    return column


class EpochLog:
    """``log(row)`` once per epoch (row: one ``TrainState.history`` entry); the DVCLive step
    is the epoch number. A resumed run replays its history first, so the folder always
    holds every epoch."""

    def __init__(self, folder: Path) -> None:
        os.environ["DVC_STUDIO_OFFLINE"] = "true"
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        from dvclive import Live  # imports DVC: only the stage that logs pays for it

        self.live = Live(
            dir=str(folder),
            resume=False,
            report=None,
            save_dvc_exp=False,
            dvcyaml=None,
            monitor_system=False,
        )

    def log(self, row: Mapping[str, Any]) -> None:
        self.live.step = int(row["epoch"])
        for column, value in row.items():
            if column != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                self.live.log_metric(metric_name(column), value)
        self.live.next_step()

    def __enter__(self) -> EpochLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.live.end()
