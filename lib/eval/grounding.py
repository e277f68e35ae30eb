"""Phrase grounding in the MS-CXR format: reading the boxes, mapping them onto the model's
input, and scoring a saliency map against them (BioViL's CNR, the pointing game, top-k IoU).

MS-CXR v1.1.0 (``MS_CXR_Local_Alignment_v1.1.0.csv``): one row per box, columns
``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height, split``,
boxes in pixels of the original image. A phrase with several boxes has several rows; its
ground truth is the union of its boxes. MS-CXR's own ``split`` column is not MIMIC-CXR's
official split and is never used as one.

Maps are 2-D arrays over the model's input (``size`` × ``size`` pixels), e.g. a patch map
upsampled with :func:`upsample`. Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lib.data.images import resize_shape
from lib.errors import DataError

COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "category_name",
    "label_text",
    "path",
    "x",
    "y",
    "w",
    "h",
    "image_width",
    "image_height",
    "split",
)
_NUMERIC = ("x", "y", "w", "h", "image_width", "image_height")


def read_boxes(path: Path) -> pd.DataFrame:
    """The MS-CXR-format CSV at ``path``, checked: every column present, numbers numeric,
    sizes positive and every box inside its image (a box may touch the border). Raises
    DataError naming the file, the column, the first bad rows and the fix."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; set data.grounding to an MS-CXR-format CSV")
    df = pd.read_csv(path, dtype={"dicom_id": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing columns {missing}; an MS-CXR v1.1.0 file has {list(COLUMNS)}"
        )
    for col in _NUMERIC:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            rows = (np.flatnonzero(bad) + 2).tolist()[:5]  # +2: header line, 1-based
            raise DataError(
                f"{path}: column {col!r} is not a number on lines {rows} (e.g. "
                f"{df[col][bad].iloc[0]!r}); boxes are pixels of the original image"
            )
        df[col] = values.astype(np.float64)
    positive = (df[["w", "h", "image_width", "image_height"]] > 0).all(axis=1)
    inside = (
        (df.x >= 0)
        & (df.y >= 0)
        & (df.x + df.w <= df.image_width)
        & (df.y + df.h <= df.image_height)
    )
    bad = ~(positive & inside)
    if bad.any():
        first = df[bad].iloc[0]
        raise DataError(
            f"{path}: {int(bad.sum())} boxes are empty or outside their image (lines "
            f"{(np.flatnonzero(bad) + 2).tolist()[:5]}; e.g. dicom_id {first.dicom_id}: x "
            f"{first.x}, y {first.y}, w {first.w}, h {first.h} in {first.image_width} × "
            f"{first.image_height}); fix or drop those rows"
        )
    return df


def scale_box(
    box: Sequence[float], image_width: float, image_height: float, size: int
) -> tuple[float, float, float, float]:
    """(x, y, w, h) in original pixels -> the same box in the model's ``size`` × ``size``
    input, through the images' own transform (lib/data/images.py: shorter side resized to
    ``size``, centre crop), clipped to the crop. JPEG draft decoding can shift the resized
    size by a pixel; boxes are not moved for it."""
    x, y, w, h = box
    nw, nh = resize_shape(int(image_width), int(image_height), size)
    sx, sy = nw / image_width, nh / image_height
    left, top = (nw - size) // 2, (nh - size) // 2
    x0 = min(max(x * sx - left, 0.0), size)
    y0 = min(max(y * sy - top, 0.0), size)
    x1 = min(max((x + w) * sx - left, 0.0), size)
    y1 = min(max((y + h) * sy - top, 0.0), size)
    return x0, y0, x1 - x0, y1 - y0


def box_mask(boxes: Sequence[Sequence[float]], size: int) -> np.ndarray:
    """(size, size) bool: the union of the (x, y, w, h) boxes, in input pixels; a pixel is
    in a box when its centre is."""
    centres = np.arange(size) + 0.5
    mask = np.zeros((size, size), dtype=bool)
    for x, y, w, h in boxes:
        cols = (centres >= x) & (centres < x + w)
        rows = (centres >= y) & (centres < y + h)
        mask |= rows[:, None] & cols[None, :]
    return mask


def upsample(patch_map: np.ndarray, size: int) -> np.ndarray:
    """A (gh, gw) map over the patch grid -> (size, size), bilinear with the patch values at
    the patch centres (as BioViL resizes its similarity maps), edges held constant."""
    gh, gw = patch_map.shape
    rows = (np.arange(size) + 0.5) * gh / size - 0.5
    cols = (np.arange(size) + 0.5) * gw / size - 0.5
    r0 = np.clip(np.floor(rows).astype(int), 0, gh - 1)
    c0 = np.clip(np.floor(cols).astype(int), 0, gw - 1)
    r1, c1 = np.minimum(r0 + 1, gh - 1), np.minimum(c0 + 1, gw - 1)
    fr = np.clip(rows - r0, 0, 1)[:, None]
    fc = np.clip(cols - c0, 0, 1)[None, :]
    m = np.asarray(patch_map, dtype=np.float64)
    top = m[r0][:, c0] * (1 - fc) + m[r0][:, c1] * fc
    bottom = m[r1][:, c0] * (1 - fc) + m[r1][:, c1] * fc
    return top * (1 - fr) + bottom * fr


def _check(saliency: np.ndarray, mask: np.ndarray) -> None:
    if saliency.shape != mask.shape or saliency.ndim != 2:
        raise ValueError(
            f"map {saliency.shape} and box mask {mask.shape} must be the same 2-D shape"
        )
    if not mask.any() or mask.all():
        raise ValueError("the box mask must cover some but not all of the image")


def cnr(saliency: np.ndarray, mask: np.ndarray) -> float:
    """BioViL's contrast-to-noise ratio: |mean inside − mean outside| / sqrt(var inside +
    var outside). A map constant on each side gives 0 when the two constants are equal (a
    uniform map) and inf when they differ (a hard mask exactly on the box)."""
    _check(saliency, mask)
    inside, outside = saliency[mask], saliency[~mask]
    spread = np.sqrt(inside.var() + outside.var())
    diff = abs(inside.mean() - outside.mean())
    tol = 1e-9 * max(float(np.abs(saliency).max()), 1e-300)  # rounding of a constant's mean
    if diff <= tol:
        return 0.0
    return float(diff / spread) if spread > tol else float("inf")


def pointing(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Pointing game: 1 if the map's maximum lies in the box. Ties count by the share of the
    maximal pixels inside the box (the expected hit of a random tie-break), so a uniform map
    scores the box's area fraction."""
    _check(saliency, mask)
    top = saliency == saliency.max()
    return float(np.sum(top & mask) / np.sum(top))


def topk_iou(saliency: np.ndarray, mask: np.ndarray) -> float:
    """IoU between the box and the map's k highest pixels, k = the box's area (ties broken
    by position, first in row-major order)."""
    _check(saliency, mask)
    k = int(mask.sum())
    order = np.argsort(-saliency.ravel(), kind="stable")[:k]
    top = np.zeros(saliency.size, dtype=bool)
    top[order] = True
    top = top.reshape(saliency.shape)
    return float(np.sum(top & mask) / np.sum(top | mask))


def centre_prior(size: int, sigma: float = 0.25) -> np.ndarray:
    """The centre-prior floor: an isotropic Gaussian at the image centre, sd ``sigma`` of
    the side."""
    c = (np.arange(size) + 0.5) / size - 0.5
    return np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma**2))


def random_map(grid: tuple[int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """The uniform-random floor: i.i.d. U(0, 1) values on the model's patch ``grid``,
    upsampled like the models' maps (so it is as smooth as they can be)."""
    return upsample(rng.random(grid), size)
