"""Phrase grounding in the MS-CXR format: reading the boxes, mapping them onto the model's
input, and scoring a saliency map against them (BioViL's CNR, the pointing game, top-k IoU).

MS-CXR v1.1.0 (``MS_CXR_Local_Alignment_v1.1.0.csv``): one row per box, columns
``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height, split``,
boxes in pixels of the original image. A phrase with several boxes has several rows; its
ground truth is the union of its boxes. MS-CXR's own ``split`` column is not MIMIC-CXR's
official split and is never used as one.

Maps are 2-D arrays over the model's input (``size`` × ``size`` pixels), e.g. a patch map
upsampled with :func:`upsample`. NumPy and pandas only; the models' maps come from
lib/eval/phrase_maps.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.data.images import resize_shape
from lib.data.master import Split
from lib.data.mimic import MS_CXR_COLUMNS, SUBJECT_IN_PATH
from lib.errors import DataError
from lib.eval.stats import bootstrap_mean_ci

COLUMNS: tuple[str, ...] = MS_CXR_COLUMNS
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
    for col in ("dicom_id", "category_name", "label_text", "path"):
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            rows = (np.flatnonzero(empty) + 2).tolist()[:5]  # +2: header line, 1-based
            raise DataError(
                f"{path}: column {col!r} is empty on {int(empty.sum())} lines (e.g. {rows}); "
                "every box needs its image, category, phrase and image path: fill or drop them"
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
    """A (..., gh, gw) map over the patch grid -> (..., size, size), bilinear with the patch
    values at the patch centres (as BioViL resizes its similarity maps), edges held
    constant."""
    gh, gw = patch_map.shape[-2:]
    rows = (np.arange(size) + 0.5) * gh / size - 0.5
    cols = (np.arange(size) + 0.5) * gw / size - 0.5
    r0 = np.clip(np.floor(rows).astype(int), 0, gh - 1)
    c0 = np.clip(np.floor(cols).astype(int), 0, gw - 1)
    r1, c1 = np.minimum(r0 + 1, gh - 1), np.minimum(c0 + 1, gw - 1)
    fr = np.clip(rows - r0, 0, 1)[:, None]
    fc = np.clip(cols - c0, 0, 1)[None, :]
    m = np.asarray(patch_map, dtype=np.float64)
    rows0, rows1 = m[..., r0, :], m[..., r1, :]
    top = rows0[..., c0] * (1 - fc) + rows0[..., c1] * fc
    bottom = rows1[..., c0] * (1 - fc) + rows1[..., c1] * fc
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


# --- phrases of a grounding file, matched to the master file ---------------------------------

# Subset -> the official split (master file) of its images; None: every phrase. Settings are
# chosen on "val"; results.md reports "official_test".
SUBSETS: dict[str, str | None] = {"official_test": "test", "val": "val", "all": None}
FLOORS: tuple[str, ...] = ("random", "centre")
SCORES: tuple[str, ...] = ("cnr", "pointing", "iou")
CNR_CAP = 100.0


@dataclass(frozen=True)
class Phrases:
    """The phrases of a grounding file whose image is in the master file, one per
    (dicom_id, category, phrase) with the union of its boxes; aligned arrays."""

    dicom: list[str]
    category: list[str]
    text: list[str]
    boxes: list[list[tuple[float, float, float, float]]]  # original pixels
    image_wh: np.ndarray  # (n, 2) original width, height
    image: list[str]  # the image's path under data.root (master file)
    split: list[str]  # the image's official split (master file)
    subject: np.ndarray  # (n,) int64: patient, for the bootstrap
    unknown_dicom: list[str]  # dicom ids of the file not in the master file (left out)

    def __len__(self) -> int:
        return len(self.dicom)


def match_phrases(
    boxes: pd.DataFrame, splits: Mapping[str, Split], holdout: set[int] | None = None
) -> Phrases:
    """Group ``read_boxes``'s rows into phrases and find each image in the master file.

    Images the master file lacks (another view, dropped by QC, not in this corpus) are left
    out and listed in ``unknown_dicom``; when none is found the result is empty (the
    grounding stages then report that they scored nothing, and why). The split of an image
    is MIMIC-CXR's official one from the master file, never the file's own column.

    ``holdout`` (``data.holdout_patients_from``): patients that qc kept out of training and
    validation. Their images are not in the master file (but for official-test ones), so
    those of the file are taken from its ``path`` column, split "holdout": no model saw
    them, and they count in the "all" subset.
    """
    where: dict[str, tuple[str, int, str]] = {}
    for name, split in splits.items():
        for d, subject, image in zip(
            split.dicom, split.subject.tolist(), split.images, strict=True
        ):
            where[d] = (name, int(subject), image)
    if holdout:
        subjects = boxes["path"].str.extract(SUBJECT_IN_PATH)[0]
        for dicom, subject, image in zip(boxes["dicom_id"], subjects, boxes["path"], strict=True):
            if dicom not in where and isinstance(subject, str) and int(subject) in holdout:
                where[dicom] = ("holdout", int(subject), image)
    known = boxes["dicom_id"].isin(where)
    unknown = sorted(set(boxes.loc[~known, "dicom_id"]))
    out: dict[str, list] = {k: [] for k in ("dicom", "category", "text", "boxes", "wh")}
    keys = ["dicom_id", "category_name", "label_text"]
    for (dicom, category, text), rows in boxes[known].groupby(keys, sort=True):
        out["dicom"].append(str(dicom))
        out["category"].append(str(category))
        out["text"].append(str(text))
        out["boxes"].append([tuple(r) for r in rows[["x", "y", "w", "h"]].to_numpy()])
        out["wh"].append(rows[["image_width", "image_height"]].to_numpy()[0])
    return Phrases(
        dicom=out["dicom"],
        category=out["category"],
        text=out["text"],
        boxes=out["boxes"],
        image_wh=np.asarray(out["wh"], dtype=np.float64).reshape(-1, 2),
        image=[where[d][2] for d in out["dicom"]],
        split=[where[d][0] for d in out["dicom"]],
        subject=np.array([where[d][1] for d in out["dicom"]], dtype=np.int64),
        unknown_dicom=unknown,
    )


def phrase_masks(phrases: Phrases, size: int) -> np.ndarray:
    """(n, size, size) bool: each phrase's boxes on the model's input (``scale_box``)."""
    masks = np.zeros((len(phrases), size, size), dtype=bool)
    for i, (boxes, (w, h)) in enumerate(zip(phrases.boxes, phrases.image_wh, strict=True)):
        masks[i] = box_mask([scale_box(b, w, h, size) for b in boxes], size)
    return masks


def score(saliency: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """CNR, pointing and top-k IoU of one map against one phrase's box mask."""
    return {"cnr": cnr(saliency, mask), "pointing": pointing(saliency, mask),
            "iou": topk_iou(saliency, mask)}  # fmt: skip


