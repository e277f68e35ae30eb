"""Stages vqa@X, vqa_pretrained, vqa_question_only and vqa_frequent (lib/vqa/run.py): the
scene-graph VQA head on model X's towers (or a floor), trained on the train split's
questions of data/vqa (stage vqa_readiness, whose report must say ready), scored on test.
Writes the metrics, the per-question test table (stage compare pairs it against A), a
headline and, for models that see the image, attention against the reference boxes."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from lib.cli import run
from lib.config.loader import load_params
from lib.data.pack import Pack
from lib.headline import write_headline
from lib.io import save_figure, write_json, write_parquet
from lib.vqa.plots import attention_figure
from lib.vqa.readiness import skipped_reason
from lib.vqa.run import MODES, headline, run_vqa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--name", required=True, help="the row's name (A, pretrained, ...)")
    ap.add_argument("--model", type=Path, help="models/<X>: its towers (not for frequent)")
    ap.add_argument("--data", type=Path, required=True, help="output of vqa_readiness")
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--pack", type=Path, help="output of pack_images (mode model)")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--table", type=Path, required=True, help="per-question test results")
    ap.add_argument("--headline", type=Path, required=True)
    ap.add_argument("--plots", type=Path, help="folder of the attention figure (mode model)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    ev = params.eval
    skipped = skipped_reason(args.data / "readiness.json")
    if skipped:  # data.vqa null: a record of why, no table rows, no figure
        write_parquet(args.table, pd.DataFrame(columns=["question_id", "subject_id", "head"]))
        write_json(args.metrics, {"name": args.name, "skipped": skipped})
        write_headline(args.headline, {})
        if args.plots is not None:
            args.plots.mkdir(parents=True, exist_ok=True)
        print(f"vqa {args.name}: skipped ({skipped})")
        return
    metrics, table, examples = run_vqa(
        args.mode,
        args.data,
        args.data / "readiness.json",
        args.master,
        args.pack,
        args.model,
        params.vqa,
        (ev.bootstrap, ev.seed, ev.ci_level),
        ev.device,
    )
    metrics = {"name": args.name, **metrics}
    table.attrs.clear()  # boxes and BLEU are in the metrics; the table stays plain columns
    write_parquet(args.table, table)
    write_json(args.metrics, metrics)
    write_headline(args.headline, headline(metrics))
    if args.plots is not None and args.mode == "model":
        args.plots.mkdir(parents=True, exist_ok=True)
        pack = Pack.open(args.pack)
        images = [np.asarray(pack.images[pack.row_of[e["dicom_id"]]]) for e in examples]
        fig = attention_figure(
            examples, images, tuple(metrics["grid"]), f"vqa@{args.name}: attention and boxes"
        )
        save_figure(args.plots / "attention.png", fig)
    acc = metrics["intervals"]["correct"]
    print(
        f"vqa {args.name} ({args.mode}): test accuracy {acc['point']:.3f} "
        f"[{acc['low']:.3f}, {acc['high']:.3f}] on {metrics['n_questions']} questions, "
        f"best epoch {metrics['best_epoch']}, {metrics['timings']['total_s']} s -> {args.metrics}"
    )


if __name__ == "__main__":
    run(main)
