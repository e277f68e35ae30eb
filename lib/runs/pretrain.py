"""CLIP pretraining of the demo backbone: the demo's stand-in for BiomedCLIP's pretraining.

The real experiment fine-tunes BiomedCLIP, which was CLIP-pretrained on PMC-15M before it
ever saw MIMIC-CXR. The demo does the same in miniature: stage ``demo_backbone`` draws a
synthetic corpus of its own (the demo's renderer and report writer, ``pretrain.seed``,
``pretrain.n_patients``) whose patients are disjoint from the demo corpus by construction
(subject and study ids from ranges MIMIC-CXR does not use), CLIP-trains the miniature
backbone on it (model A's loss, every parameter trainable), and writes the result as the
same open_clip ``local-dir:`` folder models A–E load and fine-tune. The corpus is drawn by
lib/demo/pretrain_corpus.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib.config.fixed import fixed_model, fixed_train
from lib.config.params import Params
from lib.config.variants import Variant
from lib.data.master import Split
from lib.demo.pretrain_corpus import PretrainCorpus, build_corpus, check_disjoint
from lib.device import resolve_device
from lib.io import atomic_path
from lib.model.backbone import WEIGHTS, load_backbone, write_demo_backbone
from lib.train.live import EpochLog
from lib.train.loop import Data, Trainer, TrainState

RECORD = "pretraining.json"  # written beside the weights: what made them


def holdout(split: Split, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): ``fraction`` of the patients held out, by a seeded draw."""
    subjects = np.unique(split.subject)
    rng = np.random.default_rng(seed)
    n = max(1, round(fraction * len(subjects)))
    held = np.isin(split.subject, rng.choice(subjects, n, replace=False))
    return np.flatnonzero(~held), np.flatnonzero(held)


# The keys of model: and train: that the pretraining reads (listed as its params in
# dvc.yaml); everything else comes from pretrain: or the dataclasses' defaults, so that
# `dvc exp run -S model.use_masking=true` (or any other fine-tuning key) does not pretrain again.
MODEL_KEYS = ("contrastive_weight_i2t", "contrastive_weight_t2i")
TRAIN_KEYS = (
    "device",
    "use_amp",
    "eval_batch_size",
    "recall_weight",
    "val_prompt_template",
    "val_negative_prompt_template",
    "val_no_finding_prompts",
)


def pretrain_variant(params: Params, spec: str) -> Variant:
    """Model A's architecture and loss (no mask, no local alignment) with every parameter
    trainable from the first step (no staging, no LLRD, no augmentation), on ``pretrain``'s
    schedule; only ``MODEL_KEYS`` and ``TRAIN_KEYS`` come from ``model:`` / ``train:``. Every
    other setting is the recipe's own, fixed in ``lib.config.fixed`` (tests pin the result)."""
    pre = params.pretrain
    model = fixed_model(
        backbone=spec,
        temperature=pre.temperature,
        **{k: getattr(params.model, k) for k in MODEL_KEYS},
    )
    train = fixed_train(
        seed=pre.seed,
        epochs=pre.epochs,
        batch_size=pre.batch_size,
        gradient_accumulation_steps=1,
        staged_training=False,
        lr=pre.lr,
        llrd_factor=1.0,
        weight_decay=pre.weight_decay,
        warmup_steps=pre.warmup_steps,
        patience=pre.epochs,  # no early stop: the best held-out epoch is kept
        nproc_per_node=1,
        text_sampling=pre.text_sampling,
        **{k: getattr(params.train, k) for k in TRAIN_KEYS},
    )
    return Variant(name="pretrain", model=model, train=train)


