"""Stage pretrained: the "pretrained backbone, no fine-tuning" reference as a model folder
(models/pretrained) that stages embed / evaluate score exactly like train@X's output."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.eval.pretrained import write_pretrained_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    spec = params.model.backbone
    write_pretrained_model(args.out, spec, params.train.use_amp)
    print(f"pretrained: {spec}, no fine-tuning -> {args.out}")


if __name__ == "__main__":
    run(main)
