"""Batched JPEG decoding with torchvision (nvJPEG on CUDA), preprocessed like ``load_image``.

``lib.data.images.load_image`` (the CPU path, and the direct path without a pack) decodes in JPEG
draft mode: libjpeg scales the inverse DCT by 1/a, with a ∈ {8, 4, 2, 1} the largest that
keeps both sides ≥ ``size``; then Pillow resizes the shorter side to ``size`` (bicubic,
antialiased) and crops the centre. nvJPEG has no DCT scaling, so this path does:

1. full decode of a batch (``torchvision.io.decode_jpeg``, batched; nvJPEG when the device
   is CUDA, libjpeg-turbo on the CPU);
2. a × a area average with the same a and the same output size (⌈w/a⌉ × ⌈h/a⌉). At a = 8,
   the scale of every MIMIC-CXR-JPG image at 224 px and below, this is what libjpeg's
   DC-only inverse DCT computes, up to rounding;
3. Pillow's resize: separable bicubic (a = −0.5), antialiased, width first, rounded to
   uint8 between the passes; then the same centre crop.

So the output is not bit-identical to ``load_image``: the decoders round differently, and
at a = 2 or 4 libjpeg's reduced inverse DCT is not an area average. With libjpeg-turbo on
both sides (torchvision on the CPU), so that steps 2–3 alone differ, the result is within
3 grey levels of ``load_image`` (2 at a = 4 and 8), with a mean difference under 0.3, and
identical at a = 1 (``tests/data/test_jpeg_batch.py``). ``benchmarks/pack_images.py --decoder
nvjpeg`` measures it against nvJPEG. A pack records the decoder that made it (``index.json``).

torchvision deprecated its image decoders in 0.29 in favour of TorchCodec; the project pins
torchvision 0.29.1, whose CUDA wheels include nvJPEG, while TorchCodec's CUDA builds are not
on PyPI. Moving to ``torchcodec.decoders.decode_jpeg`` changes only ``decode_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lib.data.images import resize_shape

DRAFT_SCALES = (8, 4, 2, 1)
JPEG_MAGIC = b"\xff\xd8"


def draft_factor(width: int, height: int, size: int) -> int:
    """Pillow's JPEG draft scale for a (size, size) request: the largest a in 8, 4, 2, 1
    with a ≤ min(width // size, height // size)."""
    fit = min(width // size, height // size)
    return next(a for a in DRAFT_SCALES if fit >= a)


def _round_u8(x: torch.Tensor) -> torch.Tensor:
    return x.add_(0.5).floor_().clamp_(0, 255)


def preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """(1, H, W) uint8 full-size decode → (size, size) uint8, as ``load_image`` would."""
    _, h, w = image.shape
    a = draft_factor(w, h, size)
    x = image.unsqueeze(0).float()  # (1, 1, H, W)
    if a > 1:
        # ceil_mode: the last partial block averages its visible pixels, as libjpeg's
        # scaled output of ⌈w/a⌉ columns does.
        x = _round_u8(F.avg_pool2d(x, a, ceil_mode=True))
    dh, dw = x.shape[-2:]
    nw, nh = resize_shape(dw, dh, size)
    if nw != dw:
        x = _round_u8(F.interpolate(x, (dh, nw), mode="bicubic", antialias=True))
    if nh != dh:
        x = _round_u8(F.interpolate(x, (nh, nw), mode="bicubic", antialias=True))
    left, top = (nw - size) // 2, (nh - size) // 2
    return x[0, 0, top : top + size, left : left + size].to(torch.uint8)


def decode_batch(
    blobs: Sequence[bytes], size: int, device: torch.device
) -> list[np.ndarray | str | None]:
    """Decode and preprocess files given as bytes. Per file: a (size, size) uint8 array; the
    error message of a JPEG that cannot be decoded; or None for a file that is not a JPEG
    (no FF D8 marker; the caller decodes it otherwise, e.g. with ``load_image``).

    The batch is decoded in one call; if that fails (a corrupt file), each file is decoded
    alone so that only the bad ones fail.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[np.ndarray | str | None] = [None] * len(blobs)
    jpeg = [i for i, b in enumerate(blobs) if b[:2] == JPEG_MAGIC]
    data = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpeg]
    if not data:
        return out
    try:
        decoded: list[torch.Tensor | str] = list(
            decode_jpeg(data, mode=ImageReadMode.GRAY, device=device)
        )
    except RuntimeError:
        decoded = []
        for d in data:
            try:
                decoded.append(decode_jpeg(d, mode=ImageReadMode.GRAY, device=device))
            except RuntimeError as err:
                decoded.append(f"RuntimeError: {err}")
    done: dict[int, torch.Tensor] = {}
    for i, img in zip(jpeg, decoded, strict=True):
        if isinstance(img, str):
            out[i] = img
        elif min(img.shape[-2:]) < 1:
            out[i] = f"empty image of shape {tuple(img.shape)}"
        else:
            done[i] = preprocess(img, size)
    if done:  # one device-to-host copy for the batch
        for i, pixels in zip(done, torch.stack(list(done.values())).cpu().numpy(), strict=True):
            out[i] = pixels
    return out
