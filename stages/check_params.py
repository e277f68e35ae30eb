"""Stage check_params: validate the whole params file (every section and key, every
variant under ``models``, the rules that span sections) on every `dvc repro`.

The other stages each depend on the few keys they read, so a typo such as ``eval.probe_cc`` or
a ``train.lr: .nan`` would pass `dvc repro` unnoticed whenever the stages that read those
keys are cached. This stage depends on the whole file: any edit reruns it (and nothing
else: it writes no output), and a bad file stops the repro with the key and the fix.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    print(f"check_params: {args.params} is valid ({len(params.models)} variants)")


if __name__ == "__main__":
    run(main)
