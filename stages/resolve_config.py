"""Stage resolve_config: write each variant's effective config (model + train, and the
digest of its backbone folder) to JSON.

train@<variant> depends on its file only, so changing a param, or the backbone folder the
variant fine-tunes, retrains exactly the variants whose effective config changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.variants import resolve_all, with_backbone_digest
from lib.io import atomic_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    for name, variant in resolve_all(load_params(args.params)).items():
        variant = with_backbone_digest(variant)
        with atomic_path(args.out_dir / f"{name}.json") as tmp:
            tmp.write_text(json.dumps(variant.to_dict(), indent=2, sort_keys=True) + "\n")
        print(f"resolve_config: {name} -> {args.out_dir / f'{name}.json'}")


if __name__ == "__main__":
    run(main)
