"""Evaluation figures: per model (ROC curves, per-label AUC, Recall@K, probe confusion
matrices) and across models (grouped bars with CI whiskers, efficiency, Patch-IB maps).
Each function returns a Figure; the stages save them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import roc_curve

from lib.eval.metrics import IGNORE_LABEL

if TYPE_CHECKING:
    from lib.eval.evaluate import EvalResult


def roc_figure(name: str, scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> Figure:
    """ROC curve of each label (small multiples); labels without both classes say so."""
    cols = 5
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for c, (ax, label) in enumerate(zip(axes.flat, names, strict=False)):
        keep = labels[:, c] != IGNORE_LABEL
        y, s = labels[keep, c], scores[keep, c]
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set_title(label, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        n_pos = int((y == 1).sum())
        if n_pos == 0 or n_pos == len(y):
            ax.text(0.5, 0.5, "undefined:\none class in test", ha="center", fontsize=8)
            continue
        fpr, tpr, _ = roc_curve(y, s)
        auc = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, lw=1.4)
        ax.text(0.97, 0.04, f"AUC {auc:.3f}\nn+ = {n_pos}", ha="right", fontsize=8)
    fig.suptitle(f"Model {name}: zero-shot ROC curves on the test split")
    fig.supxlabel("false positive rate", fontsize=9)
    fig.supylabel("true positive rate", fontsize=9)
    fig.tight_layout()
    return fig


def auc_bars_figure(name: str, table: pd.DataFrame) -> Figure:
    """Per-label AUC: zero-shot with bootstrap whiskers, and the 100 % linear probe.

    table columns: label, zero_shot_auc, zero_shot_ci_low, zero_shot_ci_high, probe_auc.
    """
    fig, ax = plt.subplots(figsize=(7, 5.2))
    y = np.arange(len(table))
    zs = table["zero_shot_auc"].astype(float).to_numpy()
    low = table["zero_shot_ci_low"].astype(float).to_numpy()
    high = table["zero_shot_ci_high"].astype(float).to_numpy()
    err = np.vstack([np.nan_to_num(zs - low), np.nan_to_num(high - zs)])
    ax.barh(y - 0.2, np.nan_to_num(zs), height=0.4, xerr=err, capsize=2, label="zero-shot")
    probe = table["probe_auc"].astype(float).to_numpy()
    ax.barh(y + 0.2, np.nan_to_num(probe), height=0.4, label="linear probe (100 %)")
    for i in np.flatnonzero(np.isnan(zs)):
        ax.text(0.01, y[i] - 0.2, "undefined", va="center", fontsize=7)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_yticks(y, table["label"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUC (test split)")
    ax.set_title(f"Model {name}: AUC per CheXpert label")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    fig.tight_layout()
    return fig


def recall_curve_figure(name: str, curve: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(curve["k"], curve["i2t"], label="image → text")
    ax.plot(curve["k"], curve["t2i"], label="text → image")
    ax.plot(curve["k"], curve["chance_i2t"], ls=":", color="grey", label="chance (i→t)")
    ax.plot(curve["k"], curve["chance_t2i"], ls="--", color="grey", lw=0.8, label="chance (t→i)")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"Model {name}: Recall@K on the test split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(name: str, fraction: str, confusion: Mapping[str, Any]) -> Figure:
    """2×2 test confusion matrix per label at the probe's val-chosen threshold."""
    labels = list(confusion)
    cols = 5
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(labels) :]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels, strict=False):
        ax.set_title(label, fontsize=8)
        ax.set_xticks([0, 1], ["pred −", "pred +"], fontsize=7)
        ax.set_yticks([0, 1], ["true −", "true +"], fontsize=7)
        c = confusion[label]
        if c is None:
            ax.imshow(np.zeros((2, 2)), cmap="Greys", vmin=0, vmax=1)
            ax.text(0.5, 0.5, "no threshold\n(one class)", ha="center", va="center", fontsize=7)
            continue
        m = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        # Row-normalised colour (specificity / sensitivity), counts written in the cells.
        norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.6 else "black",
            )
    fig.suptitle(f"Model {name}: linear probe ({fraction}) confusion matrices, test split")
    fig.tight_layout()
    return fig


