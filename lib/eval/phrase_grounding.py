"""Phrase grounding of one model: every phrase of the grounding file scored on its maps.

For each phrase (lib/eval/box_scores.match_phrases) the model's maps of its image
(lib/eval/phrase_maps.py) are upsampled to the model's input and scored against the
phrase's boxes, mapped through the images' resize and centre crop (CNR, pointing game,
top-k IoU); a uniform-random and a centre-prior map are scored the same way as floors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lib.config.params import EvalParams
from lib.eval.box_scores import (
    FLOORS,
    SCORES,
    Phrases,
    phrase_masks,
    score_floors,
    score_patch_maps,
    summarise,
)
from lib.eval.embed_model import Trained
from lib.eval.phrase_maps import map_kinds, phrase_maps

# Rows of the figure: the first phrases of each category (in file order), this many each.
FIGURE_PER_CATEGORY = 1


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
    """The boxes on a ``size``-pixel input and the random / centre floors on ``grid``."""
    n = len(phrases)
    masks = phrase_masks(phrases, size)
    flat = masks.reshape(n, -1)
    scorable = flat.any(axis=1) & ~flat.all(axis=1)
    rows = np.flatnonzero(scorable)
    found = score_floors(grid, masks[rows], seed) if len(rows) else {}
    floors = {k: _spread(found.get(k, {}), rows, n) for k in FLOORS}
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
