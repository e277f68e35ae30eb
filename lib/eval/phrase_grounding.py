"""Phrase grounding of one model: every phrase of the grounding file scored on its maps.

For each phrase (lib/eval/box_scores.match_phrases) the model's maps of its image
(lib/eval/phrase_maps.py) are upsampled to the model's input and scored against the
phrase's boxes, mapped through the images' resize and centre crop (CNR, pointing game,
top-k IoU); a uniform-random and a centre-prior map are scored the same way as floors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lib.config.params import EvalParams
from lib.data.images import load_images
from lib.data.master import Split
from lib.data.mimic import LABELS
from lib.data.pack import Pack
from lib.eval.box_scores import (
    FLOORS,
    SCORES,
    SUBSETS,
    Phrases,
    phrase_masks,
    scale_box,
    score_floors,
    score_patch_maps,
    summarise,
)
from lib.eval.embed_model import Trained
from lib.eval.phrase_maps import map_kinds, phrase_maps
from lib.eval.plots import grounding_figure

# Rows of the figure: the first phrases of each category (in file order), this many each.
FIGURE_PER_CATEGORY = 1
# Images of the grounding file missing from the master file: listed in the metrics up to this.
UNKNOWN_LISTED = 20


@dataclass
class Grounding:
    """One model's grounding metrics, the rows of its figure and its maps."""

    metrics: dict[str, Any]
    figure_rows: list[int]  # phrase indices drawn in the figure
    maps: dict[str, np.ndarray]  # kind -> (n, gh, gw) patch maps of every phrase
    truth: Truth  # what it was scored against (reusable by the next model)


@dataclass(frozen=True)
class Truth:
    """What every model of one input size and patch grid is scored against: the phrases'
    box masks, which of them survive the crop, and the floors' scores."""

    size: int
    grid: tuple[int, int]
    masks: np.ndarray  # (n, size, size) bool
    scorable: np.ndarray  # (n,) bool: box neither cropped away nor covering everything
    floors: dict[str, dict[str, np.ndarray]]  # floor -> score -> (n,), NaN where unscorable


def truth_for(phrases: Phrases, size: int, grid: tuple[int, int], seed: int) -> Truth:
    """The boxes on a ``size``-pixel input and the random / centre floors on ``grid``.

    The random maps of official-val phrases come from a stream of their own (``(seed, 1)``),
    so that adding val phrases to a grounding file leaves every other phrase's random map,
    and so the official-test floors, as they were."""
    n = len(phrases)
    masks = phrase_masks(phrases, size)
    flat = masks.reshape(n, -1)
    scorable = flat.any(axis=1) & ~flat.all(axis=1)
    val = np.asarray(phrases.split, dtype=object) == "val"
    floors = {k: {s: np.full(n, np.nan) for s in SCORES} for k in FLOORS}
    for rows, stream in (
        (np.flatnonzero(scorable & ~val), seed),
        (np.flatnonzero(scorable & val), (seed, 1)),
    ):
        found = score_floors(grid, masks[rows], stream) if len(rows) else {}
        for k, by_score in found.items():
            for s, v in by_score.items():
                floors[k][s][rows] = v
    return Truth(size, grid, masks, scorable, floors)


def ground(
    trained: Trained,
    phrases: Phrases,
    pixels_of: Callable[[list[int]], torch.Tensor],
    params: EvalParams,
    truth: Truth | None = None,
) -> Grounding:
    """Score every phrase; ``pixels_of(indices)`` gives the phrases' uint8 model inputs.
    ``truth`` (``truth_for``) may be shared by models of one input size and patch grid."""
    size = trained.backbone.image_size
    grid = trained.model.grid
    if truth is None or (truth.size, truth.grid) != (size, grid):
        truth = truth_for(phrases, size, grid, params.seed)
    n = len(phrases)
    kinds = map_kinds(trained.model)
    maps = {k: np.zeros((n, *grid), dtype=np.float32) for k in kinds}
    for start in range(0, n, params.batch_size):
        idx = list(range(start, min(n, start + params.batch_size)))
        batch = phrase_maps(trained, pixels_of(idx), [phrases.text[i] for i in idx])
        for k in kinds:
            maps[k][idx] = batch[k].numpy()
    rows = np.flatnonzero(truth.scorable)
    scores = {
        k: _spread(score_patch_maps(maps[k][rows], truth.masks[rows]) if len(rows) else {}, rows, n)
        for k in kinds
    }
    scores.update(truth.floors)
    summary = summarise(
        scores, phrases, truth.scorable, params.bootstrap, params.seed, params.ci_level
    )
    metrics = {
        "variant": trained.variant.name,
        "maps": list(kinds),
        "floors": list(truth.floors),
        "phrases": n,
        "images": len(set(phrases.dicom)),
        "boxes_outside_crop": int((~truth.scorable).sum()),
        **summary,
    }
    return Grounding(metrics, figure_rows(phrases, truth.scorable), maps, truth)


