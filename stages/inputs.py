"""Stage inputs: the files that params name and no stage writes, hashed into one manifest
per stage that reads them (lib/config/inputs.py); dvc.yaml runs it every time
(always_changed), and a manifest whose bytes are unchanged reruns nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.inputs import OPTIONAL_INPUTS, input_manifest
from lib.config.loader import load_params
from lib.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="folder of <stage>.json manifests")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    for stage in OPTIONAL_INPUTS:
        manifest = input_manifest(params, stage, str(args.params))
        write_json(args.out / f"{stage}.json", manifest)
        named = [k for k, v in manifest.items() if v is not None]
        print(f"inputs: {stage} reads {', '.join(named) or 'no optional file'}")


if __name__ == "__main__":
    run(main)
