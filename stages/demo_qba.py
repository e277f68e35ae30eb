"""Stage demo_qba: the demo's QA, scene graphs and image metadata in MIMIC-Ext-CXR-QBA
v1.0.0's layout (lib/demo/qba.py), from the corpus's own truth; with data.demo false
(real data) it writes only a record of why."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.params import as_dict
from lib.demo.qba import write_qba
from lib.io import atomic_path, write_json

SKIPPED = "data.demo is false (real data): no demo QA written"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="QBA-format folder to create")
    ap.add_argument("--grounding", type=Path, help="the demo's MS-CXR-format boxes")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    start = time.perf_counter()
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        if not params.data.demo:
            (tmp / "skipped.json").write_text(json.dumps({"skipped": SKIPPED}) + "\n")
            summary: dict = {"skipped": SKIPPED}
        else:
            summary = write_qba(params.demo, params.demo_qba, tmp, args.grounding)
    write_json(args.metrics, {"params": as_dict(params.demo_qba), **summary})
    print(
        f"demo_qba: {summary.get('questions', 0)} questions on {summary.get('studies', 0)} "
        f"studies in {time.perf_counter() - start:.1f} s -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
