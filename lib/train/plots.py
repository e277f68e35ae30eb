"""The spec's five training plots per model (loss, combined metric, mean recall, mean AUC,
learning rate); each function returns a Figure, the stage saves it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _epoch_axes(title: str, ylabel: str) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _phase_marker(ax: plt.Axes, epochs: pd.DataFrame) -> None:
    phase2 = epochs.loc[epochs["phase"] == 2, "epoch"]
    if len(phase2) and (epochs["phase"] == 1).any():
        ax.axvline(phase2.iloc[0] - 0.5, color="grey", linestyle=":", label="backbone unfrozen")


def loss_figure(name: str, epochs: pd.DataFrame) -> Figure:
    fig, ax = _epoch_axes(f"Model {name}: training and validation loss", "loss")
    ax.plot(epochs["epoch"], epochs["train_total"], marker="o", label="train")
    ax.plot(epochs["epoch"], epochs["val_total"], marker="o", label="validation")
    _phase_marker(ax, epochs)
    ax.legend()
    fig.tight_layout()
    return fig


def metric_figure(name: str, epochs: pd.DataFrame, column: str, title: str) -> Figure:
    fig, ax = _epoch_axes(f"Model {name}: {title}", title)
    ax.plot(epochs["epoch"], epochs[column], marker="o", color="#55A868")
    best = epochs[column].idxmax()
    ax.scatter(
        [epochs.loc[best, "epoch"]],
        [epochs.loc[best, column]],
        s=80,
        facecolors="none",
        edgecolors="red",
        label="best",
    )
    _phase_marker(ax, epochs)
    ax.legend()
    fig.tight_layout()
    return fig


def lr_figure(name: str, steps: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps["step"], steps["lr"])
    ax.set_title(f"Model {name}: learning rate (top layer)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
