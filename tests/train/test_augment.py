"""Augmentation of training batches: shapes and ranges, off is the identity, seeded draws,
geometry against independent pixel arithmetic, intensity ops, params, and the loop's use."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import lib.train.loop as loop
from lib.config.fixed import fixed_model, fixed_train
from lib.config.loader import parse_params
from lib.config.params import AugmentParams
from lib.config.variants import Variant
from lib.data.images import to_model_input
from lib.data.master import read_master
from lib.errors import ParamsError
from lib.model.backbone import load_backbone
from lib.train.augment import (
    apply_draws,
    augment_batch,
    augment_generator,
    draw,
    gaussian_blur,
    is_active,
)
from lib.train.distributed import DistInfo, shard_batch
from lib.train.loop import Data, Trainer
from tests.conftest import params_section, repo_raw

# Every op off: each test turns on the ones it checks.
OFF = params_section(
    AugmentParams,
    enabled=True,
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    rotation_deg=0.0,
    scale=(1.0, 1.0),
    brightness=0.0,
    contrast=0.0,
    hflip=0.0,
    blur_sigma=(0.0, 0.0),
)
ALL_ON = params_section(AugmentParams, enabled=True, hflip=0.5, blur_sigma=(0.5, 2.0))


def gen(seed: int = 0, epoch: int = 0, batch: int = 0) -> torch.Generator:
    return augment_generator(seed, epoch, batch)


def dot_image(height: int, width: int, x0: float, y0: float, sigma: float = 1.2) -> torch.Tensor:
    """(1, 1, H, W) Gaussian dot centred on pixel (x0, y0), x right and y down."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    img = torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma**2))
    return img.float().view(1, 1, height, width)


