"""Ground-truth boxes of the demo's findings, in the MS-CXR format (issue 13).

The renderer draws each finding from its own random stream (lib/demo/synth_images.py), so
the same image rendered with and without one finding differs only where that finding is
drawn. The box of a finding is the bounding box of those changed pixels: one box per
separate region (a bilateral effusion gets two), small specks merged into the region they
lie near. The phrase is the report's first sentence stating the finding
(``synth_reports.Report.phrases``), which the report writer places where the image draws it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# A pixel counts as changed when its grey level moves by more than this (of 255). Findings
# also nudge the anatomy around them by a few grey levels (a raised hemidiaphragm shifts the
# abdomen's edge): at 8, atelectasis boxes covered 30 % of the film on average (up to 66 %),
# at 16 15 % (up to 50 %), losing the box of 2 more of 300 phrases (measured 2026-11-28).
DIFF_THRESHOLD = 16
# Changed pixels this close (fraction of the shorter side) belong to the same region.
MERGE_FRACTION = 0.04
# A region is boxed on its own only if it holds this share of the changed pixels; smaller
# ones (a stray speck of a wire) are left out of every box.
MIN_REGION_SHARE = 0.05


def diff_boxes(
    with_finding: np.ndarray,
    without: np.ndarray,
    threshold: int = DIFF_THRESHOLD,
    merge_fraction: float = MERGE_FRACTION,
    min_share: float = MIN_REGION_SHARE,
) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) in pixels around where two renders of one image differ.

    Changed pixels (|difference| > ``threshold``) are grouped into regions by a dilation of
    ``merge_fraction`` of the shorter side; each region holding at least ``min_share`` of
    the changed pixels gets the bounding box of its changed pixels. Largest region first;
    [] when nothing changed.
    """
    if with_finding.shape != without.shape or with_finding.ndim != 2:
        raise ValueError(
            f"the two renders must be 2-D and the same shape, got {with_finding.shape} "
            f"and {without.shape}"
        )
    changed = np.abs(with_finding.astype(np.int16) - without.astype(np.int16)) > threshold
    total = int(changed.sum())
    if total == 0:
        return []
    radius = max(1, round(merge_fraction * min(changed.shape)))
    grown = ndimage.binary_dilation(changed, iterations=radius)
    regions, n = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    ids = regions[changed]
    counts = np.bincount(ids, minlength=n + 1)
    boxes: list[tuple[int, tuple[int, int, int, int]]] = []
    for region in np.flatnonzero(counts >= max(1, min_share * total)):
        if region == 0:
            continue
        ys, xs = np.nonzero(changed & (regions == region))
        x0, y0 = int(xs.min()), int(ys.min())
        boxes.append(
            (int(counts[region]), (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1))
        )
    boxes.sort(key=lambda cb: -cb[0])
    return [b for _, b in boxes]