def grouped_bars_figure(summary: pd.DataFrame, metrics: Sequence[tuple[str, str]]) -> Figure:
    """One panel per metric, one bar per model, whiskers = bootstrap CI.

    summary columns: model, and for each metric key m: m, m_ci_low, m_ci_high.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.4), squeeze=False)
    x = np.arange(len(summary))
    for ax, (key, title) in zip(axes.flat, metrics, strict=True):
        v = summary[key].astype(float).to_numpy()
        err = np.vstack(
            [
                np.nan_to_num(v - summary[f"{key}_ci_low"].astype(float).to_numpy()),
                np.nan_to_num(summary[f"{key}_ci_high"].astype(float).to_numpy() - v),
            ]
        )
        ax.bar(x, np.nan_to_num(v), yerr=err, capsize=3, color=[f"C{i}" for i in x])
        ax.set_xticks(x, summary["model"])
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if f"chance_{key}" in summary:  # a random ranking's expected recall
            chance = summary[f"chance_{key}"].astype(float).to_numpy()
            ax.scatter(x, chance, marker="_", s=300, color="black", zorder=3, label="chance")
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Test split, 95 % patient-bootstrap intervals", fontsize=10)
    fig.tight_layout()
    return fig


def efficiency_figure(summary: pd.DataFrame, device: str) -> Figure:
    """Inference throughput against zero-shot mean AUC, one point per model."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, row in summary.reset_index(drop=True).iterrows():
        x, y = row["inference_images_per_second"], row["zero_shot_mean_auc"]
        if x is None or y is None or pd.isna(x) or pd.isna(y):
            continue
        ax.errorbar(
            x,
            y,
            yerr=[[y - row["zero_shot_mean_auc_ci_low"]], [row["zero_shot_mean_auc_ci_high"] - y]],
            fmt="o",
            color=f"C{i}",
            capsize=3,
        )
        ax.annotate(
            f"{row['model']} ({row['mean_patch_tokens_kept']:.0f} tokens)",
            (x, y),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    ax.set_xlabel(f"inference throughput (images/s, {device})")
    ax.set_ylabel("zero-shot mean AUC (test)")
    ax.grid(alpha=0.3)
    ax.set_title("Efficiency against accuracy")
    fig.tight_layout()
    return fig


def explain_figure(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    columns: Sequence[tuple[str, Sequence[np.ndarray | None]]],
) -> Figure:
    """Rows = test images; first column the X-ray, then one heatmap column per map.

    columns: (title, one (gh, gw) map per image or None where that model has no map).
    Maps are upsampled to the image with nearest-neighbour blocks (one block per ViT patch)
    and drawn with transparency over the X-ray. A title containing "mask" is drawn on the
    fixed scale 0–1 (z itself, comparable across images and models); other maps
    (attention, a distribution over patches) are scaled per image, from min to max.
    """
    n_rows, n_cols = len(images), 1 + len(columns)
    fig, axes = plt.subplots(
        max(n_rows, 1), n_cols, figsize=(2.2 * n_cols, 2.3 * max(n_rows, 1)), squeeze=False
    )
    if n_rows == 0:
        axes[0, 0].text(0.5, 0.5, "no test image with an affirmed finding", ha="center")
        for ax in axes.flat:
            ax.axis("off")
        return fig
    for r, (img, caption) in enumerate(zip(images, captions, strict=True)):
        size = img.shape[0]
        axes[r, 0].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_ylabel(caption, fontsize=7)
        for c, (title, maps) in enumerate(columns, start=1):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            m = maps[r]
            if m is None or np.isnan(m).all():
                ax.text(size / 2, size / 2, "n/a", color="white", ha="center", fontsize=9)
            else:
                if "mask" in title:
                    scaled = m
                else:
                    scaled = (m - np.nanmin(m)) / max(float(np.nanmax(m) - np.nanmin(m)), 1e-12)
                ax.imshow(
                    scaled,
                    cmap="jet",
                    vmin=0,
                    vmax=1,
                    alpha=0.45,
                    extent=(0, size, size, 0),
                    interpolation="nearest",
                )
            if r == 0:
                ax.set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("test X-ray", fontsize=8)
    fig.tight_layout()
    mappable = matplotlib.cm.ScalarMappable(cmap="jet", norm=matplotlib.colors.Normalize(0, 1))
    bar = fig.colorbar(mappable, ax=axes[-1, 1:].tolist(), orientation="horizontal",
                       fraction=0.05, pad=0.02)  # fmt: skip
    bar.set_label("mask z (attention: per-image min to max)", fontsize=8)
    return fig


def grounding_figure(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    columns: Sequence[tuple[str, Sequence[np.ndarray | None]]],
    boxes: Sequence[Sequence[tuple[float, float, float, float]]],
) -> Figure:
    """``explain_figure`` with each row's ground-truth boxes (x, y, w, h in the image's
    pixels) drawn on every panel of the row."""
    fig = explain_figure(images, captions, columns)
    if not images:
        return fig
    axes = np.asarray(fig.axes[: len(images) * (1 + len(columns))]).reshape(len(images), -1)
    for r, row_boxes in enumerate(boxes):
        for ax in axes[r]:
            for x, y, w, h in row_boxes:
                ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.2))
    return fig


