"""Stage demo_backbone: write BiomedCLIP in miniature as an open_clip local-dir folder,
its WordPiece vocabulary trained on the train-split reports of the master file."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.data.master import read_master
from lib.model.backbone import write_demo_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params).backbone
    texts = sorted(set(read_master(args.master)["train"].texts))
    write_demo_backbone(args.out, texts, params)  # writes atomically itself
    print(f"demo_backbone: vocabulary from {len(texts)} train reports -> {args.out}")


if __name__ == "__main__":
    run(main)
