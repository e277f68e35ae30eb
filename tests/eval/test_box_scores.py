"""lib/eval/box_scores.py: MS-CXR boxes, their scaling, and CNR / pointing / top-k IoU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.data.images import load_image
from lib.errors import DataError
from lib.eval.box_scores import (
    CNR_CAP,
    COLUMNS,
    SCORES,
    box_mask,
    centre_prior,
    cnr,
    floor_maps,
    match_phrases,
    phrase_masks,
    pointing,
    random_map,
    read_boxes,
    scale_box,
    score,
    score_all,
    score_floors,
    score_patch_maps,
    summarise,
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


# --- phrases, masks, summaries -----------------------------------------------------------


def _split(dicoms, subjects, name):
    from lib.data.master import Split

    n = len(dicoms)
    return Split(
        images=[f"files/{d}.jpg" for d in dicoms],
        study=np.arange(n, dtype=np.int64),
        subject=np.asarray(subjects, dtype=np.int64),
        texts=["x"] * n,
        labels=np.zeros((n, 14), dtype=np.int8),
        dicom=list(dicoms),
    )


def _boxes(rows):
    return pd.DataFrame(
        [dict(zip(COLUMNS, r, strict=True)) for r in rows], columns=list(COLUMNS)
    ).astype({c: float for c in ("x", "y", "w", "h", "image_width", "image_height")})


def test_match_phrases_groups_boxes_and_uses_the_masters_split():
    boxes = _boxes(
        [
            # two boxes of one phrase; MS-CXR's own split column says "train": ignored
            ("d1", "Pleural Effusion", "bilateral effusions", "p", 0, 0, 10, 10, 100, 80, "train"),
            ("d1", "Pleural Effusion", "bilateral effusions", "p", 50, 0, 10, 10, 100, 80, "train"),
            ("d1", "Cardiomegaly", "cardiomegaly", "p", 30, 30, 40, 30, 100, 80, "train"),
            ("d2", "Pneumothorax", "left apical pneumothorax", "p", 1, 1, 5, 5, 64, 64, "val"),
            ("zz", "Edema", "edema", "p", 1, 1, 5, 5, 64, 64, "test"),  # not in the master
        ]
    )
    splits = {"test": _split(["d1"], [7], "test"), "train": _split(["d2"], [8], "train")}
    ph = match_phrases(boxes, splits)
    assert len(ph) == 3 and ph.unknown_dicom == ["zz"]
    i = ph.category.index("Pleural Effusion")
    assert ph.boxes[i] == [(0.0, 0.0, 10.0, 10.0), (50.0, 0.0, 10.0, 10.0)]
    assert ph.split[i] == "test" and ph.subject[i] == 7 and ph.image[i] == "files/d1.jpg"
    j = ph.category.index("Pneumothorax")
    assert ph.split[j] == "train"  # the master's official split, not the file's "val"
    assert tuple(ph.image_wh[i]) == (100.0, 80.0)


def test_no_known_image_gives_an_empty_table_not_an_error():
    boxes = _boxes([("zz", "Edema", "edema", "p", 1, 1, 5, 5, 64, 64, "test")])
    ph = match_phrases(boxes, {"test": _split(["d1"], [1], "test")})
    assert len(ph) == 0 and ph.unknown_dicom == ["zz"]


def test_phrase_masks_go_through_the_resize_and_centre_crop():
    boxes = _boxes(
        [
            # 200 x 100 image -> resized to 64 x 32 -> centre crop 32 x 32 drops 16 px each side
            ("d1", "Edema", "edema", "p", 40, 0, 40, 50, 200, 100, "test"),
            ("d2", "Edema", "edema", "p", 0, 0, 20, 20, 200, 100, "test"),  # cut away by the crop
        ]
    )
    ph = match_phrases(boxes, {"test": _split(["d1", "d2"], [1, 2], "test")})
    masks = phrase_masks(ph, 32)
    expected = box_mask([(40 * 32 / 100 - 16, 0, 40 * 32 / 100, 50 * 32 / 100)], 32)
    np.testing.assert_array_equal(masks[ph.dicom.index("d1")], expected)
    assert not masks[ph.dicom.index("d2")].any()


def test_summarise_means_intervals_subsets_and_categories():
    boxes = _boxes(
        [(f"d{i}", "Edema" if i % 2 else "Cardiomegaly", "t", "p", 0, 0, 4, 4, 8, 8, "test")
         for i in range(8)]
    )  # fmt: skip
    splits = {
        "test": _split([f"d{i}" for i in range(6)], [0, 0, 1, 2, 3, 4], "test"),
        "train": _split(["d6", "d7"], [5, 6], "train"),
    }
    ph = match_phrases(boxes, splits)
    values = np.arange(8, dtype=float) / 10
    scores = {"mask": {s: values.copy() for s in SCORES}}
    scorable = np.ones(8, dtype=bool)
    scorable[ph.dicom.index("d5")] = False
    out = summarise(scores, ph, scorable, n_rounds=200, seed=0, level=0.9)
    test_rows = [i for i in range(8) if ph.split[i] == "test" and scorable[i]]
    assert out["official_test"]["phrases"] == len(test_rows) == 5
    assert out["all"]["phrases"] == 7
    m = out["official_test"]["mask"]
    assert m["cnr"]["mean"] == pytest.approx(values[test_rows].mean(), abs=1e-4)
    assert m["cnr"]["low"] <= m["cnr"]["mean"] <= m["cnr"]["high"]
    edema = [i for i in test_rows if ph.category[i] == "Edema"]
    assert m["per_category"]["Edema"]["n"] == len(edema)
    assert m["per_category"]["Edema"]["pointing"]["mean"] == pytest.approx(
        values[edema].mean(), abs=1e-4
    )


def test_an_infinite_cnr_is_capped_in_the_mean():
    boxes = _boxes([(f"d{i}", "Edema", "t", "p", 0, 0, 4, 4, 8, 8, "test") for i in range(2)])
    ph = match_phrases(boxes, {"test": _split(["d0", "d1"], [0, 1], "test")})
    scores = {"mask": {"cnr": np.array([np.inf, 1.0]), "pointing": np.ones(2), "iou": np.ones(2)}}
    out = summarise(scores, ph, np.ones(2, dtype=bool), n_rounds=50, seed=0, level=0.9)
    assert out["all"]["mask"]["cnr"]["mean"] == pytest.approx((CNR_CAP + 1) / 2)


def test_floor_maps_are_seeded_and_the_centre_peaks_in_the_middle():
    a = floor_maps((3, 3), 24, 5, seed=1)
    b = floor_maps((3, 3), 24, 5, seed=1)
    np.testing.assert_array_equal(a["random"], b["random"])
    assert a["random"].shape == a["centre"].shape == (5, 24, 24)
    assert not np.allclose(a["random"][0], a["random"][1])
    c = a["centre"][0]
    assert c[12, 12] == pytest.approx(c.max()) and c[0, 0] < 0.1 * c[12, 12]


def test_score_all_equals_score_map_by_map():
    rng = np.random.default_rng(0)
    size = 24
    maps = [upsample(rng.random((3, 3)), size) for _ in range(7)]
    maps.append(np.full((size, size), 0.5))  # uniform: CNR 0, pointing = box share
    mask_one = box_mask([(2, 3, 5, 6)], size)
    maps.append(mask_one.astype(float))  # the box itself: CNR inf, pointing 1, IoU 1
    masks = [box_mask([(rng.uniform(0, 12), rng.uniform(0, 12), 8, 6)], size) for _ in range(7)]
    masks += [mask_one, mask_one]
    fast = score_all(np.stack(maps), np.stack(masks))
    for i, (m, b) in enumerate(zip(maps, masks, strict=True)):
        slow = score(m, b)
        for name in SCORES:
            assert fast[name][i] == pytest.approx(slow[name], rel=1e-9), (i, name)


def test_upsample_maps_a_batch_like_one_map_at_a_time():
    rng = np.random.default_rng(1)
    batch = rng.random((4, 2, 3))
    np.testing.assert_allclose(
        upsample(batch, 12), np.stack([upsample(b, 12) for b in batch]), rtol=0, atol=0
    )


def test_holdout_patients_images_come_from_the_file_when_not_in_the_master():
    boxes = _boxes(
        [
            (
                "d1",
                "Edema",
                "edema",
                "files/p10/p10000001/s50000001/d1.jpg",
                1,
                1,
                5,
                5,
                64,
                64,
                "t",
            ),
            (
                "h1",
                "Edema",
                "edema",
                "files/p12/p12000002/s50000002/h1.jpg",
                1,
                1,
                5,
                5,
                64,
                64,
                "t",
            ),
            (
                "x1",
                "Edema",
                "edema",
                "files/p13/p13000003/s50000003/x1.jpg",
                1,
                1,
                5,
                5,
                64,
                64,
                "t",
            ),
        ]
    )
    splits = {"test": _split(["d1"], [10000001], "test")}
    ph = match_phrases(boxes, splits, holdout={12000002, 10000001})
    assert ph.dicom == ["d1", "h1"] and ph.unknown_dicom == ["x1"]
    i = ph.dicom.index("h1")
    assert ph.split[i] == "holdout" and ph.subject[i] == 12000002
    assert ph.image[i] == "files/p12/p12000002/s50000002/h1.jpg"
    assert ph.split[ph.dicom.index("d1")] == "test"  # in the master: its official split


def test_no_scorable_official_test_phrase_gives_undefined_scores_not_missing_keys():
    boxes = _boxes([("d0", "Edema", "t", "p", 0, 0, 4, 4, 8, 8, "test")])
    ph = match_phrases(boxes, {"train": _split(["d0"], [0], "train")})
    scores = {"mask": {s: np.ones(1) for s in SCORES}}
    out = summarise(scores, ph, np.ones(1, dtype=bool), n_rounds=20, seed=0, level=0.9)
    assert out["official_test"]["phrases"] == 0
    assert out["official_test"]["mask"]["pointing"] == {"mean": None, "low": None, "high": None}
    assert out["all"]["mask"]["pointing"]["mean"] == 1.0


@pytest.mark.parametrize("col", ["dicom_id", "category_name", "label_text", "path"])
def test_an_empty_text_field_is_an_error_naming_column_and_line(tmp_path, col):
    df = _boxes([("d1", "Edema", "edema", "p/x.jpg", 1, 1, 5, 5, 64, 64, "test")] * 2)
    df.loc[1, col] = ""
    path = tmp_path / "boxes.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"column '{col}' is empty on 1 lines \(e.g. \[3\]\)"):
        read_boxes(path)


def test_chunked_patch_and_floor_scores_equal_the_full_size_ones():
    rng = np.random.default_rng(2)
    masks = np.stack(
        [box_mask([(rng.uniform(0, 10), rng.uniform(0, 10), 9, 7)], 20) for _ in range(5)]
    )
    patch = rng.random((5, 3, 3))
    full = score_all(upsample(patch, 20), masks)
    chunked = score_patch_maps(patch, masks)
    floors = score_floors((3, 3), masks, seed=4)
    ref = floor_maps((3, 3), 20, 5, seed=4)
    for name in SCORES:
        np.testing.assert_allclose(chunked[name], full[name])
        for kind in ("random", "centre"):
            np.testing.assert_allclose(floors[kind][name], score_all(ref[kind], masks)[name])


def test_val_and_test_images_are_scored_apart_and_val_leaves_test_as_it_was():
    """Subset "val" holds the phrases of official-val images only; adding them to the file
    changes neither "official_test"'s phrases nor its figures (the same resamples)."""
    split_of = ["test"] * 4 + ["val"] * 4 + ["train"] * 2
    rows = [(f"d{i}", "Edema", "t", "p", 0, 0, 4, 4, 8, 8, "x") for i in range(10)]
    splits = {
        s: _split([f"d{i}" for i in range(10) if split_of[i] == s],
                  [i for i in range(10) if split_of[i] == s], s)
        for s in ("test", "val", "train")
    }  # fmt: skip
    ph = match_phrases(_boxes(rows), splits)
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
    scores = {"mask": {s: values.copy() for s in SCORES}}
    out = summarise(scores, ph, np.ones(10, dtype=bool), n_rounds=100, seed=0, level=0.9)
    assert {s: out[s]["phrases"] for s in out} == {"official_test": 4, "val": 4, "all": 10}
    assert out["val"]["mask"]["cnr"]["mean"] == pytest.approx(0.75)
    assert out["official_test"]["mask"]["cnr"]["mean"] == pytest.approx(0.25)
    keep = [i for i in range(10) if split_of[i] != "val"]
    without = match_phrases(_boxes([rows[i] for i in keep]), splits)
    fewer = {"mask": {s: values[keep] for s in SCORES}}
    alone = summarise(fewer, without, np.ones(6, dtype=bool), n_rounds=100, seed=0, level=0.9)
    assert alone["official_test"] == out["official_test"]
    assert alone["val"]["phrases"] == 0
