"""Batched JPEG decoding (lib/data/jpeg_batch.py): the pack's GPU path, run here on the CPU.

torchvision's decoder is libjpeg-turbo on the CPU and nvJPEG on CUDA; the code around it
(draft-scale emulation, Pillow's resize, crop, error handling) is the same on both, and it
is what these tests hold to ``load_image``.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lib.data.images import load_image, resize_shape
from lib.data.jpeg_batch import decode_batch, draft_factor, preprocess
from lib.data.pack import pack_images
from lib.demo.synth_images import render_cxr

CPU = torch.device("cpu")


def jpeg(height: int, width: int, seed: int = 0, quality: int = 90) -> bytes:
    pixels = render_cxr({"Cardiomegaly": 0.7}, "PA", height, width, np.random.default_rng(seed))
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(2544, 3056, 224), (2544, 3056, 96), (2544, 3056, 512), (800, 1000, 96), (420, 520, 96),
     (250, 300, 96), (120, 150, 96), (3056, 2544, 224), (1791, 1800, 224), (96, 96, 96)],
)  # fmt: skip
def test_draft_factor_and_size_are_pillows(width, height, size):
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="JPEG")
    with Image.open(buf) as im:
        im.draft("L", (size, size))
        drafted = im.size
    a = draft_factor(width, height, size)
    assert drafted == (-(-width // a), -(-height // a))
    w, h = drafted
    assert min(resize_shape(w, h, size)) == size


# (height, width) at size 96: draft scales 8, 4, 2 and 1.
SHAPES = {8: (1000, 800), 4: (520, 420), 2: (300, 250), 1: (150, 120)}


@pytest.mark.parametrize("scale", sorted(SHAPES))
def test_matches_load_image_within_three_grey_levels(scale):
    """At draft scale 1 only the resize could differ, and it is Pillow's bit for bit; at
    2–8 the area average stands in for libjpeg's reduced inverse DCT: within 3 grey levels
    (measured: 2 at scales 4 and 8, 3 at 2), a mean difference under 0.3 and at most 30 %
    of the pixels differing at all."""
    height, width = SHAPES[scale]
    assert draft_factor(width, height, 96) == scale
    diffs = []
    for seed in range(3):
        data = jpeg(height, width, seed)
        (got,) = decode_batch([data], 96, CPU)
        ref = load_image(io.BytesIO(data), 96)
        assert got.dtype == np.uint8 and got.shape == (96, 96)
        diffs.append(np.abs(got.astype(int) - ref.astype(int)))
    d = np.stack(diffs)
    if scale == 1:
        assert d.max() == 0
    else:
        assert d.max() <= 3 and d.mean() < 0.3 and (d > 0).mean() < 0.3


def test_full_size_mimic_like_image_at_224():
    data = jpeg(3056, 2544, seed=4, quality=86)
    (got,) = decode_batch([data], 224, CPU)
    d = np.abs(got.astype(int) - load_image(io.BytesIO(data), 224).astype(int))
    assert d.max() <= 2 and d.mean() < 0.3


def test_preprocess_keeps_the_centre_of_non_square_images():
    # A bright column in the middle of a wide image stays in the middle after the crop.
    img = torch.zeros(1, 200, 400, dtype=torch.uint8)
    img[:, :, 195:205] = 255
    out = preprocess(img, 50)
    assert out.shape == (50, 50)
    assert int(out[:, 24:26].float().mean()) > 100 and int(out[:, :10].max()) == 0


def test_bad_files_fail_alone_and_non_jpegs_are_handed_back():
    good = jpeg(300, 250)
    png = io.BytesIO()
    Image.new("L", (300, 250)).save(png, format="PNG")
    out = decode_batch(
        [good, good[: len(good) // 2], b"\xff\xd8 garbage", png.getvalue(), b"", good], 96, CPU
    )
    assert isinstance(out[0], np.ndarray) and np.array_equal(out[0], out[5])
    assert isinstance(out[1], str) and "truncated" in out[1]
    assert isinstance(out[2], str)
    assert out[3] is None and out[4] is None  # not JPEGs: the caller decodes them


def test_pack_on_the_device_path(small_master, tmp_path):
    """pack_images(device=...) reads files ahead in threads and decodes in batches; a PNG
    goes through load_image (bit-identical), a corrupt JPEG is listed, and index.json says
    which decoder made the pack."""
    from lib.data.master import read_master

    master, root = small_master
    test = read_master(master)["test"]
    rels = test.images[:9]
    bad_root = tmp_path / "root"
    for rel in rels:
        (bad_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, bad_root / rel)
    with Image.open(root / rels[4]) as im:  # a PNG under a .jpg name (Pillow opens it)
        im.save(bad_root / rels[4], format="PNG")
    data = (bad_root / rels[6]).read_bytes()
    (bad_root / rels[6]).write_bytes(data[: len(data) // 2])
    res = pack_images(
        bad_root, rels, test.dicom[:9], 48, tmp_path / "s", "r", workers=2, chunk_size=4,
        device=CPU, batch_size=3,
    )  # fmt: skip
    assert [f["image"] for f in res.failed] == [rels[6]]
    images = np.load(tmp_path / "s/images.npy")
    ok = np.load(tmp_path / "s/ok.npy")
    assert ok.tolist() == [i != 6 for i in range(9)]
    for i, rel in enumerate(rels):
        if i == 6:
            assert not images[i].any()
            continue
        ref = load_image(bad_root / rel, 48)
        d = np.abs(images[i].astype(int) - ref.astype(int))
        assert d.max() == 0 if i == 4 else d.max() <= 3, rel
    index = json.loads((tmp_path / "s/index.json").read_text())
    assert index["decoder"] == "torchvision-cpu" and index["n_failed"] == 1


def test_pack_on_the_device_path_lists_a_vanished_image(small_master, tmp_path):
    """A file gone after QC is reported by the Pillow path's error, as without a device."""
    from lib.data.master import read_master

    master, root = small_master
    test = read_master(master)["test"]
    rels = test.images[:3]
    res = pack_images(
        root, [*rels, "files/p10/gone.jpg"], [*test.dicom[:3], "gone"], 48, tmp_path / "s",
        "r", workers=1, device=CPU,
    )  # fmt: skip
    assert [f["image"] for f in res.failed] == ["files/p10/gone.jpg"]
    assert res.failed[0]["error"].startswith("FileNotFoundError")
    assert np.load(tmp_path / "s/ok.npy").tolist() == [True, True, True, False]
