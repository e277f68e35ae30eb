"""VQA figures: the readiness report's distributions (stage vqa_readiness), attention against
the reference boxes (stage vqa@X) and accuracy per question type (stage compare)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

PANELS = (
    ("polarity", "binary answers"),
    ("question_types", "question types"),
    ("regions", "region answers"),
    ("grades_read", "quality grades (read)"),
    ("heads", "heads"),
    ("splits", "splits"),
)


def distributions_figure(report: Mapping[str, Any]) -> Figure:
    """One bar chart per distribution of the readiness report, 2 x 3."""
    fig = Figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    dists = report.get("distributions", {})
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        counts = dists.get(key, {})
        ax.barh(list(counts), list(counts.values()), color="#4c72b0")
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    fig.suptitle(f"VQA readiness: ready = {report.get('ready')}", fontsize=11)
    return fig


def attention_figure(
    examples: Sequence[Mapping[str, Any]],
    images: Sequence[np.ndarray],
    grid: tuple[int, int],
    title: str,
) -> Figure:
    """One panel per example: the image, the model's question→patch attention (its grid
    stretched over the image) and the reference boxes (pixel coordinates of the original
    image, scaled to the packed side), with the question and both answers."""
    n = max(len(examples), 1)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 4.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, ex, img in zip(axes, examples, images, strict=False):
        side = img.shape[0]
        ax.imshow(img, cmap="gray", extent=(0, side, side, 0))
        att = np.asarray(ex["attention"], dtype=float).reshape(grid)
        ax.imshow(att, cmap="jet", alpha=0.4, extent=(0, side, side, 0), interpolation="bilinear")
        sx, sy = side / ex["width"], side / ex["height"]
        for x1, y1, x2, y2 in ex["boxes"]:
            ax.add_patch(
                Rectangle(
                    (x1 * sx, y1 * sy),
                    (x2 - x1) * sx,
                    (y2 - y1) * sy,
                    fill=False,
                    edgecolor="lime",
                    linewidth=1.5,
                )
            )
        mark = "correct" if ex["correct"] else "wrong"
        ax.set_title(
            f"{_wrap(ex['question'])}\npred ({mark}): {_wrap(ex['answer'])}\n"
            f"ref: {_wrap(ex['reference'])}",
            fontsize=7,
        )
    fig.suptitle(title, fontsize=10)
    return fig


def _wrap(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def accuracy_by_type_figure(accuracy: Mapping[str, Mapping[str, float]]) -> Figure:
    """Grouped horizontal bars: test accuracy per question type (rows) for each model and
    floor (bars), legend outside the axes so that many models stay readable."""
    names = list(accuracy)
    types = sorted({t for acc in accuracy.values() for t in acc})
    fig = Figure(figsize=(9, 1.0 + 0.25 * len(types) * max(len(names), 1)), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / max(len(names), 1)
    cmap = matplotlib.colormaps["tab20"]
    for j, name in enumerate(names):
        ys = np.arange(len(types)) + j * height
        xs = [accuracy[name].get(t, np.nan) for t in types]
        ax.barh(ys, xs, height=height, label=name, color=cmap(j % 20))
    ax.set_yticks(np.arange(len(types)) + 0.4 - height / 2, types, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("VQA accuracy per question type (test split)", fontsize=10)
    return fig
