"""Benchmark: the cost of ``data.verify_checksums`` (SHA-256 of every packed image).

With the key on, ``pack_images`` hashes the bytes of each image it has just read, before
decoding them (lib/data/checksums.py); the disk read is shared with the decode, so the cost
is the hashing alone. This measures, on one thread:

1. reading + hashing N demo JPEGs (a demo corpus written to a temporary folder, or
   ``--root``): images/s and MB/s, the page cache warm;
2. hashing a buffer of MIMIC-CXR-JPG's mean file size (570 GB / 377,110 images = 1.51 MB;
   SHA-256 time does not depend on the bytes) and, on the full-size synthetic X-rays of
   benchmarks/pack_images.py, ``load_image`` at 224 px: the hash's share of the pack's work;
3. the extrapolation to 377,110 images at that mean size, on one core and on ``--cores``
   (hashlib releases the GIL: threads scale as the decoding threads do).

    python benchmarks/verify_checksums.py            # ~40 s on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.config.params import DemoParams
from lib.data.images import load_image
from lib.demo.corpus import write_corpus

MIMIC_IMAGES = 377_110
MIMIC_MEAN_BYTES = 570e9 / MIMIC_IMAGES  # MIMIC-CXR-JPG v2.0.0: ~570 GB of JPEGs


def hash_files(paths: list[Path]) -> tuple[float, int]:
    """(seconds, bytes) to read and hash every file once (after one warm-up pass)."""
    for p in paths:
        p.read_bytes()
    start = time.perf_counter()
    total = 0
    for p in paths:
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        total += len(data)
    return time.perf_counter() - start, total


def hash_buffer(size: int, repeats: int) -> float:
    """Seconds per SHA-256 of ``size`` bytes."""
    data = os.urandom(size)
    hashlib.sha256(data).digest()
    start = time.perf_counter()
    for _ in range(repeats):
        hashlib.sha256(data).digest()
    return (time.perf_counter() - start) / repeats


def decode_full_size(n: int) -> float:
    """Seconds per load_image at 224 px of benchmarks/pack_images.py's full-size inputs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_pack", Path(__file__).resolve().parent / "pack_images.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    paths = bench.make_inputs(n, 86)  # ~1.5 MB each, as MIMIC's
    load_image(paths[0], 224)
    start = time.perf_counter()
    for p in paths:
        load_image(p, 224)
    return (time.perf_counter() - start) / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, help="a demo corpus (default: write one to /tmp)")
    ap.add_argument("--patients", type=int, default=300, help="size of the corpus written")
    ap.add_argument("--full-size", type=int, default=6, help="full-size X-rays decoded")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "mimic"
            write_corpus(DemoParams(n_patients=args.patients, workers=1), root)
        paths = sorted(root.glob("files/**/*.jpg"))
        seconds, total = hash_files(paths)
    per_mimic_file = hash_buffer(round(MIMIC_MEAN_BYTES), 50)
    decode = decode_full_size(args.full_size) if args.full_size else float("nan")
    one_core_h = MIMIC_IMAGES * per_mimic_file / 3600
    result = {
        "machine": platform.processor() or platform.machine(),
        "cores": args.cores,
        "demo_images": len(paths),
        "demo_mean_kb": round(total / len(paths) / 1e3, 1),
        "demo_images_per_s": round(len(paths) / seconds),
        "demo_mb_per_s": round(total / seconds / 1e6),
        "mimic_mean_mb": round(MIMIC_MEAN_BYTES / 1e6, 2),
        "hash_ms_per_mimic_image": round(per_mimic_file * 1e3, 2),
        "hash_mb_per_s": round(MIMIC_MEAN_BYTES / per_mimic_file / 1e6),
        "load_image_ms_full_size": round(decode * 1e3, 1),
        "hash_share_of_pack": round(per_mimic_file / decode, 3),
        "mimic_hours_one_core": round(one_core_h, 2),
        "mimic_minutes_all_cores": round(one_core_h * 60 / args.cores, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
