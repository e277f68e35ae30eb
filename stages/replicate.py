"""Stage replicate@<variant>-<seed>: one variant trained, embedded and scored again with
another training seed (replicates.seeds); its test metrics only (lib/runs/replicate.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.variants import Variant
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.io import write_json
from lib.runs.replicate import run_replicate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, required=True, help="output of resolve_config")
    ap.add_argument("--seed", type=int, required=True, help="the training seed of this run")
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True, help="data.root (images)")
    ap.add_argument("--pack", type=Path, help="output of pack_images (else decode the JPEGs)")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--state-dir", type=Path, required=True, help="resumable state")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    raw = json.loads(args.config.read_text(encoding="utf-8"))
    variant = Variant.from_dict(raw, str(args.config))
    metrics = run_replicate(
        variant,
        args.seed,
        args.master,
        read_master(args.master),
        args.root,
        Pack.open(args.pack) if args.pack else None,
        load_params(args.params).eval,
        args.state_dir,
        progress=sys.stderr.isatty(),
    )
    write_json(args.metrics, metrics)
    print(
        f"replicate@{variant.name}-{args.seed}: zero-shot mean AUC "
        f"{metrics['zero_shot_mean_auc']}, best epoch {metrics['best_epoch']} -> {args.metrics}"
    )


if __name__ == "__main__":
    run(main)
