import json

import numpy as np
import pytest
import torch
from PIL import Image

from lib.data.master import load_image, read_master, study_aware_batches, to_model_input
from lib.errors import DataError
from lib.data.mimic import LABELS


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


def test_load_image_resizes_and_crops(tmp_path):
    arr = np.tile(np.arange(300, dtype=np.uint8)[:, None] % 255, (1, 200))  # 300 x 200
    Image.fromarray(arr).save(tmp_path / "x.jpg", quality=95)
    out = load_image(tmp_path / "x.jpg", 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    x = to_model_input(torch.from_numpy(out)[None], [0.5] * 3, [0.25] * 3)
    assert x.shape == (1, 3, 64, 64)
    assert torch.allclose(x[0, 0], (torch.from_numpy(out).float() / 255 - 0.5) / 0.25)


def test_read_master(tmp_path):
    path = tmp_path / "m.jsonl"
    recs = [
        {
            "image": f"i{i}",
            "study_id": 50000000 + i,
            "subject_id": 10000000 + i,
            "text": f"t{i}",
            "dicom_id": f"d{i}",
            "split": s,
            "labels": {lb: int(lb == "Edema") for lb in LABELS},
        }
        for i, s in enumerate(["train", "train", "val", "test"])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    splits = read_master(path)
    assert len(splits["train"]) == 2 and splits["val"].texts == ["t2"]
    assert splits["test"].labels.shape == (1, 14)
    assert splits["test"].labels[0, LABELS.index("Edema")] == 1
    with pytest.raises(DataError, match="dvc repro qc"):
        read_master(tmp_path / "none.jsonl")
