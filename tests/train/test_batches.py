"""Study-aware batches (lib/train/batches.py)."""

import numpy as np

from lib.train.batches import study_aware_batches


def test_batches_never_mix_images_of_one_study():
    rng = np.random.default_rng(0)
    study = rng.integers(0, 150, size=400)  # many multi-image studies
    batches = study_aware_batches(study, 16, seed=1, epoch=0)
    assert all(len(b) == 16 for b in batches)
    for b in batches:
        assert len(set(study[b].tolist())) == len(b)
    used = np.concatenate(batches)
    assert len(set(used.tolist())) == len(used)  # no image twice
    assert len(used) >= 400 - 16 - 10


def test_batches_depend_on_seed_and_epoch_only():
    study = np.arange(100) // 2
    a = study_aware_batches(study, 8, seed=3, epoch=2)
    b = study_aware_batches(study, 8, seed=3, epoch=2)
    c = study_aware_batches(study, 8, seed=3, epoch=3)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=False))
