"""Figures of the data stages; each function returns a matplotlib Figure (the stage saves it)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib.data.mimic import LABELS

SPLIT_COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def label_distribution_table(distribution: dict[str, Any]) -> pd.DataFrame:
    """Long table (label, split, positives, total, prevalence) for DVC plots."""
    rows = []
    for split, entry in distribution.items():
        total = entry["total"]
        for label in LABELS:
            pos = entry[label]
            rows.append(
                {
                    "label": label,
                    "split": split,
                    "positives": pos,
                    "total": total,
                    "prevalence": round(pos / total, 6) if total else 0.0,
                }
            )
    return pd.DataFrame(rows)


def label_distribution_figure(table: pd.DataFrame) -> Figure:
    """Prevalence of each label per split (grouped horizontal bars), counts annotated."""
    splits = list(dict.fromkeys(table["split"]))
    fig, ax = plt.subplots(figsize=(8, 7))
    y = np.arange(len(LABELS))
    h = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        part = table[table["split"] == split].set_index("label").loc[list(LABELS)]
        total = int(part["total"].iloc[0])
        ax.barh(
            y + i * h,
            part["prevalence"] * 100,
            height=h,
            color=SPLIT_COLORS.get(split),
            label=f"{split} (n={total:,})",
        )
        for yy, (prev, pos) in enumerate(zip(part["prevalence"], part["positives"], strict=True)):
            ax.text(prev * 100 + 0.3, yy + i * h, f"{pos:,}", va="center", fontsize=6)
    ax.set_yticks(y + h * (len(splits) - 1) / 2, LABELS)
    ax.invert_yaxis()
    ax.set_xlabel("images with label = 1 (%)")
    ax.set_title("CheXpert label distribution per split (master file)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=len(splits), frameon=False)
    fig.tight_layout()
    return fig


def views_figure(views: dict[str, dict[str, int]]) -> Figure:
    """Images per ViewPosition value in the metadata, kept vs dropped (log scale)."""
    names = sorted(views, key=lambda v: -views[v]["seen"])
    kept = [views[v]["kept"] for v in names]
    dropped = [views[v]["dropped"] for v in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    ax.bar(x, kept, color="#55A868", label="kept")
    ax.bar(x, dropped, bottom=kept, color="#C44E52", label="dropped")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("images")
    ax.set_title("ViewPosition in the metadata")
    ax.legend()
    fig.tight_layout()
    return fig


def text_length_figure(words: pd.DataFrame) -> Figure:
    """Histogram of training-text length (words) per split."""
    fig, ax = plt.subplots(figsize=(7, 4))
    upper = max(int(words["words"].quantile(0.995)) if len(words) else 1, 1)
    bins = np.linspace(0, upper, 40)
    for split, part in words.groupby("split", sort=False):
        ax.hist(
            part["words"].clip(upper=upper),
            bins=bins,
            density=True,
            histtype="step",
            linewidth=1.5,
            color=SPLIT_COLORS.get(str(split)),
            label=str(split),
        )
    ax.set_xlabel("words in text (findings + impression)")
    ax.set_ylabel("density")
    ax.set_title("Report text length")
    ax.legend()
    fig.tight_layout()
    return fig
