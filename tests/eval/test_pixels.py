"""The raw-pixel floor (lib/eval/pixels.py) on a tiny synthetic pack: one label is a
bright square the PCA probe must find, another is pure noise and must stay near chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lib.config.params import EvalParams
from lib.data.master import Split
from lib.data.mimic import LABELS
from lib.data.pack import Pack
from lib.errors import DataError
from lib.eval import pixels as px
from lib.eval.probe import fit_probe
from tests.conftest import params_section

SIZE = 16
SQUARE, NOISE = LABELS[1], LABELS[2]  # the label drawn as a square; a label of coin flips
N = {"train": 400, "val": 120, "test": 200}


def synthetic_pack(seed: int = 0) -> tuple[Pack, dict[str, Split]]:
    """Noise images (grey levels 0–120); label SQUARE adds a bright 6×6 square at a
    jittered place near the top-left. Every label other than SQUARE is a coin flip."""
    rng = np.random.default_rng(seed)
    total = sum(N.values())
    labels = rng.integers(0, 2, size=(total, len(LABELS))).astype(np.int8)
    images = rng.integers(0, 121, size=(total, SIZE, SIZE)).astype(np.uint8)
    for i in np.flatnonzero(labels[:, 1] == 1):
        r, c = rng.integers(1, 4, size=2)
        images[i, r : r + 6, c : c + 6] = 250
    dicom = [f"d{i}" for i in range(total)]
    pack = Pack(images, np.ones(total, bool), {d: i for i, d in enumerate(dicom)}, SIZE, Path("."))
    splits, start = {}, 0
    for name, n in N.items():
        idx = np.arange(start, start + n)
        splits[name] = Split(
            images=[f"{d}.jpg" for d in dicom[start : start + n]],
            study=idx.astype(np.int64),
            subject=(idx // 2).astype(np.int64),  # two images per patient
            texts=["report"] * n,
            labels=labels[idx],
            dicom=dicom[start : start + n],
        )
        start += n
    return pack, splits


def params(**kw) -> EvalParams:
    base = dict(
        probe_c=1.0,
        probe_fractions=(0.1, 1.0),
        bootstrap=50,
        pixel_pca_dim=24,
        pixel_pca_max_images=300,
    )
    p = params_section(EvalParams, **{**base, **kw})
    p.validate()
    return p


def key(label: str) -> str:
    return f"probe_100pct_auc_{label.replace(' ', '_')}"


def test_pca_probe_finds_the_square_and_not_the_noise():
    pack, splits = synthetic_pack()
    m = px.pixel_probe(pack, splits, params())
    assert m[key(SQUARE)] > 0.95
    assert abs(m[key(NOISE)] - 0.5) < 0.12
    assert m["pca_dim"] == 24 and m["pca_fit_images"] == 300  # the subsample, not all 400
    assert m["pixels_per_image"] == SIZE * SIZE and m["n_test_images"] == N["test"]
    for f in ("10pct", "100pct"):
        for stat in ("mean_auc", "mean_ap"):
            k = f"probe_{f}_{stat}"
            assert m[f"{k}_ci_low"] <= m[k] <= m[f"{k}_ci_high"], k
        assert m[f"probe_{f}_labels_scored"] == len(LABELS)
    assert 0 < m["pca_explained_variance"] <= 1


def test_same_params_same_numbers_and_the_probe_is_the_models_probe():
    pack, splits = synthetic_pack()
    p = params()
    m = px.pixel_probe(pack, splits, p)
    assert m == px.pixel_probe(pack, splits, p)
    # Independently: the same PCA (fitted on the same train subsample) fed to fit_probe.
    pcs, rows = px.fit_pixel_pca(
        pack.pixels(splits["train"], SIZE), p.pixel_pca_dim, p.pixel_pca_max_images, p.seed
    )
    assert np.array_equal(rows, np.sort(np.random.default_rng(p.seed).permutation(400)[:300]))

    def feats(split):
        flat = pack.images[pack.rows(splits[split])].reshape(N[split], -1) / 255.0
        return pcs.transform(flat.astype(np.float32))

    ref = fit_probe(
        feats("train"),
        splits["train"].labels,
        feats("val"),
        splits["val"].labels,
        feats("test"),
        splits["test"].labels,
        LABELS,
        fraction=1.0,
        seed=p.seed,
    )
    assert m["probe_100pct_mean_auc"] == pytest.approx(ref.mean_auc, abs=1e-5)


def test_pca_is_fitted_on_train_only():
    pack, splits = synthetic_pack()
    m = px.pixel_probe(pack, splits, params())
    # Changing val/test pixels changes no PCA statistic (train-only fit).
    test_rows = pack.rows(splits["test"])
    images = pack.images.copy()
    images[test_rows] = 255 - images[test_rows]
    other = Pack(images, pack.ok, pack.row_of, SIZE, pack.path)
    m2 = px.pixel_probe(other, splits, params())
    assert m2["pca_explained_variance"] == m["pca_explained_variance"]


def test_streaming_in_chunks_gives_the_same_features(monkeypatch):
    pack, splits = synthetic_pack()
    train = pack.pixels(splits["train"], SIZE)
    pca, _ = px.fit_pixel_pca(train, 24, 400, 0)
    whole = px.project(pca, train)
    monkeypatch.setattr(px, "CHUNK", 64)
    assert np.allclose(px.project(pca, train), whole, atol=1e-5)
    # Fitting in several chunks (each >= dim rows) still finds the square's direction.
    pca2, _ = px.fit_pixel_pca(train, 24, 400, 0)
    assert all(len(c) >= 64 for c in px.chunks(400, 64))
    assert pca2.explained_variance_ratio_.sum() == pytest.approx(
        pca.explained_variance_ratio_.sum(), rel=0.05
    )


def test_fewer_train_images_than_components_fail_loudly():
    pack, splits = synthetic_pack()
    with pytest.raises(DataError, match="pixel_pca_dim"):
        px.fit_pixel_pca(pack.pixels(splits["train"], SIZE), 500, 1000, 0)


def test_the_configured_probe_c_reaches_every_logistic_regression(monkeypatch):
    """eval.probe_c reaches the pixel floor's probe too (a dropped C=params.probe_c would fall
    back to fit_probe's default 1.0, which is also EvalParams' default: so not 1.0 here)."""
    import lib.eval.probe as probe

    seen: list[float] = []

    class Recording(probe.LogisticRegression):
        def fit(self, x, y):
            seen.append(self.C)
            return super().fit(x, y)

    monkeypatch.setattr(probe, "LogisticRegression", Recording)
    pack, splits = synthetic_pack()
    px.pixel_probe(pack, splits, params(probe_c=0.037, bootstrap=5))
    assert seen and set(seen) == {0.037}
