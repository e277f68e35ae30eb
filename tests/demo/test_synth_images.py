"""Tests of the synthetic chest radiograph renderer (lib/demo/synth_images.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from lib.data.images import load_image
from lib.data.mimic import LABELS
from lib.demo.corpus import JPEG_QUALITY
from lib.demo.synth_images import FINDINGS, _Frontal, _Scene, render_cxr

ALL_VIEWS = ("PA", "AP", "LATERAL", "LL", "", "AP AXIAL", "PA LLD", "AP LLD", "SWIMMERS",
             "XTABLE LATERAL", "LAO", "RAO")  # fmt: skip
FRONTAL_VIEWS = ("PA", "AP", "AP", "PA LLD", "AP AXIAL")
SEEDS = range(20)
MODEL_SIZE = 96  # data.image_size of the demo


def render(severity: dict[str, float], view: str, seed: int, h: int = 128, w: int = 128):
    """One image as float64, from a fresh generator seeded with ``seed``."""
    img = render_cxr(severity, view, h, w, np.random.default_rng(seed))
    return img.astype(np.float64)


def mean_effect(finding: str, view: str = "PA", severity: float = 1.0) -> np.ndarray:
    """Average over SEEDS of (image with the finding - the same seed without it)."""
    diff = [render({finding: severity}, view, s) - render({}, view, s) for s in SEEDS]
    return np.mean(diff, axis=0)


def region(img: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    """Mean of a rectangle given as fractions of the image height and width."""
    h, w = img.shape
    return float(
        img[round(rows[0] * h) : round(rows[1] * h), round(cols[0] * w) : round(cols[1] * w)].mean()
    )


# -- basic contract -------------------------------------------------------------------------


@pytest.mark.parametrize("view", ALL_VIEWS)
@pytest.mark.parametrize("size", [(256, 307), (307, 256), (64, 64), (40, 200)])
def test_shape_dtype_and_range(view, size):
    h, w = size
    img = render_cxr({}, view, h, w, np.random.default_rng(1))
    assert img.shape == (h, w)
    assert img.dtype == np.uint8
    # A radiograph: dark air somewhere, bright tissue or bone somewhere, real contrast.
    assert img.min() < 50
    assert img.max() > 190
    assert img.std() > 25


def test_all_findings_render_on_every_view():
    severity = {name: 0.8 for name in FINDINGS} | {"No Finding": 0.0}
    for view in ALL_VIEWS:
        img = render_cxr(severity, view, 96, 120, np.random.default_rng(3))
        assert img.shape == (96, 120) and img.dtype == np.uint8


def test_same_seed_same_image_and_different_seed_different_image():
    sev = {"Edema": 0.5, "Support Devices": 1.0}
    a = render_cxr(sev, "AP", 100, 120, np.random.default_rng(7))
    b = render_cxr(sev, "AP", 100, 120, np.random.default_rng(7))
    c = render_cxr(sev, "AP", 100, 120, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_generator_state_advances():
    rng = np.random.default_rng(0)
    a = render_cxr({}, "PA", 64, 64, rng)
    b = render_cxr({}, "PA", 64, 64, rng)
    assert not np.array_equal(a, b)


def test_a_finding_leaves_the_rest_of_the_patient_unchanged():
    # The finding has its own random stream: a small nodule changes only a small area.
    a = render_cxr({}, "PA", 128, 128, np.random.default_rng(5))
    b = render_cxr({"Lung Lesion": 0.1}, "PA", 128, 128, np.random.default_rng(5))
    changed = a != b
    assert 0 < changed.mean() < 0.1


def test_no_finding_is_ignored():
    a = render_cxr({}, "PA", 64, 80, np.random.default_rng(2))
    b = render_cxr({"No Finding": 1.0}, "PA", 64, 80, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "severity",
    [{"Pneumonitis": 1.0}, {"cardiomegaly": 1.0}, {"Edema": 1.5}, {"Edema": -0.1},
     {"Edema": math.nan}],
)  # fmt: skip
def test_invalid_severity_raises(severity):
    with pytest.raises(ValueError, match=next(iter(severity))):
        render_cxr(severity, "PA", 64, 64, np.random.default_rng(0))


def test_tiny_size_raises():
    with pytest.raises(ValueError):
        render_cxr({}, "PA", 8, 64, np.random.default_rng(0))


# -- views ----------------------------------------------------------------------------------


def test_frontal_and_lateral_layouts_differ():
    frontal = np.mean([render({}, "PA", s, 96, 96) for s in range(6)], axis=0)
    lateral = np.mean([render({}, "LATERAL", s, 96, 96) for s in range(6)], axis=0)
    # Frontal: two lung fields either side of the midline, so nearly mirror-symmetric.
    # Lateral: heart in front, spine behind, so clearly not.
    asym_frontal = np.abs(frontal - frontal[:, ::-1]).mean()
    asym_lateral = np.abs(lateral - lateral[:, ::-1]).mean()
    assert asym_lateral > 2.5 * asym_frontal
    assert np.abs(frontal - lateral).mean() > 15
    # Frontal: the midline (mediastinum, spine) is brighter than the lung fields beside it.
    mid = region(frontal, (0.3, 0.6), (0.45, 0.55))
    lungs = region(frontal, (0.3, 0.6), (0.15, 0.3)) + region(frontal, (0.3, 0.6), (0.7, 0.85))
    assert mid > lungs / 2 + 40
    # Lateral: the back (spine, posterior chest wall) is brighter than the lung in front of it.
    back = region(lateral, (0.3, 0.6), (0.88, 1.0))
    assert back > region(lateral, (0.3, 0.6), (0.6, 0.78)) + 40


def test_blank_view_is_frontal_or_lateral_at_random():
    kinds = set()
    for seed in SEEDS:
        blank = render({}, "", seed, 64, 64)
        if np.array_equal(blank, render({}, "PA", seed, 64, 64)):
            kinds.add("frontal")
        elif np.array_equal(blank, render({}, "LATERAL", seed, 64, 64)):
            kinds.add("lateral")
        else:
            pytest.fail("a blank view should draw the same patient as PA or LATERAL")
    assert kinds == {"frontal", "lateral"}


def test_ap_heart_looks_larger_than_pa():
    # Same patients: AP magnifies the heart, so the band beside its left border is brighter.
    ap = np.mean([render({}, "AP", s) for s in SEEDS], axis=0)
    pa = np.mean([render({}, "PA", s) for s in SEEDS], axis=0)
    band = ((0.55, 0.72), (0.66, 0.76))
    assert region(ap, *band) > region(pa, *band) + 5


# -- findings -------------------------------------------------------------------------------


def _ctr(strength: dict[str, float], seed: int) -> float:
    """Cardiothoracic ratio of the drawn heart outline."""
    rng = np.random.default_rng(seed)
    scene = _Scene(128, 128, rng, lateral=False, ap=False, tilt=0.0)
    geo = _Frontal(rng, scene, ap=False, oblique=False, lordotic=False)
    geo.adapt(strength, {"Cardiomegaly": np.random.default_rng(0)}, {})
    geo.build()
    return float(np.ptp(geo.heart[:, 0]) / (2 * geo.wide))


def test_cardiomegaly_widens_the_heart_past_the_textbook_ratio():
    normal = [_ctr({}, s) for s in SEEDS]
    big = [_ctr({"Cardiomegaly": 0.4}, s) for s in SEEDS]  # the floor of the strength scale
    assert 0.42 < np.mean(normal) < 0.48
    assert max(normal) < 0.52
    assert min(big) > 0.55


def test_cardiomegaly_brightens_beside_the_normal_heart_border():
    eff = mean_effect("Cardiomegaly")
    beside_left_border = region(eff, (0.55, 0.75), (0.68, 0.85))
    assert beside_left_border > 10
    assert abs(region(eff, (0.0, 0.3), (0.0, 1.0))) < 1  # upper chest untouched
    weak = region(mean_effect("Cardiomegaly", severity=0.1), (0.55, 0.75), (0.68, 0.85))
    assert 0 < weak < beside_left_border  # strength grows with severity


def test_enlarged_cardiomediastinum_widens_the_upper_mediastinum():
    eff = mean_effect("Enlarged Cardiomediastinum")
    assert region(eff, (0.2, 0.45), (0.35, 0.65)) > 10
    assert abs(region(eff, (0.65, 1.0), (0.0, 1.0))) < 1


def test_effusion_brightens_the_lung_bases():
    eff = mean_effect("Pleural Effusion")
    bases = (region(eff, (0.55, 0.75), (0.08, 0.3)) + region(eff, (0.55, 0.75), (0.7, 0.92))) / 2
    apices = (region(eff, (0.15, 0.35), (0.15, 0.35)) + region(eff, (0.15, 0.35), (0.65, 0.85))) / 2
    assert bases > 15
    assert abs(apices) < 2


def test_effusion_on_lateral_fills_the_posterior_sulcus():
    eff = mean_effect("Pleural Effusion", view="LATERAL")
    # Anterior is to the image left: fluid collects low and at the back (image right).
    assert region(eff, (0.55, 0.75), (0.6, 0.85)) > 10
    assert abs(region(eff, (0.1, 0.3), (0.0, 1.0))) < 1


def test_pneumothorax_darkens_an_apex():
    eff = mean_effect("Pneumothorax")
    apices = (region(eff, (0.12, 0.35), (0.08, 0.32)) + region(eff, (0.12, 0.35), (0.68, 0.92))) / 2
    assert apices < -3
    assert abs(region(eff, (0.6, 1.0), (0.0, 1.0))) < 1  # bases untouched


def test_support_devices_add_bright_lines():
    for view in ("PA", "LATERAL"):
        diffs = [render({"Support Devices": 0.5}, view, s) - render({}, view, s) for s in SEEDS]
        assert np.mean(diffs) > 2
        for diff in diffs:
            # Thin, much brighter structures (metal and tubing), not a haze.
            assert 0.003 < (diff > 60).mean() < 0.15
            assert (diff < -10).mean() < 0.001


def test_consolidation_opacifies_lung():
    eff = mean_effect("Consolidation")
    lungs = (region(eff, (0.25, 0.75), (0.08, 0.35)) + region(eff, (0.25, 0.75), (0.65, 0.92))) / 2
    assert lungs > 8
    assert abs(region(eff, (0.0, 0.1), (0.0, 1.0))) < 1


def test_edema_is_perihilar():
    eff = mean_effect("Edema")
    hila = (region(eff, (0.35, 0.6), (0.2, 0.42)) + region(eff, (0.35, 0.6), (0.58, 0.8))) / 2
    apices = (region(eff, (0.12, 0.25), (0.15, 0.35)) + region(eff, (0.12, 0.25), (0.65, 0.85))) / 2
    assert hila > 15
    assert hila > 3 * max(apices, 0.0)


@pytest.mark.parametrize(
    "finding", ["Atelectasis", "Lung Lesion", "Lung Opacity", "Pneumonia", "Pleural Other"]
)
@pytest.mark.parametrize("view", ["PA", "LATERAL"])
def test_other_lung_findings_brighten_the_chest(finding, view):
    eff = mean_effect(finding, view=view)
    assert region(eff, (0.15, 0.8), (0.05, 0.95)) > 1


def test_fracture_changes_only_bone_detail():
    eff = np.abs(mean_effect("Fracture"))
    assert 0 < eff.mean() < 2


# -- visible at the model's input size --------------------------------------------------------


def _at_model_size(img: np.ndarray, path) -> np.ndarray:
    """The image as the pack holds it: JPEG as in the demo corpus, then ``load_image``."""
    Image.fromarray(img).save(path, format="JPEG", quality=JPEG_QUALITY)
    return load_image(path, MODEL_SIZE).astype(np.float64)


def _box3(img: np.ndarray) -> np.ndarray:
    """Mean over each pixel's 3x3 neighbourhood: a change of a few pixels, not one."""
    pad = np.pad(img, 1, mode="edge")
    h, w = img.shape
    return sum(pad[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9


# (finding, sign of the change, rows and columns, as fractions of the image, where the
# strongest change must lie, smallest change in grey levels): a nodule or mass in the lung
# fields, a pneumothorax's lucent rim at an apex, a callus on the lateral chest wall or on
# a clavicle.
VISIBLE = [
    ("Lung Lesion", 1, [((0.1, 0.85), (0.05, 0.95))], 60.0),
    ("Pneumothorax", -1, [((0.0, 0.55), (0.0, 0.45)), ((0.0, 0.55), (0.55, 1.0))], 40.0),
    ("Fracture", 1, [((0.0, 1.0), (0.0, 0.3)), ((0.0, 1.0), (0.7, 1.0)),
                     ((0.0, 0.35), (0.0, 1.0))], 25.0),
]  # fmt: skip


@pytest.mark.parametrize(("finding", "sign", "where", "least"), VISIBLE)
def test_small_findings_survive_reduction_to_the_model_size(tmp_path, finding, sign, where, least):
    # Before the renderer drew them for 96 px, rib fractures (a faint step in a faint rib),
    # small nodules and thin pneumothoraces blurred away: a probe on the packed pixels was
    # at chance on them. Now every seed, at the weakest severity a positive label has, must
    # show a change of at least ``least`` grey levels over 3x3 pixels of the 96-px image,
    # in the region a radiologist would look at.
    for seed in range(12):
        view = FRONTAL_VIEWS[seed % len(FRONTAL_VIEWS)]
        size = (256, 307) if seed % 2 else (307, 256)
        base = render_cxr({}, view, *size, np.random.default_rng(seed))
        with_it = render_cxr({finding: 0.6}, view, *size, np.random.default_rng(seed))
        diff = sign * _box3(
            _at_model_size(with_it, tmp_path / "a.jpg") - _at_model_size(base, tmp_path / "b.jpg")
        )
        row, col = np.unravel_index(np.argmax(diff), diff.shape)
        assert diff[row, col] >= least, (seed, diff[row, col])
        y, x = row / MODEL_SIZE, col / MODEL_SIZE
        assert any(r0 <= y <= r1 and c0 <= x <= c1 for (r0, r1), (c0, c1) in where), (seed, y, x)


# -- learnability ---------------------------------------------------------------------------


def _dataset(target: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n frontal images, every other one with ``target``, each with random other findings."""
    rng = np.random.default_rng(seed)
    others = [f for f in FINDINGS if f != target]
    x = np.empty((n, 32 * 32))
    y = np.arange(n) % 2
    for i in range(n):
        sev = {f: float(rng.uniform(0.05, 1.0)) for f in others if rng.random() < 0.2}
        if y[i]:
            sev[target] = float(rng.uniform(0.05, 1.0))
        view = FRONTAL_VIEWS[int(rng.integers(len(FRONTAL_VIEWS)))]
        img = render_cxr(sev, view, 64, 80, rng)
        small = Image.fromarray(img).resize((32, 32), Image.Resampling.BOX)
        x[i] = np.asarray(small, dtype=np.float64).ravel() / 255
    return x, y.astype(np.float64)


def _logistic_scores(x_tr, y_tr, x_te, lam: float = 10.0, iters: int = 500) -> np.ndarray:
    """L2-regularised logistic regression fitted by Nesterov-accelerated gradient descent.

    Standardised pixels plus an intercept; returns the scores of the test rows. Only
    matrix-vector products: small dense solves can crawl under a busy multithreaded BLAS.
    """
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-3
    a = np.hstack([(x_tr - mu) / sd, np.ones((len(x_tr), 1))])
    b = np.hstack([(x_te - mu) / sd, np.ones((len(x_te), 1))])
    reg = np.full(a.shape[1], lam)
    reg[-1] = 0.0  # the intercept is not penalised
    v = np.ones(a.shape[1])
    for _ in range(30):  # power iteration: the largest eigenvalue of a.T @ a sets the step
        v = a.T @ (a @ v)
        v /= np.linalg.norm(v)
    step = 1.0 / (np.linalg.norm(a.T @ (a @ v)) / 4 + lam)
    w = w_prev = np.zeros(a.shape[1])
    for t in range(1, iters + 1):
        look = w + (t - 1) / (t + 2) * (w - w_prev)
        p = 1.0 / (1.0 + np.exp(-(a @ look)))
        w_prev, w = w, look - step * (a.T @ (p - y_tr) + reg * look)
    return b @ w


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    pos, neg = scores[y == 1], scores[y == 0]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


@pytest.mark.parametrize(
    ("target", "seed"), [("Cardiomegaly", 11), ("Pleural Effusion", 12), ("Support Devices", 13)]
)
def test_finding_is_linearly_separable_at_32px(target, seed):
    x, y = _dataset(target, 300, seed)
    scores = _logistic_scores(x[:150], y[:150], x[150:])
    assert _auc(scores, y[150:]) > 0.85


def test_labels_cover_chexpert():
    assert set(FINDINGS) == set(LABELS) - {"No Finding"}


def _drawn_columns(finding: str, place: str | None, seed: int) -> np.ndarray:
    """Column profile of what drawing ``finding`` (at ``place``) changes in a PA film."""
    places = {} if place is None else {finding: place}
    base = render_cxr({}, "PA", 160, 160, np.random.default_rng(seed), places)
    drawn = render_cxr({finding: 0.8}, "PA", 160, 160, np.random.default_rng(seed), places)
    return np.abs(drawn.astype(int) - base.astype(int)).sum(axis=0)


@pytest.mark.parametrize(
    "finding",
    ["Pleural Effusion", "Pneumothorax", "Atelectasis", "Consolidation", "Lung Lesion",
     "Lung Opacity", "Pneumonia", "Pleural Other", "Fracture"],
)  # fmt: skip
def test_a_place_puts_the_finding_on_the_patients_side(finding):
    # The patient's left is the image's right on a frontal film (radiological convention).
    for seed in range(4):
        left = _drawn_columns(finding, "left lower", seed)
        right = _drawn_columns(finding, "right lower", seed)
        half = len(left) // 2
        assert left[half:].sum() > 3 * left[:half].sum(), (finding, seed)
        assert right[:half].sum() > 3 * right[half:].sum(), (finding, seed)


def test_both_sides_draw_on_both_sides():
    cols = _drawn_columns("Pleural Effusion", "both lower", 0)
    half = len(cols) // 2
    assert cols[:half].sum() > 0.3 * cols[half:].sum()
    assert cols[half:].sum() > 0.3 * cols[:half].sum()


def test_the_level_of_a_place_moves_the_lesion_up_or_down():
    for seed in range(4):
        rows = {}
        for level in ("upper", "lower"):
            places = {"Lung Lesion": f"right {level}"}
            base = render_cxr({}, "PA", 160, 160, np.random.default_rng(seed), places)
            drawn = render_cxr(
                {"Lung Lesion": 0.8}, "PA", 160, 160, np.random.default_rng(seed), places
            )
            diff = np.abs(drawn.astype(int) - base.astype(int)).sum(axis=1)
            rows[level] = float((diff * np.arange(len(diff))).sum() / diff.sum())
        assert rows["upper"] < rows["lower"], seed


def test_a_place_changes_nothing_but_where_the_finding_is():
    # Same generator, a place for a finding that is absent: the same image.
    a = render_cxr({"Edema": 0.5}, "AP", 96, 96, np.random.default_rng(9))
    b = render_cxr(
        {"Edema": 0.5}, "AP", 96, 96, np.random.default_rng(9), {"Pneumothorax": "left upper"}
    )
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("place", ["left", "top lower", "left lower lobe", "both upper x"])
def test_a_bad_place_is_an_error_that_shows_the_form(place):
    with pytest.raises(ValueError, match="right lower"):
        render_cxr({}, "PA", 64, 64, np.random.default_rng(0), {"Pneumothorax": place})