# Maps scored per call of score_all: bounds the (chunk, size²) float and index arrays
# (256 × 224² × 8 B ≈ 100 MB each at BiomedCLIP's size).
_SCORE_CHUNK = 256


def score_all(saliency: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """``score`` of many maps at once: (n, S, S) maps and box masks -> name -> (n,).

    The same definitions as ``cnr``, ``pointing`` and ``topk_iou`` (equal up to rounding),
    vectorised over the maps; every mask must cover some but not all of its image.
    """
    if saliency.shape != masks.shape or saliency.ndim != 3:
        raise ValueError(f"maps {saliency.shape} and masks {masks.shape}: need equal (n, S, S)")
    n = len(saliency)
    out = {name: np.empty(n) for name in SCORES}
    for start in range(0, n, _SCORE_CHUNK):
        sl = slice(start, start + _SCORE_CHUNK)
        x = saliency[sl].reshape(len(saliency[sl]), -1).astype(np.float64)
        m = masks[sl].reshape(len(x), -1)
        n_in = m.sum(axis=1)
        if (n_in == 0).any() or (n_in == m.shape[1]).any():
            raise ValueError("every box mask must cover some but not all of the image")
        n_out = m.shape[1] - n_in
        mean_in = np.where(m, x, 0).sum(axis=1) / n_in
        mean_out = np.where(m, 0, x).sum(axis=1) / n_out
        dev = (x - np.where(m, mean_in[:, None], mean_out[:, None])) ** 2
        var_in = np.where(m, dev, 0).sum(axis=1) / n_in
        var_out = np.where(m, 0, dev).sum(axis=1) / n_out
        diff, spread = np.abs(mean_in - mean_out), np.sqrt(var_in + var_out)
        tol = 1e-9 * np.maximum(np.abs(x).max(axis=1), 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(spread > tol, diff / spread, np.inf)
        out["cnr"][sl] = np.where(diff <= tol, 0.0, c)
        top = x == x.max(axis=1, keepdims=True)
        out["pointing"][sl] = (top & m).sum(axis=1) / top.sum(axis=1)
        # The k largest pixels, ties at the k-th value broken by position (as topk_iou's
        # stable sort): everything above the k-th value, then the first tied ones.
        kth = np.take_along_axis(np.sort(x, axis=1), (m.shape[1] - n_in)[:, None], axis=1)
        above, tied = x > kth, x == kth
        need = n_in[:, None] - above.sum(axis=1, keepdims=True)
        best = above | (tied & (np.cumsum(tied, axis=1) <= need))
        out["iou"][sl] = (best & m).sum(axis=1) / (best | m).sum(axis=1)
    return out


def floor_maps(grid: tuple[int, int], size: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """The floors' maps for n phrases: a fresh ``random_map`` each (seeded; the values of n
    successive calls, drawn at once) and the ``centre_prior``. Fine for small n; see
    ``score_floors`` for many phrases."""
    rng = np.random.default_rng(seed)
    return {
        "random": upsample(rng.random((n, *grid)), size),
        "centre": np.broadcast_to(centre_prior(size), (n, size, size)),
    }


def score_patch_maps(patch_maps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """``score_all`` of (n, gh, gw) patch maps, upsampled to the masks' size a chunk at a
    time (n full-size float64 maps at 224 px would be ~0.5 GB for MS-CXR's 1,162)."""
    size = masks.shape[-1]
    out = {name: np.empty(len(masks)) for name in SCORES}
    for start in range(0, len(masks), _SCORE_CHUNK):
        sl = slice(start, start + _SCORE_CHUNK)
        for name, v in score_all(upsample(patch_maps[sl], size), masks[sl]).items():
            out[name][sl] = v
    return out


def score_floors(
    grid: tuple[int, int], masks: np.ndarray, seed: int | Sequence[int]
) -> dict[str, dict[str, np.ndarray]]:
    """The floors' scores against (n, S, S) masks: the random maps of ``floor_maps`` (same
    values), upsampled a chunk at a time, and the centre prior."""
    n, size = len(masks), masks.shape[-1]
    grids = np.random.default_rng(seed).random((n, *grid))
    centre = np.broadcast_to(centre_prior(size), (n, size, size))
    return {"random": score_patch_maps(grids, masks), "centre": score_all(centre, masks)}


def summarise(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    phrases: Phrases,
    scorable: np.ndarray,
    n_rounds: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """Mean and patient-bootstrap interval of every score of every map, overall and per
    category, on each of ``SUBSETS``: the phrases of official-test images, of official-val
    images, and all.

    ``scores``: map kind -> score -> (n,) per phrase; ``scorable``: (n,) bool, phrases whose
    box survives the centre crop (the others are counted, not scored). An infinite CNR (a
    map that is constant inside and outside the box at different levels) is capped at
    ``CNR_CAP`` so that a mean stays finite.
    """
    category = np.asarray(phrases.category)
    out: dict[str, Any] = {}
    for subset, split in SUBSETS.items():
        rows = scorable.copy()
        if split is not None:
            rows &= np.asarray(phrases.split) == split
        sub: dict[str, Any] = {"phrases": int(rows.sum()), **{kind: {} for kind in scores}}
        groups = {"all": rows, **{c: rows & (category == c) for c in sorted(set(category))}}
        columns = [(kind, name) for kind in scores for name in SCORES]
        for group, sel in groups.items():
            if not sel.any():
                if group == "all":  # nothing scorable: every score present, undefined
                    for kind, name in columns:
                        sub[kind]["n"] = 0
                        sub[kind][name] = {"mean": None, "low": None, "high": None}
                continue
            idx = np.flatnonzero(sel)
            # Every map's every score in one bootstrap: the same resamples for all.
            values = np.stack([scores[kind][name][idx] for kind, name in columns], axis=1)
            values = np.minimum(values, CNR_CAP)
            cis = bootstrap_mean_ci(values, phrases.subject[idx], n_rounds, seed, level)
            for (kind, name), ci in zip(columns, cis, strict=True):
                entry = (
                    sub[kind]
                    if group == "all"
                    else sub[kind].setdefault("per_category", {}).setdefault(group, {})
                )
                entry["n"] = int(sel.sum())
                entry[name] = {"mean": _r(ci.point), "low": _r(ci.low), "high": _r(ci.high)}
        out[subset] = sub
    return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)