def centroid(img: torch.Tensor) -> tuple[float, float]:
    """(x, y) intensity centroid of a (1, 1, H, W) image, in pixels."""
    a = img[0, 0].double()
    ys, xs = torch.meshgrid(
        torch.arange(a.shape[0], dtype=torch.float64),
        torch.arange(a.shape[1], dtype=torch.float64),
        indexing="ij",
    )
    return float((a * xs).sum() / a.sum()), float((a * ys).sum() / a.sum())


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("shape", [(6, 1, 24, 32), (6, 3, 20, 20), (6, 24, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_and_range_are_kept(shape, dtype):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y = augment_batch(x, ALL_ON, gen())
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(x, y)


def test_values_are_clamped_to_the_given_range():
    x = torch.full((32, 1, 16, 16), 0.9)
    p = dataclasses.replace(OFF, brightness=0.5)
    d = draw(p, 32, gen())
    over = d.brightness * 0.9 > 1
    assert bool(over.any())
    y = apply_draws(x, p, d, (0.0, 1.0))
    assert bool((y[over] == 1.0).all()) and bool((y[~over] < 1.0).all())
    y = augment_batch(x - 0.5, p, gen(), value_range=(-0.5, 0.5))
    assert float(y.max()) <= 0.5 and float(y.min()) >= -0.5


@pytest.mark.parametrize(
    "params",
    [params_section(AugmentParams, enabled=False), dataclasses.replace(ALL_ON, enabled=False), OFF],
)
def test_off_is_the_identity_and_draws_nothing(params):
    x = torch.rand(5, 1, 16, 16)
    before = x.clone()
    g = gen()
    state = g.get_state()
    y = augment_batch(x, params, g)
    assert y is x and torch.equal(x, before)
    assert torch.equal(g.get_state(), state)
    assert not is_active(params)


def test_input_is_not_modified_and_integer_input_is_refused():
    x = torch.rand(3, 1, 16, 16)
    before = x.clone()
    augment_batch(x, ALL_ON, gen())
    assert torch.equal(x, before)
    with pytest.raises(TypeError, match="floating-point"):
        augment_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), ALL_ON, gen())
    with pytest.raises(ValueError, match="draws for each"):
        apply_draws(x, ALL_ON, draw(ALL_ON, 2, gen()))


def test_same_seed_same_output_and_any_other_seed_epoch_or_batch_differs():
    x = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    ref = augment_batch(x, ALL_ON, gen(0, 1, 2))
    assert torch.equal(ref, augment_batch(x, ALL_ON, gen(0, 1, 2)))
    for other in (gen(1, 1, 2), gen(0, 2, 2), gen(0, 1, 3)):
        assert not torch.allclose(ref, augment_batch(x, ALL_ON, other))


def test_turning_one_op_on_keeps_the_draws_of_the_others():
    a = draw(dataclasses.replace(OFF, rotation_deg=10), 8, gen())
    b = draw(dataclasses.replace(OFF, rotation_deg=10, brightness=0.2), 8, gen())
    assert torch.equal(a.angle_deg, b.angle_deg)


def test_a_shard_of_the_batch_gets_the_rows_of_the_whole_batch():
    """What DDP relies on: rank r's images get the global batch's draws for its rows."""
    x = torch.rand(8, 1, 16, 16)
    d = draw(ALL_ON, 8, gen())
    full = apply_draws(x, ALL_ON, d)
    half = apply_draws(x[4:], ALL_ON, d.rows(4, 8))
    assert torch.allclose(full[4:], half, atol=1e-6)


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
@pytest.mark.parametrize("sign", [1, -1])
def test_rotation_moves_a_dot_by_the_drawn_angle(height, width, sign):
    p = dataclasses.replace(OFF, rotation_deg=40)
    x0, y0 = width * 0.7, height * 0.3
    img = dot_image(height, width, x0, y0)
    # The first seed that turns by more than 10° this way, so a wrong sign or axis shows.
    seed = next(s for s in range(100) if sign * float(draw(p, 1, gen(s)).angle_deg[0]) > 10)
    d = draw(p, 1, gen(seed))
    t = math.radians(float(d.angle_deg[0]))
    # Counter-clockwise as displayed, about the image centre, y down.
    cx, cy = (width - 1) / 2, (height - 1) / 2
    dx, dy = x0 - cx, y0 - cy
    want = (cx + dx * math.cos(t) + dy * math.sin(t), cy - dx * math.sin(t) + dy * math.cos(t))
    got = centroid(apply_draws(img, p, d))
    assert got == pytest.approx(want, abs=0.5)


def test_rotation_by_ninety_degrees_is_a_counter_clockwise_quarter_turn():
    p = dataclasses.replace(OFF, rotation_deg=90)
    # The seed whose draw is nearest +90°: a quarter turn, checkable with torch.rot90.
    best = max(range(200), key=lambda s: float(draw(p, 1, gen(s)).angle_deg[0]))
    d = draw(p, 1, gen(best))
    assert float(d.angle_deg[0]) > 89.5
    img = dot_image(33, 33, 24, 10)
    want = centroid(torch.rot90(img, 1, dims=(2, 3)))  # counter-clockwise as displayed
    assert centroid(apply_draws(img, p, d)) == pytest.approx(want, abs=0.5)


def test_zoom_moves_a_dot_away_from_the_centre():
    p = dataclasses.replace(OFF, scale=(1.2, 1.5))
    img = dot_image(64, 64, 40, 22)
    d = draw(p, 1, gen())
    z = float(d.zoom[0])
    c = 31.5
    got = centroid(apply_draws(img, p, d))
    assert got == pytest.approx((c + (40 - c) * z, c + (22 - c) * z), abs=0.5)


def test_flip_mirrors_left_and_right():
    p = dataclasses.replace(OFF, hflip=1.0)
    img = dot_image(32, 48, 10, 12)
    assert torch.allclose(augment_batch(img, p, gen()), img.flip(-1), atol=1e-6)
    assert bool(draw(dataclasses.replace(OFF, hflip=0.5), 64, gen()).flip.any())


def test_crop_is_resized_to_the_whole_image():
    p = dataclasses.replace(OFF, crop_scale=(0.25, 0.25))  # a square half the side
    height = width = 64
    x0, y0 = 30.0, 34.0
    img = dot_image(height, width, x0, y0, sigma=0.8)
    d = draw(p, 1, gen(2))
    cx, cy, w, h = (float(v) for v in d.crop[0])
    assert (w, h) == pytest.approx((0.5, 0.5))
    # The dot's normalised position, re-expressed in the crop's frame.
    u, v = (2 * x0 + 1) / width - 1, (2 * y0 + 1) / height - 1
    want = (((u - cx) / w + 1) * width - 1) / 2, (((v - cy) / h + 1) * height - 1) / 2
    assert centroid(apply_draws(img, p, d)) == pytest.approx(want, abs=0.5)


def test_crop_aspect_and_area_stay_in_their_ranges():
    p = dataclasses.replace(OFF, crop_scale=(0.5, 0.9), crop_ratio=(0.8, 1.25))
    d = draw(p, 500, gen())
    _, _, w, h = d.crop.T
    assert bool(((w * h >= 0.5 - 1e-9) & (w * h <= 0.9 + 1e-9)).all())
    assert bool(((w / h >= 0.8 - 1e-9) & (w / h <= 1.25 + 1e-9)).all())
    assert bool(((d.crop[:, :2].abs() + d.crop[:, 2:]) <= 1 + 1e-9).all())  # inside


# ----------------------------------------------------------------------------- intensity


def test_brightness_scales_the_mean_by_its_drawn_factor():
    p = dataclasses.replace(OFF, brightness=0.4)
    x = 0.2 + 0.4 * torch.rand(16, 1, 16, 16)  # × [0.6, 1.4] stays inside [0, 1]
    d = draw(p, 16, gen())
    y = apply_draws(x, p, d)
    ratio = y.mean(dim=(1, 2, 3)) / x.mean(dim=(1, 2, 3))
    assert torch.allclose(ratio.double(), d.brightness, atol=1e-5)
    assert bool((d.brightness > 1).any() and (d.brightness < 1).any())


def test_contrast_scales_the_std_and_keeps_the_mean():
    p = dataclasses.replace(OFF, contrast=0.4)
    x = 0.3 + 0.4 * torch.rand(16, 1, 16, 16)
    d = draw(p, 16, gen())
    y = apply_draws(x, p, d)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)
    ratio = y.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert torch.allclose(ratio.double(), d.contrast, atol=1e-5)
    assert bool((d.contrast > 1).any() and (d.contrast < 1).any())


