"""Stage pretrained: the "pretrained backbone, no fine-tuning" reference as a model folder
(models/pretrained) that stages embed / evaluate score exactly like train@X's output."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.eval.pretrained import read_config, write_pretrained_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--config", type=Path, required=True, help="data/configs/pretrained.json (resolve_config)"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    variant = write_pretrained_model(args.out, read_config(args.config))
    print(f"pretrained: {variant.model.backbone}, no fine-tuning -> {args.out}")


if __name__ == "__main__":
    run(main)
