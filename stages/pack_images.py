"""Stage pack_images: decode every image of the master file once into a memory-mapped
uint8 array (resumable; unreadable images counted, listed and left out)."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lib.cli import run
from lib.config.loader import load_params
from lib.data.master import read_master
from lib.data.pack import default_workers, pack_images
from lib.errors import DataError
from lib.io import atomic_path, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True, help="data.root (images)")
    ap.add_argument("--out", type=Path, required=True, help="directory of the pack")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--efficiency", type=Path, required=True)
    ap.add_argument("--state-dir", type=Path, required=True, help="resumable work in progress")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    size, p = params.data.image_size, params.pack
    splits = read_master(args.master)
    images = [path for s in ("train", "val", "test") for path in splits[s].images]
    dicom = [d for s in ("train", "val", "test") for d in splits[s].dicom]
    st = args.master.stat()
    run_id = hashlib.sha256(
        f"{args.master.resolve()}|{st.st_size}|{st.st_mtime_ns}|{args.root.resolve()}|{size}|"
        f"{p.decoder}".encode()
    ).hexdigest()[:16]
    device = None
    if p.decoder == "nvjpeg":
        if not torch.cuda.is_available():
            raise DataError(
                f"pack.decoder = nvjpeg needs a CUDA GPU and none is visible; set "
                f"pack.decoder: pillow in {args.params} (it decodes on the CPU cores)"
            )
        device = torch.device("cuda")
    workers = default_workers(p.workers)
    start = time.perf_counter()
    with tqdm(
        total=len(images), unit="img", desc="pack_images", disable=not sys.stderr.isatty()
    ) as bar:
        result = pack_images(
            args.root,
            images,
            dicom,
            size,
            args.state_dir,
            run_id,
            workers,
            p.chunk_size,
            progress=bar.update,
            device=device,
            batch_size=p.gpu_batch_size,
        )
    seconds = time.perf_counter() - start
    fraction = len(result.failed) / result.n_images
    metrics = {
        "images": result.n_images,
        "image_size": size,
        "failed": len(result.failed),
        "failed_fraction": round(fraction, 6),
        "failed_images": result.failed,
    }
    write_json(args.metrics, metrics)
    if fraction > p.max_failed_fraction:
        examples = "; ".join(f"{f['image']}: {f['error']}" for f in result.failed[:5])
        raise DataError(
            f"{len(result.failed)} of {result.n_images} images under {args.root} could not be "
            f"decoded ({fraction:.2%} > pack.max_failed_fraction = {p.max_failed_fraction}), "
            f"e.g. {examples}. Replace the damaged files (all are listed in {args.metrics}) "
            "and run `dvc repro -f pack_images`, or raise pack.max_failed_fraction to leave "
            "them out"
        )
    write_json(
        args.efficiency,
        {
            "images_per_second": round(result.n_images / max(seconds, 1e-9), 1),
            "seconds": round(seconds, 2),
            "workers": workers,
            "decoder": p.decoder,
            "chunks_resumed": result.chunks_resumed,
        },
    )
    (args.state_dir / "run.json").unlink()
    with atomic_path(args.out) as tmp:
        shutil.move(args.state_dir, tmp)  # a rename on one file system: no copy of the pack
    print(
        f"pack_images: {result.n_images} images at {size} px, {len(result.failed)} unreadable "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    run(main)
