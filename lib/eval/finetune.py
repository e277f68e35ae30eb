"""ConVIRT's fine-tuning evaluation (``eval.finetune``, off by default): a model's image
encoder plus a linear head, trained on the CheXpert labels of the train subsamples the linear
probe uses (1 / 10 / 100 %: ``eval.finetune_fractions``), scored on the test split.

Protocol, beside the linear probe (lib/eval/probe.py), which keeps the encoder frozen:
- Encoder: the image trunk with its projection heads removed, as ConVIRT evaluates: the
  pooled trunk feature that open_clip's visual head would project, (B, W), then
  ``Linear(W, 14)``. The whole ViT runs (C–E's masks and E's token drop are training devices
  of the alignment, not part of the encoder), so the variants differ only in how their
  trunks were trained. Each fraction starts again from the trained weights.
- Rows: :func:`lib.eval.probe.subsample` with ``eval.seed``: the same nested rows as the
  probe at the same fraction.
- Training: every parameter, AdamW at ``eval.finetune_lr`` (weight decay 0.01), batches of
  ``eval.finetune_batch_size`` drawn by a seeded permutation per epoch, for
  ``eval.finetune_epochs`` epochs; binary cross-entropy per label over its defined entries
  (−1, ignored, is left out). AMP on CUDA as in training.
- Selection: after each epoch the validation mean AUC (labels defined on val); the epoch with
  the best one gives the test scores (logits).

Deterministic on the CPU for a given seed. Selection costs a pass over val every epoch, and
over test whenever val improves.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.config.params import EvalParams
from lib.data.images import to_model_input
from lib.data.master import Split
from lib.data.mimic import LABELS
from lib.data.pack import PackedPixels
from lib.device import autocast_and_scaler
from lib.errors import DataError
from lib.eval.embed_model import Trained, load_trained
from lib.eval.embedding_files import FINETUNE_FILE, FINETUNE_META
from lib.eval.metrics import IGNORE_LABEL, auc_per_label
from lib.eval.probe import fraction_key, subsample

WEIGHT_DECAY = 0.01

Pixels = Tensor | PackedPixels


class EncoderClassifier(nn.Module):
    """The trained image trunk (projection heads removed) + a linear head: (B, 3, H, W) →
    (B, C) logits."""

    def __init__(self, trunk: nn.Module, n_labels: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(int(trunk.num_features), n_labels)

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.trunk.forward_head(self.trunk.forward_features(images))  # (B, W)
        return self.head(pooled)


@dataclass(frozen=True)
class FinetuneRun:
    """One fraction's fine-tuning: its sizes, the epoch kept and that epoch's test logits."""

    key: str  # fraction key, "1pct"
    fraction: float
    n_train: int
    epochs: int
    best_epoch: int
    val_mean_auc: float | None  # at best_epoch
    test_scores: np.ndarray  # (N_test, 14) float32 logits

    def meta(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("test_scores")
        return out


def masked_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy over the defined entries of (B, C) labels (1 / 0 / −1);
    0 for a batch with none."""
    defined = labels != IGNORE_LABEL
    target = (labels == 1).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (loss * defined).sum() / defined.sum().clamp_min(1)


@torch.no_grad()
def predict(model: nn.Module, pixels: Pixels, trained: Trained, batch_size: int) -> np.ndarray:
    """(N, C) float32 logits of uint8 (N, S, S) images, in eval mode."""
    model.eval()
    autocast = autocast_and_scaler(trained.device, trained.variant.train.use_amp)[0]
    bb, out = trained.backbone, []
    for start in range(0, len(pixels), batch_size):
        x = to_model_input(pixels[start : start + batch_size].to(trained.device), bb.mean, bb.std)
        with autocast():
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), np.float32)


def finetune_fraction(
    trained: Trained,
    pixels: Mapping[str, Pixels],
    labels: Mapping[str, np.ndarray],
    fraction: float,
    params: EvalParams,
) -> FinetuneRun:
    """Fine-tune a fresh copy of ``trained``'s image trunk + a linear head on ``fraction`` of
    the train split (``pixels`` / ``labels`` by split: train, val, test)."""
    rows = subsample(len(pixels["train"]), fraction, params.seed)
    train_y = torch.from_numpy(np.asarray(labels["train"])[rows].astype(np.int64))
    if not bool((train_y != IGNORE_LABEL).any()):
        raise DataError(
            f"fine-tuning at {fraction:g} of train: the {len(rows)} images drawn have no "
            "defined label; raise eval.finetune_fractions or use a label_policy that keeps "
            "labels"
        )
    device = trained.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(params.seed)
        trunk = copy.deepcopy(trained.model.clip.visual.trunk).float()
        model = EncoderClassifier(trunk, len(LABELS)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=params.finetune_lr, weight_decay=WEIGHT_DECAY)
    autocast, scaler = autocast_and_scaler(device, trained.variant.train.use_amp)
    gen = torch.Generator().manual_seed(params.seed)
    bb, bs = trained.backbone, params.finetune_batch_size
    best: tuple[float, int, np.ndarray] | None = None
    for epoch in range(1, params.finetune_epochs + 1):
        model.train()
        order = torch.randperm(len(rows), generator=gen)
        for start in range(0, len(rows), bs):
            pick = order[start : start + bs]
            x = to_model_input(pixels["train"][rows[pick.numpy()]].to(device), bb.mean, bb.std)
            with autocast():
                loss = masked_bce(model(x), train_y[pick].to(device))
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        val = auc_per_label(predict(model, pixels["val"], trained, bs), labels["val"], LABELS)
        score = -np.inf if val["mean_auc"] is None else val["mean_auc"]
        if best is None or score > best[0]:
            best = (score, epoch, predict(model, pixels["test"], trained, bs))
    assert best is not None  # finetune_epochs >= 1 (validated)
    return FinetuneRun(
        key=fraction_key(fraction),
        fraction=fraction,
        n_train=len(rows),
        epochs=params.finetune_epochs,
        best_epoch=best[1],
        val_mean_auc=None if best[0] == -np.inf else float(best[0]),
        test_scores=best[2].astype(np.float32),
    )


def finetune_all(
    trained: Trained,
    splits: Mapping[str, Split],
    pixels_of: Callable[[Split], Pixels],
    params: EvalParams,
    model_dir: Path,
) -> dict[str, FinetuneRun]:
    """Every fraction of ``eval.finetune_fractions``, each from the trained weights: those
    of ``trained`` when they are float32, else reloaded in float32 from ``model_dir``
    (inference may run on bf16 weights)."""
    if trained.dtype != torch.float32:
        trained = load_trained(model_dir, str(trained.device), torch.float32)
    names = ("train", "val", "test")
    pixels = {s: pixels_of(splits[s]) for s in names}
    labels = {s: splits[s].labels for s in names}
    runs = [
        finetune_fraction(trained, pixels, labels, f, params) for f in params.finetune_fractions
    ]
    return {r.key: r for r in runs}


def save_runs(folder: Path, runs: Mapping[str, FinetuneRun]) -> None:
    """finetune.npz (test logits by fraction key) and finetune.json (the rest) in ``folder``."""
    np.savez(folder / FINETUNE_FILE, **{k: r.test_scores for k, r in runs.items()})
    meta = {k: r.meta() for k, r in runs.items()}
    (folder / FINETUNE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
