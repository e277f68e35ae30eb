"""Stage pixel_probe: the raw-pixel floor of the results table. PCA of the packed pixels
(fitted on train), then the models' linear probe and bootstrap intervals on test."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.eval.evaluate import fraction_key
from lib.eval.pixels import pixel_probe
from lib.headline import model_headline, write_headline
from lib.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--pack", type=Path, required=True, help="output of pack_images")
    ap.add_argument("--metrics", type=Path, required=True, help="every test metric")
    ap.add_argument("--headline", type=Path, help="DVC metric: the headline (omitted: none)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    p = load_params(args.params).eval
    pack = Pack.open(args.pack)
    splits = {name: pack.usable(split) for name, split in read_master(args.master).items()}
    m = pixel_probe(pack, splits, p)
    write_json(args.metrics, m)
    full = fraction_key(max(p.probe_fractions))
    if args.headline is not None:
        write_headline(args.headline, model_headline(m, full))  # a probe: no retrieval
    print(
        f"pixel_probe: PCA({m['pca_dim']}) of {m['pixels_per_image']} pixels on "
        f"{m['pca_fit_images']} train images, probe {full} mean AUC "
        f"{m[f'probe_{full}_mean_auc']} -> {args.metrics}"
    )


if __name__ == "__main__":
    run(main)
