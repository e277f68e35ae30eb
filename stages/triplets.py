"""Stage triplets: (entity, position, existence) per study from the master file's reports
(lib/data/triplets.py: spaCy rules with negspacy's negation, uncertainty rules of our own),
MedKLIP's targets; the label policy (data.label_policy) decides uncertain mentions. Its
metrics: counts per entity and position, studies with no triplet, and the agreement of the
present mentions with the CheXpert labels of the same studies (the writer's own labels on
the demo)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.data.triplet_table import agreement, master_studies, triplet_table
from lib.data.triplet_vocab import vocab_record
from lib.headline import write_headline
from lib.io import write_json, write_parquet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder: triplets.parquet, vocab.json")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--efficiency", type=Path, required=True)
    ap.add_argument("--headline", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    policy = load_params(args.params).data.label_policy
    studies, texts, labels = master_studies(args.master)
    start = time.perf_counter()
    table, counts = triplet_table(studies, texts, policy)
    seconds = time.perf_counter() - start
    scores = agreement(table, labels)
    write_parquet(args.out / "triplets.parquet", table)
    write_json(args.out / "vocab.json", vocab_record())
    scores["studies_without_label_row"] = len(studies) - len(labels)
    write_json(args.metrics, {**counts, "chexpert_agreement": scores})
    write_json(
        args.efficiency,
        {
            "reports": len(texts),
            "seconds": round(seconds, 2),
            "reports_per_second": round(len(texts) / seconds, 1),
        },
    )
    micro = scores["micro"]
    write_headline(args.headline, {"precision": micro["precision"], "recall": micro["recall"]})
    print(
        f"triplets: {counts['triplets']} triplets from {len(texts)} reports "
        f"({len(texts) / seconds:.0f}/s), {counts['studies_without_triplet']} without any; "
        f"present vs CheXpert labels: precision {micro['precision']:.3f}, recall "
        f"{micro['recall']:.3f} -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