def test_blur_matches_scipy_and_sigma_zero_is_exact():
    x = torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = gaussian_blur(x, torch.tensor([0.0, 1.5]))
    assert torch.equal(y[0], x[0])
    want = ndimage.gaussian_filter(x[1, 0].numpy(), 1.5, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(y[1, 0].numpy(), want, atol=1e-10)


def test_blur_option_lowers_the_spread():
    p = dataclasses.replace(OFF, blur_sigma=(1.0, 2.0))
    x = torch.rand(4, 1, 32, 32)
    assert bool((augment_batch(x, p, gen()).std(dim=(1, 2, 3)) < x.std(dim=(1, 2, 3))).all())


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("crop_scale", [0.8], r"crop_scale = \[0.8\] must be \[min, max\]"),
        ("crop_scale", [0.9, 0.8], "min <= max"),
        ("crop_scale", [0.0, 1.0], r"\(0, 1\]"),
        ("crop_scale", [0.8, 1.2], r"\(0, 1\]"),
        ("crop_ratio", [0.0, 1.0], "crop_ratio"),
        ("rotation_deg", 200, r"rotation_deg = 200.* \[0, 180\]"),
        ("rotation_deg", -5, r"rotation_deg = -5"),
        ("scale", [0, 1.05], r"scale = \[0.0, 1.05\]"),
        ("brightness", 1.0, r"brightness = 1.0 must be in \[0, 1\)"),
        ("contrast", -0.1, r"contrast = -0.1"),
        ("hflip", 1.5, "hflip = 1.5 must be a fraction"),
        ("blur_sigma", [2.0, 1.0], "blur_sigma"),
        ("blur_sigma", [-1.0, 0.0], "blur_sigma"),
        ("enabled", "yes", "enabled = 'yes' is not a valid bool"),
        ("rotation", 5, r"unknown key.*train\.augment\.rotation'"),
    ],
)
def test_bad_augment_params_name_key_and_value(key, value, match):
    with pytest.raises(ParamsError, match=match) as err:
        parse_params(repo_raw(train={"augment": {key: value}}))
    assert "train.augment." in str(err.value)


