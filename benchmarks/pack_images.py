"""Benchmark: JPEG draft-mode packing against plain full decode, and the loader from the pack.

Makes its own MIMIC-CXR-JPG-like inputs (8-bit grayscale X-rays of 2,544 × 3,056 px from
the demo's renderer, JPEG quality chosen for ~1.5 MB per file, like MIMIC-CXR-JPG's
570 GB / 377,110 images), then measures:

1. decode + preprocess per image on one thread: plain (full decode, bicubic resize of the
   full image, centre crop) against the pipeline's ``load_image`` (draft mode: the DCT
   decodes at 1/8 scale, then the same resize and crop);
2. ``pack_images`` on every core (images per second, and per core);
3. the loader: random study-sized batches gathered from a pack of ``--pack-images`` images
   at 224 px into (pinned, where CUDA exists) uint8 tensors, as training reads them.

    python benchmarks/pack_images.py                  # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.data import load_image
from lib.pack import PackedPixels, pack_images
from lib.synth_images import render_cxr

OUT = Path(__file__).resolve().parent / "out" / "pack"
HEIGHT, WIDTH = 3056, 2544


def make_inputs(n: int, quality: int) -> list[Path]:
    """n full-size synthetic X-rays (findings vary), cached under benchmarks/out/pack."""
    OUT.mkdir(parents=True, exist_ok=True)
    paths = []
    findings = ["Cardiomegaly", "Pleural Effusion", "Edema", "Support Devices", "Pneumothorax"]
    for i in range(n):
        path = OUT / f"cxr_{i:03d}_q{quality}.jpg"
        if not path.is_file():
            rng = np.random.default_rng(i)
            severity = {findings[i % len(findings)]: 0.8} if i % 3 else {}
            pixels = render_cxr(severity, "PA" if i % 2 else "AP", HEIGHT, WIDTH, rng)
            buf = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
            path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def plain_decode(path: Path, size: int) -> np.ndarray:
    """load_image without draft mode: full decode, then the same resize and crop (kept
    here, not in lib/, so the pipeline's code path has no switch it never uses)."""
    with Image.open(path) as im:
        im = im.convert("L")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def time_per_image(fn, paths: list[Path], size: int, repeats: int) -> float:
    fn(paths[0], size)  # warm the page cache and the decoder
    start = time.perf_counter()
    for _ in range(repeats):
        for p in paths:
            fn(p, size)
    return (time.perf_counter() - start) / (repeats * len(paths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="distinct full-size JPEGs")
    ap.add_argument("--quality", type=int, default=86, help="JPEG quality (86: ~1.5 MB)")
    ap.add_argument("--size", type=int, default=224, help="packed image side")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pack-copies", type=int, default=20, help="pack N = images × this")
    ap.add_argument("--pack-images", type=int, default=20_000, help="loader benchmark pack")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    cores = os.cpu_count() or 1

    paths = make_inputs(args.images, args.quality)
    mb = np.mean([p.stat().st_size for p in paths]) / 1e6
    print(f"inputs: {len(paths)} JPEGs {WIDTH}x{HEIGHT}, mean {mb:.2f} MB (quality {args.quality})")
    assert np.array_equal(load_image(paths[0], args.size).shape, (args.size, args.size))

    plain = time_per_image(plain_decode, paths, args.size, args.repeats)
    draft = time_per_image(load_image, paths, args.size, args.repeats)
    print(
        f"one thread: plain {plain * 1e3:.1f} ms/img, draft {draft * 1e3:.1f} ms/img, "
        f"speed-up {plain / draft:.2f}x"
    )

    # pack_images on every core, over copies of the inputs (paths relative to OUT).
    rel = [p.name for p in paths] * args.pack_copies
    dicom = [f"{i}" for i in range(len(rel))]
    state = OUT / "state"
    start = time.perf_counter()
    pack_images(OUT, rel, dicom, args.size, state, f"bench{time.time()}", cores, 256)
    seconds = time.perf_counter() - start
    pack_rate = len(rel) / seconds
    print(
        f"pack_images: {len(rel)} images on {cores} threads in {seconds:.1f} s = "
        f"{pack_rate:.0f} img/s ({pack_rate / cores:.0f} img/s per core)"
    )

    # The same images decoded plainly on the same number of threads: per-core comparison.
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(lambda r: plain_decode(OUT / r, args.size), rel))
    plain_rate = len(rel) / (time.perf_counter() - start)
    print(
        f"plain decode on {cores} threads: {plain_rate:.0f} img/s "
        f"({plain_rate / cores:.0f} img/s per core); pack_images is "
        f"{pack_rate / plain_rate:.2f}x faster per core"
    )

    # Loader: random batches from a pack of --pack-images images.
    big = OUT / "loader_images.npy"
    if not big.is_file() or np.load(big, mmap_mode="r").shape[0] != args.pack_images:
        arr = np.lib.format.open_memmap(
            big, mode="w+", dtype=np.uint8, shape=(args.pack_images, args.size, args.size)
        )
        rng = np.random.default_rng(0)
        for s in range(0, args.pack_images, 1000):
            arr[s : s + 1000] = rng.integers(
                0, 256, (min(1000, args.pack_images - s), args.size, args.size), dtype=np.uint8
            )
        arr.flush()
        del arr
    images = np.load(big, mmap_mode="r")
    np.asarray(images).sum()  # read once: the page cache holds the pack, as after epoch 1
    pixels = PackedPixels(images, np.arange(len(images)))
    pin = torch.cuda.is_available()
    order = np.random.default_rng(1).permutation(len(images))
    start = time.perf_counter()
    for s in range(0, len(order) - args.batch + 1, args.batch):
        batch = pixels[order[s : s + args.batch]]
        if pin:
            batch = batch.pin_memory()
    seconds = time.perf_counter() - start
    n = (len(order) // args.batch) * args.batch
    loader = n / seconds
    kind = "pinned" if pin else "pageable (no CUDA here)"
    print(
        f"loader: {n} images in batches of {args.batch} -> {kind} uint8 tensors: "
        f"{loader:.0f} img/s on one thread"
    )

    result = {
        "machine": f"{platform.machine()}, {cores} cores, {platform.processor() or 'cpu'}",
        "input_mb": round(mb, 2),
        "plain_ms": round(plain * 1e3, 1),
        "draft_ms": round(draft * 1e3, 1),
        "speedup_per_core": round(plain / draft, 2),
        "pack_img_per_s": round(pack_rate, 1),
        "pack_img_per_s_per_core": round(pack_rate / cores, 1),
        "plain_parallel_img_per_s": round(plain_rate, 1),
        "pack_speedup_per_core": round(pack_rate / plain_rate, 2),
        "loader_img_per_s": round(loader, 1),
        "loader_pinned": pin,
    }
    (OUT / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
