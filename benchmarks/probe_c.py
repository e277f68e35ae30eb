"""Choose ``eval.probe_c`` on the validation split: the linear probe's inverse L2 strength.

For each model's embeddings (``data/embeddings/<model>``, written by ``embed@X``), each C of
the grid and each probe fraction, the probe is fitted on the train rows exactly as
``eval@X`` fits it (lib/eval/probe.py: same subsample, standardisation and seed) and scored
on **val**; the C with the best val mean AUC, averaged over the models given, is the one to
put in ``params.yaml``. Test mean AUCs are printed beside, for the record only: choosing on
them would tune the protocol to the test split.

    python benchmarks/probe_c.py                          # every model in data/embeddings
    python benchmarks/probe_c.py --models A pretrained --grid 1 0.1 0.01

Run it again on real data (after ``dvc repro embed@A``): the best C depends on the number of
train images and on the embedding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.config.loader import load_params
from lib.data.master import read_master
from lib.data.mimic import LABELS
from lib.data.pack import Pack
from lib.eval.embedding_files import Embeddings
from lib.eval.probe import fit_probe, fraction_key

GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--embeddings", type=Path, default=Path("data/embeddings"))
    ap.add_argument("--models", nargs="*", help="sub-folders of --embeddings (default: all)")
    ap.add_argument(
        "--master", type=Path, default=Path("data/processed/mimic_master_official_split.jsonl")
    )
    ap.add_argument("--pack", default="data/packed", help="'' when the images are not packed")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    args = ap.parse_args()

    params = load_params(args.params).eval
    splits = read_master(args.master)
    if args.pack:  # a str: Path("") would be "." and never empty
        pack = Pack.open(Path(args.pack))
        splits = {name: pack.usable(split) for name, split in splits.items()}
    models = args.models or sorted(p.name for p in args.embeddings.iterdir() if p.is_dir())
    fractions = list(params.probe_fractions)
    # val[c][fraction] -> one mean AUC per model
    val: dict[float, dict[float, list[float]]] = {c: {f: [] for f in fractions} for c in args.grid}
    print(f"probe C on val (train -> val), test for the record; eval.probe_c = {params.probe_c}")
    print(
        "| model | C | "
        + " | ".join(f"val {fraction_key(f)}" for f in fractions)
        + " | "
        + " | ".join(f"test {fraction_key(f)}" for f in fractions)
        + " |"
    )
    print("|---|---:|" + "---:|" * (2 * len(fractions)))
    for model in models:
        emb = Embeddings.load(args.embeddings / model)
        emb.check_aligned(splits)
        train, valid, test = splits["train"], splits["val"], splits["test"]
        for c in args.grid:
            cells_val, cells_test = [], []
            for f in fractions:
                common = (emb.images["train"], train.labels, emb.images["val"], valid.labels)
                on_val = fit_probe(
                    *common, emb.images["val"], valid.labels, LABELS, f, params.seed, c
                )
                on_test = fit_probe(
                    *common, emb.images["test"], test.labels, LABELS, f, params.seed, c
                )
                val[c][f].append(on_val.mean_auc)
                cells_val.append(f"{on_val.mean_auc:.4f}")
                cells_test.append(f"{on_test.mean_auc:.4f}")
            print(
                f"| {model} | {c:g} | "
                + " | ".join(cells_val)
                + " | "
                + " | ".join(cells_test)
                + " |",
                flush=True,
            )
    print(f"\nval mean AUC averaged over {len(models)} models:")
    for f in fractions:
        means = {c: float(np.mean(val[c][f])) for c in args.grid}
        best = max(means, key=means.__getitem__)
        row = ", ".join(f"C={c:g}: {m:.4f}" for c, m in means.items())
        print(f"  {fraction_key(f)}: {row}  -> best C = {best:g}")
    overall = {c: float(np.mean([np.mean(val[c][f]) for f in fractions])) for c in args.grid}
    best = max(overall, key=overall.__getitem__)
    print(f"over all fractions: best C = {best:g} (val mean AUC {overall[best]:.4f})")


if __name__ == "__main__":
    main()
