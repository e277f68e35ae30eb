"""Stage embed@<variant>: embed every image, test report and zero-shot prompt with the best
checkpoint; record inference efficiency and the Patch-IB maps of the explainability figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.eval.embed_model import embed_splits, load_trained, split_pixels
from lib.eval.explain import explain_maps
from lib.io import atomic_path, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True, help="models/<variant> of train@")
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True, help="data.root (images)")
    ap.add_argument("--pack", type=Path, help="output of pack_images (else decode the JPEGs)")
    ap.add_argument("--out", type=Path, required=True, help="directory of .npz files")
    ap.add_argument("--efficiency", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    p = load_params(args.params).eval
    trained = load_trained(args.model, p.device)
    size = trained.backbone.image_size
    pack = Pack.open(args.pack) if args.pack else None
    splits, pixels_of = split_pixels(read_master(args.master), pack, args.root, size, p.num_workers)
    result = embed_splits(trained, splits, pixels_of, p)
    maps = explain_maps(trained, result.test_pixels, splits["test"], p.explain_images)
    runs = {}
    if p.finetune:
        from lib.eval.finetune import finetune_all, save_runs  # sklearn: only when on

        runs = finetune_all(trained, splits, pixels_of, p, args.model)
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        result.embeddings.save(tmp)
        maps.save(tmp)
        if runs:
            save_runs(tmp, runs)
    write_json(args.efficiency, result.efficiency)
    sizes = {s: len(split) for s, split in splits.items()}
    reports = len(result.embeddings.report_study)
    print(f"embed@{trained.variant.name}: images {sizes}, {reports} test reports -> {args.out}")


if __name__ == "__main__":
    run(main)
