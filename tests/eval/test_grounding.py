"""lib/eval/grounding.py: MS-CXR boxes, their scaling, and CNR / pointing / top-k IoU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.data.images import load_image
from lib.errors import DataError
from lib.eval.grounding import (
    COLUMNS,
    box_mask,
    centre_prior,
    cnr,
    pointing,
    random_map,
    read_boxes,
    scale_box,
    topk_iou,
    upsample,
)


def test_a_map_equal_to_the_box_scores_perfectly_and_a_uniform_map_scores_nothing():
    mask = box_mask([(8, 4, 10, 6)], 32)
    assert mask.sum() == 60
    perfect = mask.astype(float)
    assert pointing(perfect, mask) == 1.0 and topk_iou(perfect, mask) == 1.0
    assert cnr(perfect, mask) == np.inf  # no variance on either side, different means
    uniform = np.full((32, 32), 0.3)
    assert cnr(uniform, mask) == 0.0
    assert pointing(uniform, mask) == pytest.approx(60 / 1024)  # ties: the box's share


def test_cnr_and_iou_by_hand():
    mask = np.zeros((2, 4), dtype=bool)
    mask[:, :2] = True
    saliency = np.array([[1.0, 3.0, 0.0, 2.0], [1.0, 3.0, 0.0, 0.0]])
    # inside 1, 3, 1, 3: mean 2, var 1; outside 0, 2, 0, 0: mean 0.5, var 0.75
    assert cnr(saliency, mask) == pytest.approx(1.5 / np.sqrt(1.75))
    # top-4 pixels: 3, 3, 2, then the first 1 in row-major order -> 3 of 4 inside the box
    assert topk_iou(saliency, mask) == pytest.approx(3 / 5)
    assert pointing(saliency, mask) == 1.0
    with pytest.raises(ValueError, match="same 2-D shape"):
        cnr(saliency, mask[:, :3])


def test_box_mask_uses_pixel_centres():
    mask = box_mask([(1.4, 0, 1.2, 1)], 4)  # x 1.4..2.6 holds the centres 1.5 and 2.5
    assert mask.tolist()[0] == [False, True, True, False]
    assert not mask[1:].any()


def test_box_scaling_follows_the_images_resize_and_centre_crop(tmp_path):
    """A white box drawn on a wide image lands where scale_box puts it after load_image."""
    w, h, size = 300, 200, 50
    im = np.zeros((h, w), dtype=np.uint8)
    box = (150, 40, 60, 100)  # x, y, w, h
    im[40:140, 150:210] = 255
    Image.fromarray(im).save(tmp_path / "im.png")
    pixels = load_image(tmp_path / "im.png", size)
    x, y, bw, bh = scale_box(box, w, h, size)
    # shorter side 200 -> 50 (scale 0.25), width 75, crop 12 px off the left
    assert (x, y, bw, bh) == pytest.approx((150 * 0.25 - 12, 10.0, 15.0, 25.0))
    bright = pixels > 127
    inside = box_mask([(x, y, bw, bh)], size)
    assert bright[inside].mean() > 0.9 and bright[~inside].mean() < 0.02


def test_boxes_outside_the_crop_are_clipped():
    # x 0..20 -> 0..5 after the resize, all of it in the 12 px the crop cuts off
    assert scale_box((0, 0, 20, 20), 300, 200, 50) == (0.0, 0.0, 0.0, 5.0)
    # x 40..100 -> 10..25, minus 12: the part left of the crop is cut
    assert scale_box((40, 0, 60, 20), 300, 200, 50) == pytest.approx((0.0, 0.0, 13.0, 5.0))


def write_csv(path, **changes):
    row = {"dicom_id": "d1", "category_name": "Cardiomegaly", "label_text": "enlarged heart",
           "path": "files/p10/p1/s1/d1.jpg", "x": 10, "y": 20, "w": 30, "h": 40,
           "image_width": 100, "image_height": 100, "split": "test"}  # fmt: skip
    row.update(changes)
    pd.DataFrame([row]).to_csv(path, index=False)


def test_read_boxes_checks_the_file(tmp_path):
    path = tmp_path / "ms_cxr.csv"
    write_csv(path)
    df = read_boxes(path)
    assert list(df.columns) == list(COLUMNS) and df.x.iloc[0] == 10.0
    write_csv(path, w=95)
    with pytest.raises(DataError, match=r"outside their image.*dicom_id d1"):
        read_boxes(path)
    write_csv(path, y="ten")
    with pytest.raises(DataError, match=r"'y' is not a number on lines \[2\]"):
        read_boxes(path)
    pd.DataFrame([{"dicom_id": "d1"}]).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing columns"):
        read_boxes(path)
    with pytest.raises(DataError, match="no such file"):
        read_boxes(tmp_path / "none.csv")


def test_floors_and_upsampling():
    grid = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = upsample(grid, 4)
    assert up.shape == (4, 4)
    assert up[0, 0] == 0.0 and up[3, 3] == 3.0  # edges held at the corner patches
    assert up[0, 1] == pytest.approx(0.25) and up[1, 0] == pytest.approx(0.5)
    prior = centre_prior(32)
    mask = box_mask([(12, 12, 8, 8)], 32)
    assert pointing(prior, mask) == 1.0 and cnr(prior, mask) > 1
    rng = np.random.default_rng(0)
    scores = [pointing(random_map((6, 6), 32, rng), mask) for _ in range(300)]
    assert np.mean(scores) == pytest.approx(mask.mean(), abs=0.05)