def save_model_plots(
    out: Path, name: str, result: EvalResult, labels: np.ndarray, full: str
) -> None:
    """Write the per-model plots of eval@X and their data: AUC per label, ROC curves,
    Recall@K, the probe by fraction and its confusion matrices at fraction ``full``."""
    from lib.io import save_figure, write_csv

    zs = result.details["zero_shot"]
    names = list(zs["auc"])
    table = pd.DataFrame(
        {
            "label": names,
            "zero_shot_auc": [zs["auc"][lb] for lb in names],
            "zero_shot_ci_low": [zs["auc_ci"][lb][0] for lb in names],
            "zero_shot_ci_high": [zs["auc_ci"][lb][1] for lb in names],
            "probe_auc": [result.probes[full].auc[lb] for lb in names],
            "n_positive": [zs["n_positive"][lb] for lb in names],
        }
    )
    write_csv(out / "auc_per_label.csv", table)
    save_figure(out / "auc_per_label.png", auc_bars_figure(name, table))
    save_figure(out / "roc.png", roc_figure(name, result.rows.zero_shot, labels, names))
    curve = pd.DataFrame(result.recall_curve)
    write_csv(out / "recall_at_k.csv", curve)
    save_figure(out / "recall_at_k.png", recall_curve_figure(name, curve))
    fractions = pd.DataFrame(
        [
            {"fraction": r.fraction, "mean_auc": r.mean_auc, "mean_ap": r.mean_ap}
            for r in result.probes.values()
        ]
    )
    write_csv(out / "probe_fractions.csv", fractions)
    confusion = result.details["probe"][full]["confusion"]
    save_figure(out / "probe_confusion.png", confusion_figure(name, f"{full} of train", confusion))


def save_compare_plots(
    out: Path,
    table: pd.DataFrame,
    tests: pd.DataFrame,
    ks: Sequence[int],
    device: str,
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    columns: Sequence[tuple[str, Sequence[np.ndarray | None]]],
) -> None:
    """Write the cross-model plots of compare and their data: the summary and paired-test
    tables, grouped bars with CIs, efficiency, and the Patch-IB maps (``columns``: one
    heatmap column per model, over ``images``)."""
    from lib.io import save_figure, write_csv

    write_csv(out / "summary.csv", table)
    write_csv(out / "paired_tests.csv", tests)
    bars = [(f"{d}_R@{k}", f"{d.upper()} R@{k}") for d in ("i2t", "t2i") for k in ks]
    bars.append(("zero_shot_mean_auc", "zero-shot mean AUC"))
    save_figure(out / "grouped_bars.png", grouped_bars_figure(table, bars))
    save_figure(out / "efficiency.png", efficiency_figure(table, device))
    save_figure(out / "explain.png", explain_figure(images, captions, columns))
