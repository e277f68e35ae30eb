"""The raw-pixel floor (stage pixel_probe): PCA of the packed pixels, then the models' probe.

A learned image representation is only worth its training if its linear probe beats a
linear probe on the pixels themselves. This module computes that floor with the same
protocol as the models' probe (lib/eval/probe.py: the same fractions, C, seed, val-chosen
thresholds) and the same patient-bootstrap intervals, on features that need no model:

- **Pixels**: each packed uint8 image (lib/data/pack.py), flattened and scaled to [0, 1]
  floats: (N, S²), S = the pack's image size.
- **PCA**: ``sklearn.decomposition.IncrementalPCA`` to ``eval.pixel_pca_dim`` components,
  fitted on the **train split only**, on a seeded subsample of at most
  ``eval.pixel_pca_max_images`` train images (``eval.seed``), fed in chunks of
  ``CHUNK`` images (at least ``pixel_pca_dim`` each). IncrementalPCA has no randomness, so
  the same subsample gives the same components. Then every split is projected chunk by
  chunk.
- **Memory at MIMIC scale** (213k train images of 224² px): pixels are never all in
  memory; one chunk of floats is (CHUNK, 50 176) × 4 B ≈ 200 MB, the PCA state
  (dim, 50 176) ≈ 50 MB, and the projected features (N, dim) ≈ 220 MB for all of train.
  The fit costs one SVD of a (CHUNK + dim, S²) matrix per chunk of the subsample.

Independent of any backbone: on real data it runs unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.decomposition import IncrementalPCA

from lib.config.params import EvalParams
from lib.data.master import Split
from lib.data.mimic import LABELS
from lib.data.pack import Pack, PackedPixels
from lib.errors import DataError
from lib.eval.evaluate import fraction_key, probe_table
from lib.eval.label_retrieval import PRECISION_KS, label_retrieval_metrics
from lib.eval.probe import fit_probe, on_shared_labels
from lib.eval.stats import bootstrap_table

CHUNK = 1024  # images per chunk, when streaming pixels through the PCA


def flat_pixels(pixels: PackedPixels, idx: np.ndarray) -> np.ndarray:
    """(len(idx), S²) float32 in [0, 1]: the images ``idx`` of ``pixels``, flattened."""
    batch = pixels[idx].numpy()
    return batch.reshape(len(batch), -1).astype(np.float32) / np.float32(255.0)


def chunks(n: int, size: int) -> list[np.ndarray]:
    """0..n−1 in consecutive index chunks of about ``size`` rows (none smaller than
    min(size, n)): IncrementalPCA needs each chunk to hold at least dim rows."""
    parts = max(1, n // size)
    return np.array_split(np.arange(n), parts)


def fit_pixel_pca(
    pixels: PackedPixels, dim: int, max_images: int, seed: int
) -> tuple[IncrementalPCA, np.ndarray]:
    """IncrementalPCA(dim) on a seeded subsample of at most ``max_images`` of ``pixels``
    (sorted rows, for sequential reads); returns it and the subsample's rows."""
    n = len(pixels)
    if n < dim:
        raise DataError(
            f"eval.pixel_pca_dim = {dim}: the train split has only {n} usable images; set "
            f"eval.pixel_pca_dim to at most {n}"
        )
    rows = np.arange(n)
    if n > max_images:
        rows = np.sort(np.random.default_rng(seed).permutation(n)[:max_images])
    pca = IncrementalPCA(n_components=dim)
    for part in chunks(len(rows), max(CHUNK, dim)):
        pca.partial_fit(flat_pixels(pixels, rows[part]))
    return pca, rows


def project(pca: IncrementalPCA, pixels: PackedPixels) -> np.ndarray:
    """(N, dim) float32 PCA features of every image of ``pixels``, chunk by chunk."""
    out = [pca.transform(flat_pixels(pixels, part)) for part in chunks(len(pixels), CHUNK)]
    return np.concatenate(out).astype(np.float32)


def pixel_probe(pack: Pack, splits: Mapping[str, Split], params: EvalParams) -> dict[str, Any]:
    """metrics/eval/pixels.json: the probe at every ``eval.probe_fractions`` on PCA features
    of the raw pixels, with patient-bootstrap intervals, as eval@X reports its probe.

    ``splits`` must already exclude the images the pack could not decode (Pack.usable).
    Keys: probe_<fraction>_mean_auc / _mean_ap (+ _ci_low / _ci_high) over the labels every
    fraction scores (probe_mean_labels of them), probe_<fraction>_labels_scored, the
    full fraction's per-label AUC, ConVIRT's label-based image→image retrieval on the PCA
    features (label_i2i_P@K, lib/eval/label_retrieval.py), and the PCA's size and
    explained variance.
    """
    size = pack.image_size
    train, val, test = (pack.pixels(splits[s], size) for s in ("train", "val", "test"))
    pca, fitted = fit_pixel_pca(
        train, params.pixel_pca_dim, params.pixel_pca_max_images, params.seed
    )
    x_train, x_val, x_test = project(pca, train), project(pca, val), project(pca, test)
    labels = splits["test"].labels
    # Every fraction's mean over the same labels, as eval@X's (the same rows: the same set).
    probes = on_shared_labels(
        {
            fraction_key(f): fit_probe(
                x_train,
                splits["train"].labels,
                x_val,
                splits["val"].labels,
                x_test,
                labels,
                LABELS,
                fraction=f,
                seed=params.seed,
                C=params.probe_c,
            )
            for f in params.probe_fractions
        }
    )
    shared = next(iter(probes.values())).mean_labels
    intervals = bootstrap_table(
        probe_table({k: r.test_scores for k, r in probes.items()}, labels, shared),
        splits["test"].subject,
        params.bootstrap,
        params.seed,
        params.ci_level,
    )
    m: dict[str, Any] = {}
    for k, r in probes.items():
        for stat, value in (("mean_auc", r.mean_auc), ("mean_ap", r.mean_ap)):
            iv = intervals[f"probe_{k}_{stat}"]
            m[f"probe_{k}_{stat}"] = value
            m[f"probe_{k}_{stat}_ci_low"] = iv.low
            m[f"probe_{k}_{stat}_ci_high"] = iv.high
        m[f"probe_{k}_labels_scored"] = (
            len(LABELS) - len(r.undefined_labels) - len(r.untrainable_labels)
        )
    m["probe_mean_labels"] = len(shared)
    test = splits["test"]
    m.update(
        label_retrieval_metrics(
            x_test,
            labels,
            test.study,
            test.subject,
            None,
            PRECISION_KS,
            params.bootstrap,
            params.seed,
            params.ci_level,
        )
    )  # image→image on the PCA features (cosine); no text side
    full = probes[fraction_key(max(params.probe_fractions))]
    for lb in LABELS:
        m[f"probe_{fraction_key(full.fraction)}_auc_{lb.replace(' ', '_')}"] = full.auc.get(lb)
    m["pca_dim"] = int(pca.n_components_)
    m["pca_fit_images"] = len(fitted)
    m["pca_explained_variance"] = float(np.sum(pca.explained_variance_ratio_))
    m["pixels_per_image"] = int(size * size)
    m["n_test_images"] = len(splits["test"])
    m["n_test_patients"] = len(np.unique(splits["test"].subject))
    m["bootstrap_rounds"] = params.bootstrap
    return {k: round(float(v), 6) if isinstance(v, float) else v for k, v in m.items()}
