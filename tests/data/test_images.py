"""Image decoding and the model input (lib/data/images.py)."""

import numpy as np
import torch
from PIL import Image

from lib.data.images import load_image, to_model_input


def test_load_image_resizes_and_crops(tmp_path):
    arr = np.tile(np.arange(300, dtype=np.uint8)[:, None] % 255, (1, 200))  # 300 x 200
    Image.fromarray(arr).save(tmp_path / "x.jpg", quality=95)
    out = load_image(tmp_path / "x.jpg", 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    x = to_model_input(torch.from_numpy(out.copy())[None], [0.5] * 3, [0.25] * 3)
    assert x.shape == (1, 3, 64, 64)
    assert torch.allclose(x[0, 0], (torch.from_numpy(out.copy()).float() / 255 - 0.5) / 0.25)