def test_augment_params_accept_the_convirt_recipe():
    p = parse_params(
        repo_raw(
            **{
                "train": {
                    "augment": {
                        "enabled": True,
                        "crop_scale": [0.6, 1.0],
                        "rotation_deg": 20,
                        "hflip": 0.5,
                        "blur_sigma": [0.1, 3.0],
                    }
                }
            }
        )
    ).train.augment
    assert p.rotation_deg == 20.0 and p.blur_sigma == (0.1, 3.0) and is_active(p)


# ----------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def setup(small_master, tiny_backbone):
    master, root = small_master
    splits = read_master(master)
    backbone = load_backbone(f"local-dir:{tiny_backbone}")
    return (
        Data.build(splits["train"], root, backbone),
        Data.build(splits["val"], root, backbone),
        backbone,
    )


def trainer_with(setup, tiny_backbone, tmp_path, augment: AugmentParams) -> Trainer:
    train, val, backbone = setup
    tp = fixed_train(
        epochs=2,
        batch_size=8,
        gradient_accumulation_steps=1,
        warmup_epochs=1,
        eval_batch_size=64,
        device="cpu",
        augment=augment,
    )
    variant = Variant("A", fixed_model(backbone=f"local-dir:{tiny_backbone}"), tp)
    return Trainer(variant, train, val, backbone, tmp_path, "run", torch.device("cpu"))


@pytest.fixture
def spy(monkeypatch):
    calls: list[tuple[int, ...]] = []

    def recording(x, p, d, *args):
        calls.append(tuple(x.shape))
        return apply_draws(x, p, d, *args)

    monkeypatch.setattr(loop, "apply_draws", recording)
    return calls


def test_loop_augments_training_batches_only(setup, tiny_backbone, tmp_path, spy):
    trainer = trainer_with(setup, tiny_backbone, tmp_path, ALL_ON)
    opt, sched = trainer.make_optimizer(1)
    trainer.train_epoch(0, opt, sched)
    n_batches = len(setup[0].split) // 8
    assert n_batches > 0 and len(spy) == n_batches
    assert all(shape[:2] == (8, 1) for shape in spy)  # one grey channel per image
    trainer.validate()  # validation loss, embeddings, zero-shot
    trainer.embed(setup[0])
    assert len(spy) == n_batches


def test_loop_batch_inputs(setup, tiny_backbone, tmp_path, spy):
    train, _, backbone = setup
    idx = np.arange(8)
    plain = to_model_input(train.pixels[torch.as_tensor(idx)], backbone.mean, backbone.std)
    off = trainer_with(setup, tiny_backbone, tmp_path, params_section(AugmentParams, enabled=False))
    x, _ = off.batches(train, idx, train_at=(0, 0, 8))
    assert torch.equal(x, plain) and not spy  # off: the un-augmented input, bit for bit
    on = trainer_with(setup, tiny_backbone, tmp_path, ALL_ON)
    x, _ = on.batches(train, idx, train_at=(0, 0, 8))
    assert x.shape == plain.shape and x.dtype == plain.dtype and len(spy) == 1
    assert not torch.allclose(x, plain)
    assert torch.equal(x, on.batches(train, idx, train_at=(0, 0, 8))[0])  # same draws
    # The three channels stay equal (grey), inside the normalised range of [0, 1].
    lo = (0 - torch.tensor(backbone.mean)) / torch.tensor(backbone.std)
    hi = (1 - torch.tensor(backbone.mean)) / torch.tensor(backbone.std)
    assert bool((x >= lo.view(1, 3, 1, 1) - 1e-5).all() and (x <= hi.view(1, 3, 1, 1) + 1e-5).all())
    assert torch.equal(on.batches(train, idx)[0], plain)  # no train_at: never augmented


def test_a_rank_augments_its_shard_as_the_whole_batch_would(setup, tiny_backbone, tmp_path):
    """Under DDP (rank 1 of 2 here) a rank's images get the global batch's draws."""
    train, _, _ = setup
    trainer = trainer_with(setup, tiny_backbone, tmp_path, ALL_ON)
    idx = np.arange(8)
    whole, _ = trainer.batches(train, idx, train_at=(1, 3, 8))
    trainer.dist, trainer.ddp = DistInfo(rank=1, world_size=2), object()  # only checked for None
    shard = shard_batch(idx, 1, 2)
    mine, _ = trainer.batches(train, shard, train_at=(1, 3, 8))
    assert torch.allclose(mine, whole[4:], atol=1e-5)
