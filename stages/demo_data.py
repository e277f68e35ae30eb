"""Stage demo_data: write the synthetic corpus in the MIMIC-CXR-JPG v2 layout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.params import as_dict
from lib.demo.corpus import write_corpus
from lib.io import atomic_path, write_json

SKIPPED = "data.demo is false (real data): no corpus drawn"
RECORD = "skipped.json"


def skip_outputs(out: Path, grounding: Path | None) -> dict[str, str]:
    """The stage's outputs on real data (DVC still needs them): a folder holding only a
    record of why, and an empty boxes file."""
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / RECORD).write_text(json.dumps({"skipped": SKIPPED}) + "\n", encoding="utf-8")
    if grounding is not None:
        with atomic_path(grounding) as tmp:
            tmp.write_text("", encoding="utf-8")
    return {"skipped": SKIPPED}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="corpus root to create")
    ap.add_argument(
        "--grounding", type=Path, help="MS-CXR-format CSV of the val and test splits' finding boxes"
    )
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    loaded = load_params(args.params)
    if not loaded.data.demo:
        write_json(args.metrics, skip_outputs(args.out, args.grounding))
        print(f"demo_data: skipped, {SKIPPED}")
        return
    params = loaded.demo
    start = time.perf_counter()
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(args.out))
        boxes = stack.enter_context(atomic_path(args.grounding)) if args.grounding else None
        summary = write_corpus(params, tmp, progress=sys.stderr.isatty(), grounding=boxes)
    # No timings in the metrics file: same params must give identical metrics.
    write_json(args.metrics, {"params": as_dict(params), **summary})
    print(
        f"demo_data: {summary['images']} images, {summary['studies']} studies, "
        f"{summary['patients']} patients in {time.perf_counter() - start:.1f} s -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
