"""Stage pack_images: decode every image of the master file once into a memory-mapped
uint8 array (resumable; unreadable images counted, listed and left out)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from lib.cli import run
from lib.config.loader import load_params
from lib.data import pack as pk
from lib.data.checksums import read_checksums
from lib.data.master import read_master
from lib.data.splits import SPLITS
from lib.headline import kept_dropped, write_headline
from lib.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True, help="data.root (images)")
    ap.add_argument("--out", type=Path, required=True, help="directory of the pack")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--headline", type=Path, help="DVC metric: kept, dropped (omitted: none)")
    ap.add_argument("--efficiency", type=Path, required=True)
    ap.add_argument("--state-dir", type=Path, required=True, help="resumable work in progress")
    ap.add_argument(
        "--checksums", type=Path, required=True, help="SHA256SUMS.txt (data.verify_checksums)"
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    size, p = params.data.image_size, params.pack
    splits = read_master(args.master)
    images = [path for s in SPLITS for path in splits[s].images]
    dicom = [d for s in SPLITS for d in splits[s].dicom]
    verify = params.data.verify_checksums
    checksums = read_checksums(args.checksums) if verify else None
    run_id = pk.pack_run_id(args.master, args.root, size, p.decoder, verify)
    device = pk.decode_device(p.decoder, args.params)
    workers = pk.default_workers(p.workers)
    start = time.perf_counter()
    with tqdm(
        total=len(images), unit="img", desc="pack_images", disable=not sys.stderr.isatty()
    ) as bar:
        result = pk.pack_images(
            args.root, images, dicom, size, args.state_dir, run_id, workers, p.chunk_size,
            progress=bar.update, device=device, batch_size=p.gpu_batch_size, checksums=checksums,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    write_json(args.metrics, pk.pack_metrics(result))
    if args.headline is not None:
        write_headline(
            args.headline, kept_dropped(result.n_images - len(result.failed), len(result.failed))
        )
    pk.check_failed(result, p.max_failed_fraction, args.root, args.metrics)
    efficiency = {
        "images_per_second": round(result.n_images / max(seconds, 1e-9), 1),
        "seconds": round(seconds, 2),
        "workers": workers,
        "decoder": p.decoder,
        "images_resumed": result.images_resumed,
    }
    write_json(args.efficiency, efficiency)
    pk.publish(args.state_dir, args.out)
    n, failed = result.n_images, len(result.failed)
    checked = ", checksums verified" if verify else ""
    print(f"pack_images: {n} images at {size} px, {failed} unreadable{checked} -> {args.out}")


if __name__ == "__main__":
    run(main)
