"""Training-seed replicates: one variant trained, embedded and scored again with another
seed (stage replicate@<X>-<seed>); lib/eval/seeds.py turns them into the seed spread.

Stage ``replicate@<X>-<seed>`` runs the same code as train@X → embed@X → eval@X with
``train.seed`` replaced, and keeps the metrics only (no checkpoint, no plots): the primary
run (train@X) keeps the artefacts. It runs on one process (no torchrun).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from lib.config.params import EvalParams
from lib.config.variants import Variant
from lib.data.master import Split
from lib.data.pack import Pack
from lib.eval.embed_model import embed_splits, load_trained, split_pixels
from lib.eval.evaluate import evaluate
from lib.train.loop import train_variant
from lib.train.outputs import best_metrics, write_model_dir


def with_seed(variant: Variant, seed: int) -> Variant:
    return dataclasses.replace(variant, train=dataclasses.replace(variant.train, seed=seed))


def run_replicate(
    variant: Variant,
    seed: int,
    master: Path,
    splits: dict[str, Split],
    root: Path,
    pack: Pack | None,
    params: EvalParams,
    state_dir: Path,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``variant`` with ``train.seed = seed`` (resuming from ``state_dir``), then embed
    and score it exactly as embed@/eval@ do; the flat eval metrics plus the seed and the
    training summary. ``state_dir`` is removed when done."""
    v = with_seed(variant, seed)
    trainer, state = train_variant(v, master, splits, root, state_dir / "train", progress, pack)
    model_dir = state_dir / "model"
    write_model_dir(model_dir, trainer.best_path, v.to_dict(), state)
    del trainer
    trained = load_trained(model_dir, params.device)
    size = trained.backbone.image_size
    splits, pixels_of = split_pixels(splits, pack, root, size, params.num_workers)
    run = embed_splits(trained, splits, pixels_of, params)
    pos_emb, neg_emb = run.embeddings.prompts("replicate")
    result = evaluate(run.embeddings, splits, pos_emb, neg_emb, params)
    train = best_metrics(state)
    shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "model": variant.name,
        "seed": seed,
        "best_epoch": train["best_epoch"],
        "collapsed_epochs": train["collapsed_epochs"],
        **result.metrics,
    }
