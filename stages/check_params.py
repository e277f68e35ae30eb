"""Stage check_params: validate the whole params file (every section and key, every
variant under ``models``, the rules that span sections) on every `dvc repro`.

The other stages each depend on the few keys they read, so a typo such as ``eval.probe_cc`` or
a ``train.lr: .nan`` would pass `dvc repro` unnoticed whenever the stages that read those
keys are cached. This stage depends on the whole file: any edit reruns it, and a bad file
stops the repro with the key and the fix. It writes one output, the variants' settings
without their descriptions (data/params/models.json), which resolve_config and
convirt_backbone read instead of ``models:``: its bytes change only when a variant's settings
do, so an edit elsewhere in the file, or of a description, reruns nothing through it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.variants import settings
from lib.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--settings", type=Path, help="write models: less descriptions here")
    args = ap.parse_args()

    params = load_params(args.params)
    if args.settings is not None:
        write_json(args.settings, settings(params))
    print(f"check_params: {args.params} is valid ({len(params.models)} variants)")


if __name__ == "__main__":
    run(main)
