"""ConVIRT's fine-tuning evaluation (lib/eval/finetune.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.config.fixed import fixed_model, fixed_train
from lib.config.params import EvalParams
from lib.config.variants import Variant
from lib.errors import DataError
from lib.eval.embed_model import Trained
from lib.eval.embedding_files import load_finetune
from lib.eval.finetune import finetune_fraction, masked_bce, save_runs
from lib.eval.metrics import auc_per_label
from lib.eval.probe import subsample
from lib.model.backbone import load_backbone
from lib.model.patch_ib import PatchIBModel
from tests.conftest import params_section

LABELS = 14
PARAMS = params_section(
    EvalParams, probe_c=1.0, finetune_epochs=4, finetune_lr=1e-3, finetune_batch_size=16, seed=3
)


@pytest.fixture(scope="module")
def trained(tiny_backbone):
    mp = fixed_model(backbone=f"local-dir:{tiny_backbone}")
    torch.manual_seed(0)
    bb = load_backbone(mp.backbone)
    model = PatchIBModel(bb, mp).eval()
    return Trained(model, bb, Variant("A", mp, fixed_train(device="cpu")), torch.device("cpu"))


def toy(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """Noise images whose left half is bright exactly when label 0 is positive; label 3 is
    its opposite, every other label ignored (-1)."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    pixels = g.integers(0, 60, (n, size, size)).astype(np.uint8)
    pixels[y == 1, :, : size // 2] += 150
    labels = np.full((n, LABELS), -1, dtype=np.int64)
    labels[:, 0], labels[:, 3] = y, 1 - y
    return torch.from_numpy(pixels), labels


@pytest.fixture(scope="module")
def data():
    splits = {"train": toy(120, 0), "val": toy(40, 1), "test": toy(60, 2)}
    return {k: v[0] for k, v in splits.items()}, {k: v[1] for k, v in splits.items()}


def test_masked_bce_leaves_ignored_entries_out():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([[1, -1, 0], [-1, 1, 1]])
    keep = labels != -1
    ref = F.binary_cross_entropy_with_logits(logits[keep], (labels[keep] == 1).float())
    torch.testing.assert_close(masked_bce(logits, labels), ref)
    assert masked_bce(logits, torch.full_like(labels, -1)).item() == 0.0


def test_finetuning_learns_the_labels_and_leaves_the_model_alone(trained, data):
    pixels, labels = data
    before = {k: v.clone() for k, v in trained.model.clip.visual.trunk.state_dict().items()}
    run = finetune_fraction(trained, pixels, labels, 1.0, PARAMS)
    assert run.key == "100pct" and run.n_train == 120 and 1 <= run.best_epoch <= 4
    assert run.test_scores.shape == (60, LABELS) and run.test_scores.dtype == np.float32
    test = auc_per_label(run.test_scores, labels["test"], [str(i) for i in range(LABELS)])
    assert test["auc"]["0"] > 0.9 and test["auc"]["3"] > 0.9
    assert run.val_mean_auc is not None and run.val_mean_auc > 0.9
    after = trained.model.clip.visual.trunk.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # a copy was trained


def test_finetuning_is_deterministic_and_uses_the_probes_rows(trained, data):
    pixels, labels = data
    a = finetune_fraction(trained, pixels, labels, 0.25, PARAMS)
    b = finetune_fraction(trained, pixels, labels, 0.25, PARAMS)
    assert np.array_equal(a.test_scores, b.test_scores) and a.best_epoch == b.best_epoch
    assert a.n_train == len(subsample(120, 0.25, PARAMS.seed)) == 30


def test_a_draw_without_labels_says_how_to_fix(trained, data):
    pixels, labels = data
    blank = {**labels, "train": np.full_like(labels["train"], -1)}
    with pytest.raises(DataError, match="no defined label.*eval.finetune_fractions"):
        finetune_fraction(trained, pixels, blank, 0.5, PARAMS)


def test_saved_runs_load_back(trained, data, tmp_path):
    pixels, labels = data
    run = finetune_fraction(trained, pixels, labels, 0.25, PARAMS)
    assert load_finetune(tmp_path) == ({}, {})  # off: nothing written, nothing scored
    save_runs(tmp_path, {run.key: run})
    scores, meta = load_finetune(tmp_path)
    assert np.array_equal(scores["25pct"], run.test_scores)
    assert meta["25pct"]["n_train"] == 30 and meta["25pct"]["best_epoch"] == run.best_epoch
