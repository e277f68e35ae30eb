"""Stage code_manifest: for every stage script, the files of its code with their digests
(lib/code_deps.py), one manifest per script in ``--out``. Each stage depends on its own
manifest, so editing a module reruns exactly the stages that import it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.cli import run
from lib.code_deps import manifest, manifest_name, stage_scripts
from lib.io import atomic_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--root", type=Path, default=Path("."), help="the repository")
    args = ap.parse_args()

    modules = stage_scripts(args.root)
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for module in modules:
            text = json.dumps(manifest(module, args.root), indent=1) + "\n"
            (tmp / manifest_name(module)).write_text(text, encoding="utf-8")
    print(f"code_manifest: {len(modules)} stage scripts -> {args.out}")


if __name__ == "__main__":
    run(main)
