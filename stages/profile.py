"""Apply a profile to params.yaml: ``python -m stages.profile configs/mimic-cxr.yaml
--set data.root=/datasets/MIMIC-CXR-JPG``. Every key it names must be in params.yaml; the
result is validated as the stages validate it and written atomically, comments kept
(lib/config/profile.py). Not a pipeline stage: run it once, then `dvc repro`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import run
from lib.config.profile import apply_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("profile", type=Path, help="e.g. configs/mimic-cxr.yaml")
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key on top of the profile (repeatable), e.g. data.root=/datasets/MIMIC-CXR-JPG",
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--dry-run", action="store_true", help="validate and list, write nothing")
    args = ap.parse_args()

    changes = apply_profile(args.params, args.profile, args.sets, write=not args.dry_run)
    for change in changes:
        print(f"  {change}")
    verb = "would change" if args.dry_run else "changed"
    print(f"profile: {args.profile} {verb} {len(changes)} key(s) of {args.params} (validated)")


if __name__ == "__main__":
    run(main)