def _spread(scores: dict[str, np.ndarray], rows: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Scores of the scorable ``rows`` placed into (n,) arrays, NaN for the others."""
    out = {s: np.full(n, np.nan) for s in SCORES}
    for s, v in scores.items():
        out[s][rows] = v
    return out


def figure_rows(phrases: Phrases, scorable: np.ndarray) -> list[int]:
    """The first scorable official-test phrase of each category (categories sorted)."""
    rows: dict[str, list[int]] = {}
    for i, (cat, split) in enumerate(zip(phrases.category, phrases.split, strict=True)):
        if scorable[i] and split == "test" and len(rows.setdefault(cat, [])) < FIGURE_PER_CATEGORY:
            rows[cat].append(i)
    return [i for cat in sorted(rows) for i in rows[cat]]


def phrase_pixels(
    phrases: Phrases, pack: Pack | None, root: Path, size: int, threads: int
) -> Callable[[list[int]], torch.Tensor]:
    """The phrases' uint8 model inputs by phrase index: gathered from ``pack`` through its
    own checks (input size, a stale pack, undecodable images), or decoded from ``root``
    without one. Held-out patients' images are not in the master file, so not in the pack
    either: a batch holding one is decoded from ``root`` by the same function the pack used."""

    def pixels_of(idx: list[int]) -> torch.Tensor:
        if pack is None or any(phrases.split[i] == "holdout" for i in idx):
            return load_images(root, [phrases.image[i] for i in idx], size, threads)
        return pack.pixels(_as_split(phrases, idx), size)[np.arange(len(idx))]

    return pixels_of


def _as_split(phrases: Phrases, idx: list[int]) -> Split:
    """The images of phrases ``idx`` as master-file rows (what a Pack reads), no labels."""
    rows = np.asarray(idx, dtype=np.int64)
    return Split(
        images=[phrases.image[i] for i in rows],
        study=np.zeros(len(rows), dtype=np.int64),
        subject=phrases.subject[rows],
        texts=[phrases.text[i] for i in rows],
        labels=np.zeros((len(rows), len(LABELS)), dtype=np.int8),
        dicom=[phrases.dicom[i] for i in rows],
    )


def figure(
    name: str,
    phrases: Phrases,
    result: Grounding,
    pixels_of: Callable[[list[int]], torch.Tensor],
    size: int,
) -> Figure:
    """The figure rows' X-rays, each map and the boxes (lib/eval/plots.grounding_figure)."""
    rows = result.figure_rows
    images = list(pixels_of(rows).numpy()) if rows else []
    columns = [(kind, [result.maps[kind][i] for i in rows]) for kind in result.metrics["maps"]]
    captions = [f"{phrases.category[i]}\n{phrases.text[i][:40]}" for i in rows]
    boxes = [[scale_box(b, *phrases.image_wh[i], size) for b in phrases.boxes[i]] for i in rows]
    fig = grounding_figure(images, captions, columns, boxes)
    if rows:
        fig.axes[0].set_title(f"{name}: test X-ray, boxes", fontsize=8)
    return fig


def summary_line(metrics: dict[str, Any]) -> str:
    """One line of a model's grounding metrics: scorable phrases and mean pointing and CNR
    of each map and floor, per subset but "all"."""
    kinds = (*metrics["maps"], *metrics["floors"])
    parts = []
    for subset in (s for s in SUBSETS if s != "all"):
        m = metrics[subset]
        scores = ", ".join(
            f"{k} pointing {m[k]['pointing']['mean']} CNR {m[k]['cnr']['mean']}" for k in kinds
        )
        parts.append(f"{subset}: {m['phrases']} scorable phrases: {scores}")
    return f"grounding@{metrics['variant']}: {metrics['phrases']} phrases; " + "; ".join(parts)


def unknown_images(phrases: Phrases) -> dict[str, Any]:
    """How many images of the grounding file the master file lacks, and the first ones."""
    return {
        "unknown_dicom_ids": len(phrases.unknown_dicom),
        "unknown_dicom_examples": phrases.unknown_dicom[:UNKNOWN_LISTED],
    }
