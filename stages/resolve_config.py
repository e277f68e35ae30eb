"""Stage resolve_config: write each variant's effective config (model + train, and the
digest of its backbone folder) to JSON, and the config of the "pretrained backbone, no
fine-tuning" reference (pretrained.json: model.backbone with its digest, train.use_amp).

train@<variant> and stage pretrained depend on their file only, so changing a param, or the
backbone folder a variant fine-tunes, rebuilds exactly the models whose config changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.variants import (
    PRETRAINED,
    pretrained_variant,
    resolve_all,
    with_backbone_digest,
    with_settings,
)
from lib.io import atomic_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument(
        "--models", type=Path, help="the variants' settings (check_params); default: params"
    )
    args = ap.parse_args()

    params = load_params(args.params)
    if args.models is not None:  # descriptions left out: editing one reruns compare alone
        params = with_settings(params, args.models)
    variants = resolve_all(params)
    variants[PRETRAINED] = pretrained_variant(params.model.backbone, params.train.use_amp)
    for name, variant in variants.items():
        variant = with_backbone_digest(variant)
        with atomic_path(args.out_dir / f"{name}.json") as tmp:
            tmp.write_text(json.dumps(variant.to_dict(), indent=2, sort_keys=True) + "\n")
        print(f"resolve_config: {name} -> {args.out_dir / f'{name}.json'}")


if __name__ == "__main__":
    run(main)
