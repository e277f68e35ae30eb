"""Image preprocessing shared by every path to the pixels: decode, resize, crop (the pack
and the direct path alike), and the normalised model input.

torch is imported only by the functions that return tensors, so reading an image for a
figure (stage compare) does not load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from lib.errors import DataError

if TYPE_CHECKING:
    import torch


def resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) with the shorter side = ``size``, the aspect ratio kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def load_image(path: str | Path | BinaryIO, size: int) -> np.ndarray:
    """(size, size) uint8: grayscale, shorter side resized to ``size`` (bicubic), centre crop.
    ``path`` may be an open binary file (the pack passes bytes it has just hashed).

    JPEG draft mode lets the decoder skip detail it would throw away (DCT scaling by
    1/2..1/8), which is several times faster on full-size MIMIC images.
    """
    with Image.open(path) as im:
        im.draft("L", (size, size))
        im = im.convert("L")
        nw, nh = resize_shape(*im.size, size)
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8)


def load_images(root: Path, relpaths: Sequence[str], size: int, threads: int = 8) -> torch.Tensor:
    """(N, size, size) uint8 tensor of every image (decoded in threads: PIL releases the GIL)."""
    import torch

    missing = [p for p in relpaths[:1000] if not (root / p).is_file()]
    if missing:
        raise DataError(
            f"{root / missing[0]}: image not found; is data.root the directory the master file "
            "was built from?"
        )
    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(lambda p: load_image(root / p, size), relpaths))
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, size, size)


def to_model_input(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (B, H, W) → float (B, 3, H, W) normalised; grayscale repeated over channels."""
    import torch

    x = pixels.float().div_(255).unsqueeze(1).expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
