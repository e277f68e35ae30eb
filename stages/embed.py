"""Stage embed@<variant>: embed every image and test report with the best checkpoint;
record inference efficiency and the Patch-IB maps of the explainability figure."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lib.cli import run
from lib.config.loader import load_params
from lib.data.master import load_images, read_master
from lib.data.pack import Pack
from lib.eval.embed import (
    SPLITS,
    efficiency,
    embed_images,
    embed_texts,
    load_trained,
    study_reports,
)
from lib.eval.explain import explain, select_examples
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
    splits = read_master(args.master)
    pack = Pack.open(args.pack) if args.pack else None
    if pack is not None:  # images the pack could not decode are left out (and listed there)
        splits = {name: pack.usable(split) for name, split in splits.items()}
    arrays: dict[str, np.ndarray] = {}
    seconds, timed = 0.0, 0
    test_pixels = None
    for name in SPLITS:
        split = splits[name]
        if pack is not None:
            pixels = pack.pixels(split, size)
        else:
            pixels = load_images(args.root, split.images, size, p.num_workers)
        emb = embed_images(trained, pixels, p.batch_size)
        arrays[f"{name}_image"] = emb.emb
        arrays[f"{name}_dicom"] = np.array(split.dicom)
        seconds, timed = seconds + emb.seconds, timed + emb.images_timed
        if name == "test":
            test_pixels = pixels
            arrays["test_tokens_kept"] = emb.tokens_kept
            arrays["test_mask_mass"] = emb.mask_mass
    test = splits["test"]
    study, texts = study_reports(test)
    arrays["test_report_study"] = study
    arrays["test_report_emb"] = embed_texts(trained, texts, p.batch_size)
    arrays["logit_scale"] = np.float32(trained.model.logit_scale.exp().item())

    examples = select_examples(test, p.explain_images)
    assert test_pixels is not None  # "test" is the last of SPLITS
    maps = explain(trained, test_pixels, test, examples)
    explain_arrays = {
        "row": np.array([e.row for e in examples], dtype=np.int64),
        "dicom": np.array([test.dicom[e.row] for e in examples]),
        "image": np.array([test.images[e.row] for e in examples]),
        "label": np.array([e.label for e in examples]),
        "keyword": np.array([e.keyword for e in examples]),
        "mask": maps.mask,
        "kept": maps.kept,
        "attention": maps.attention,
        "grid": np.array(maps.grid),
    }
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        np.savez(tmp / "embeddings.npz", **arrays)
        np.savez(tmp / "explain.npz", **explain_arrays)
    write_json(args.efficiency, efficiency(trained, timed, seconds))
    sizes = {s: len(splits[s]) for s in SPLITS}
    print(f"embed@{trained.variant.name}: images {sizes}, {len(texts)} test reports -> {args.out}")


if __name__ == "__main__":
    run(main)
