"""Stage convirt_backbone: ConVIRT's demo backbone, an open_clip local-dir folder of a
bottleneck ResNet in miniature (random from its seed) and the demo backbone's BERT, which
train@ConVIRT fine-tunes (lib/model/convirt.py, write_convirt_backbone). When no variant
uses it (real runs point models.ConVIRT.backbone at ResNet-50 + ClinicalBERT), the stage
writes only a record of why it was skipped."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.params import CONVIRT_DEMO_BACKBONE, DEMO_BACKBONE
from lib.config.variants import resolve_all, with_settings
from lib.errors import ParamsError
from lib.io import atomic_path, tree_digest, write_json
from lib.model.convirt import write_convirt_backbone

RECORD = "skipped.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--text-from", type=Path, required=True, help="the demo backbone folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument(
        "--models", type=Path, help="the variants' settings (check_params); default: params"
    )
    args = ap.parse_args()

    params = load_params(args.params)
    if args.models is not None:  # descriptions left out: editing one reruns compare alone
        params = with_settings(params, args.models)
    users = [n for n, v in resolve_all(params).items() if v.model.backbone == CONVIRT_DEMO_BACKBONE]
    if not users:
        reason = f"no variant's backbone is {CONVIRT_DEMO_BACKBONE!r}"
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            (tmp / RECORD).write_text(json.dumps({"skipped": reason}) + "\n", encoding="utf-8")
        write_json(args.metrics, {"skipped": reason})
        print(f"convirt_backbone: skipped, {reason}")
        return
    if params.model.backbone != DEMO_BACKBONE:
        raise ParamsError(
            f"models.{users[0]}.backbone is ConVIRT's demo backbone, whose text tower is the "
            f"demo backbone's, but model.backbone = {params.model.backbone!r} is not the demo's "
            "(stage demo_backbone was skipped). On real data point it at ResNet-50 + "
            "ClinicalBERT: models.ConVIRT.backbone: "
            "local-dir:configs/backbones/convirt-resnet50-bioclinicalbert (docs/models.md)"
        )
    p = params.convirt_backbone
    write_convirt_backbone(args.out, args.text_from, p)
    write_json(
        args.metrics,
        {
            "variants": users,
            "image_tower": f"bottleneck ResNet, widths {[p.width * 2**i for i in range(4)]}, "
            f"{p.depth} block(s) per stage, random from seed {p.seed}",
            "text_tower": f"the BERT of {args.text_from}",
            "digest": tree_digest(args.out),
        },
    )
    print(f"convirt_backbone: {args.out} for {', '.join(users)}")


if __name__ == "__main__":
    run(main)
