"""Benchmark: JPEG draft-mode packing against plain full decode, and the loader from the pack.

Makes its own MIMIC-CXR-JPG-like inputs (8-bit grayscale X-rays of 2,544 × 3,056 px from
the demo's renderer, JPEG quality chosen for ~1.5 MB per file, like MIMIC-CXR-JPG's
570 GB / 377,110 images), then measures:

1. decode + preprocess per image on one thread: plain (full decode, bicubic resize of the
   full image, centre crop) against the pipeline's ``load_image`` (draft mode: the DCT
   decodes at 1/8 scale, then the same resize and crop);
2. ``pack_images`` on every core against plain decoding on every core, in threads and in
   processes (images per second, and per core). Processes are what PyTorch DataLoader
   workers (the spec's input pipeline) are; there glibc's main heap gives the 7.8 MB decode
   buffer back to the OS after each image and faults it in again for the next, which makes
   plain decoding ~20 % slower than in threads (equal with MALLOC_TRIM_THRESHOLD_ raised);
3. with ``--decoder nvjpeg`` (needs CUDA): ``pack_images`` decoding batches with nvJPEG,
   and how far its pixels are from ``load_image``'s;
4. the loader: random study-sized batches gathered from a pack of ``--pack-images`` images
   at 224 px into (pinned, where CUDA exists) uint8 tensors, as training reads them.

    python benchmarks/pack_images.py                  # ~30 s on 2 cores
    python benchmarks/pack_images.py --decoder nvjpeg # on a GPU machine
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.data.images import load_image, resize_shape
from lib.data.pack import PackedPixels, pack_images
from lib.demo.synth_images import render_cxr

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
        nw, nh = resize_shape(*im.size, size)
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


def _plain_rel(rel: str, size: int = 224) -> None:
    plain_decode(OUT / rel, size)


def max_abs_diff(paths: list[Path], size: int, device: torch.device) -> tuple[int, float]:
    """(max, mean) |decode_batch − load_image| in grey levels over the inputs."""
    from lib.data.jpeg_batch import decode_batch

    got = decode_batch([p.read_bytes() for p in paths], size, device)
    ref = [load_image(p, size).astype(int) for p in paths]
    d = np.stack([np.abs(g.astype(int) - r) for g, r in zip(got, ref, strict=True)])
    return int(d.max()), float(d.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="distinct full-size JPEGs")
    ap.add_argument("--quality", type=int, default=86, help="JPEG quality (86: ~1.5 MB)")
    ap.add_argument("--size", type=int, default=224, help="packed image side")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pack-copies", type=int, default=20, help="pack N = images × this")
    ap.add_argument("--pack-images", type=int, default=20_000, help="loader benchmark pack")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument(
        "--decoder",
        choices=("pillow", "nvjpeg", "torchvision-cpu"),
        default="pillow",
        help="nvjpeg: also pack with nvJPEG on the GPU; torchvision-cpu: the same code on "
        "the CPU, to try the script without a GPU",
    )
    ap.add_argument("--gpu-batch", type=int, default=64, help="JPEGs per nvJPEG call")
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

    def pack(device: torch.device | None) -> float:
        start = time.perf_counter()
        pack_images(
            OUT, rel, dicom, args.size, OUT / "state", f"bench{time.time()}", cores, 256,
            device=device, batch_size=args.gpu_batch,
        )  # fmt: skip
        return len(rel) / (time.perf_counter() - start)

    pack_rate = pack(None)
    print(
        f"pack_images: {len(rel)} images on {cores} threads: {pack_rate:.0f} img/s "
        f"({pack_rate / cores:.0f} img/s per core)"
    )
    # The same images decoded plainly on every core: in threads, and in processes (each
    # decoding in its main thread, like DataLoader workers).
    start = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(lambda r: plain_decode(OUT / r, args.size), rel))
    plain_threads = len(rel) / (time.perf_counter() - start)
    with multiprocessing.get_context("fork").Pool(cores) as procs:
        procs.map(_plain_rel, rel[:cores])  # start the workers
        start = time.perf_counter()
        procs.map(partial(_plain_rel, size=args.size), rel, chunksize=4)
        plain_procs = len(rel) / (time.perf_counter() - start)
    print(
        f"plain decode on {cores} cores: {plain_threads:.0f} img/s in threads, "
        f"{plain_procs:.0f} img/s in processes; pack_images is {pack_rate / plain_threads:.2f}x "
        f"/ {pack_rate / plain_procs:.2f}x faster per core"
    )

    gpu: dict[str, object] = {}
    if args.decoder != "pillow":
        if args.decoder == "nvjpeg" and not torch.cuda.is_available():
            raise SystemExit("--decoder nvjpeg needs CUDA")
        cuda = torch.device("cuda" if args.decoder == "nvjpeg" else "cpu")
        pack(cuda)  # warm-up: CUDA context and nvJPEG handles
        gpu_rate = pack(cuda)
        worst, mean = max_abs_diff(paths, args.size, cuda)
        name = torch.cuda.get_device_name() if cuda.type == "cuda" else "the CPU (libjpeg-turbo)"
        print(
            f"pack_images, torchvision decoder on {name}, {cores} reading threads: "
            f"{gpu_rate:.0f} img/s "
            f"({gpu_rate / pack_rate:.1f}x the CPU pack); |nvJPEG - load_image| max {worst}, "
            f"mean {mean:.3f} grey levels"
        )
        gpu = {"gpu": name, "nvjpeg_img_per_s": round(gpu_rate, 1), "nvjpeg_max_diff": worst,
               "nvjpeg_mean_diff": round(mean, 4)}  # fmt: skip

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
        "speedup_one_thread": round(plain / draft, 2),
        "pack_img_per_s": round(pack_rate, 1),
        "plain_threads_img_per_s": round(plain_threads, 1),
        "plain_processes_img_per_s": round(plain_procs, 1),
        "pack_speedup_per_core_vs_threads": round(pack_rate / plain_threads, 2),
        "pack_speedup_per_core_vs_processes": round(pack_rate / plain_procs, 2),
        **gpu,
        "loader_img_per_s": round(loader, 1),
        "loader_pinned": pin,
    }
    (OUT / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