def run_id(variant: Variant, params: Params) -> str:
    """Identifies a pretraining run (its checkpoint is resumed only by the same run)."""
    blob = json.dumps(
        {
            "variant": variant.to_dict(),
            "pretrain": dataclasses.asdict(params.pretrain),
            "backbone": dataclasses.asdict(params.backbone),
            "demo": dataclasses.asdict(params.demo),
            "data": dataclasses.asdict(params.data),
        },
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_trainer(
    params: Params,
    corpus: PretrainCorpus,
    init_dir: Path,
    state_dir: Path,
    progress: bool = False,
) -> Trainer:
    """The randomly initialised backbone written to ``init_dir`` (its vocabulary learned from
    the corpus's reports) and a Trainer over the corpus, one held-out part for validation."""
    write_demo_backbone(init_dir, sorted(set(corpus.split.texts)), params.backbone)
    variant = pretrain_variant(params, f"local-dir:{init_dir}")
    backbone = load_backbone(variant.model.backbone)
    pre = params.pretrain
    train_rows, held_rows = holdout(corpus.split, pre.holdout_fraction, pre.seed)
    pixels = torch.from_numpy(corpus.pixels)
    sentences = pre.text_sampling == "sentence"
    train = Data.in_memory(corpus.split.subset(train_rows), pixels[train_rows], backbone, sentences)
    if pre.max_text_tokens:
        sep = int(backbone.tokenizer.tokenizer.sep_token_id)
        cut = truncate_tokens(train.tokens, pre.max_text_tokens, backbone.pad_id, sep)
        train = dataclasses.replace(train, tokens=cut)
    val = Data.in_memory(corpus.split.subset(held_rows), pixels[held_rows], backbone)
    trainer = Trainer(
        variant,
        train,
        val,
        backbone,
        state_dir,
        run_id(variant, params),
        resolve_device(variant.train.device),
        progress,
    )
    return trainer


def truncate_tokens(tokens: torch.Tensor, n: int, pad_id: int, sep_id: int) -> torch.Tensor:
    """(T, L) token rows cut to their first ``n`` tokens; a row that had more ends with
    [SEP] at position n - 1, as the tokenizer ends a row it truncates."""
    if n >= tokens.shape[1]:
        return tokens
    out = tokens[:, :n].clone()
    longer = (tokens[:, n:] != pad_id).any(dim=1)
    out[longer, n - 1] = sep_id
    return out


def load_best(trainer: Trainer) -> None:
    """Load the best epoch's weights (by the held-out combined metric) into the trainer."""
    from safetensors.torch import load_model

    load_model(trainer.model, str(trainer.best_path), device=str(trainer.device))


def write_pretrained(out: Path, init_dir: Path, trainer: Trainer, record: dict[str, Any]) -> None:
    """``out``: the init folder (configs, tokenizer) with the trained weights and a record of
    how they were made, written atomically."""
    from safetensors.torch import save_file

    clip = trainer.model.clip
    state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
    with atomic_path(out) as tmp:
        shutil.copytree(init_dir, tmp)
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def summary(state: TrainState) -> dict[str, Any]:
    """The pretraining curve's ends and the best epoch, for the stage's metrics file."""
    best = state.history[state.best_epoch - 1]
    return {
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "train_loss_first_epoch": round(state.history[0]["train_total"], 6),
        "train_loss_last_epoch": round(state.history[-1]["train_total"], 6),
        "holdout_loss": round(best["val_total"], 6),
        "holdout_mean_recall": round(best["val_mean_recall"], 6),
        "holdout_mean_auc": round(best["val_mean_auc"], 6),
    }


def pretrain_backbone(
    params: Params,
    splits: dict[str, Split],
    demo_val: Callable[[str], Data] | None,
    out: Path,
    state_dir: Path,
    log_dir: Path | None,
    workers: int,
    progress: bool = False,
) -> tuple[dict[str, Any], TrainState]:
    """Build the corpus, check it is disjoint from ``splits``, CLIP-train, write ``out``.

    Returns the metrics (corpus counts, the curve's ends, and, with ``demo_val``, zero-shot
    AUC and
    retrieval there before any fine-tuning) and the training state (the curves).
    ``demo_val(spec)`` builds that split for the backbone ``spec`` (its tokenizer).
    """
    corpus = build_corpus(params, workers)
    shared = check_disjoint(corpus.split, splits, "pretraining corpus")
    init_dir = state_dir / "init"
    trainer = make_trainer(params, corpus, init_dir, state_dir / "train", progress)
    if log_dir is None:
        state = trainer.run()
    else:
        with EpochLog(log_dir) as log:
            state = trainer.run(on_epoch=log.log)
    load_best(trainer)
    metrics: dict[str, Any] = {
        "corpus_images": len(corpus.split),
        "corpus_patients": len(np.unique(corpus.split.subject)),
        "corpus_reports": len(set(corpus.split.texts)),
        "dropped": corpus.dropped,
        "patients_shared_with_master": shared,
        **summary(state),
    }
    if demo_val is not None:
        trainer.val_data = demo_val(trainer.v.model.backbone)
        scores = trainer.validate()
        metrics["demo_val_zero_shot_mean_auc"] = round(scores["val_mean_auc"], 6)
        metrics["demo_val_mean_recall"] = round(scores["val_mean_recall"], 6)
    record = {"pretrain": dataclasses.asdict(params.pretrain), "metrics": metrics}
    write_pretrained(out, init_dir, trainer, record)
    return metrics, state


def skip_record(out: Path, backbone: str) -> dict[str, Any]:
    """Real runs fine-tune ``model.backbone`` itself: ``out`` only records that the demo
    backbone was not built (DVC still needs the output), and why."""
    reason = f"model.backbone = {backbone!r} is not the demo backbone"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / RECORD).write_text(json.dumps({"skipped": reason}) + "\n", encoding="utf-8")
    return {"skipped": reason}
