"""Compare grounding settings on the validation images (``model.mask_guide_weight``,
``model.mask_noise``, the masked pooling, ...): one ``stages.grounding`` metrics folder per
setting, each model's maps scored on the phrases of official-val images. Choose on the val
columns; the official-test means are printed beside for the record only (results.md reports
them; choosing on them would tune the settings to the test split).

    python benchmarks/grounding_val.py metrics/grounding                  # the committed run
    python benchmarks/grounding_val.py weight3=metrics/grounding weight10=/tmp/g10 --maps mask

A folder is written by ``python -m stages.grounding --metrics <folder> ...`` on models
retrained with the setting (``dvc exp run -S ...``, or ``stages.train`` from a resolved config).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SCORES = ("pointing", "cnr", "iou")


def rows(name: str, metrics: dict[str, Any], maps: list[str] | None) -> list[str]:
    """Markdown rows of one model of one run: val mean [interval] per score, test means."""
    if "val" not in metrics:
        return [f"| {name} | {metrics['variant']} | (no val block: rerun stage grounding) |"]
    val, test = metrics["val"], metrics["official_test"]
    out = []
    for kind in (*metrics["maps"], *metrics["floors"]):
        if maps and kind not in maps and kind not in metrics["floors"]:
            continue
        v = [val[kind][s] for s in SCORES]
        cells = [f"{s['mean']} [{s['low']}, {s['high']}]" for s in v]
        tests = "/".join(str(test[kind][s]["mean"]) for s in SCORES)
        out.append(
            f"| {name} | {metrics['variant']} | {kind} | {val['phrases']} | "
            + " | ".join(cells)
            + f" | {tests} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="[name=]metrics folder of stages.grounding")
    ap.add_argument("--maps", nargs="*", help="map kinds to show (default: all; floors always)")
    args = ap.parse_args()
    print(
        "| run | model | map | val phrases | val pointing | val CNR | val top-k IoU "
        "| test pointing/CNR/IoU (record only) |"
    )
    print("| --- | --- | --- | ---: | --- | --- | --- | --- |")
    for run in args.runs:
        name, _, folder = run.rpartition("=")
        for path in sorted(Path(folder).glob("*.json")):
            metrics = json.loads(path.read_text())
            if "skipped" not in metrics:
                print("\n".join(rows(name or folder, metrics, args.maps)))


if __name__ == "__main__":
    main()
