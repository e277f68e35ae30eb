"""Staged training of one variant (the spec's "Training Strategy").

Phase 1 trains heads and ``logit_scale`` with the backbones frozen at ``train.warmup_lr``;
phase 2 trains everything at ``train.lr`` with layer-wise lr decay and a cosine schedule
with linear warm-up. Each epoch ends with validation (loss, Recall@K, zero-shot AUC and
their combined metric), early stopping, and a resumable checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_model
from tqdm import tqdm

from lib.config.variants import Variant
from lib.data.images import load_images, to_model_input
from lib.data.master import Split, first_per_study
from lib.data.mimic import LABELS
from lib.data.pack import Pack, PackedPixels
from lib.data.reports import split_sentences
from lib.device import autocast_and_scaler, peak_memory, resolve_device
from lib.errors import PipelineError
from lib.eval.metrics import (
    auc_per_label,
    combined_metric,
    label_prompts,
    retrieval_metrics,
    zero_shot_scores,
)
from lib.io import atomic_path
from lib.model.backbone import Backbone, load_backbone
from lib.model.build import build_model
from lib.model.losses import MAX_LOGIT_SCALE, compute_losses
from lib.model.patch_ib import trim_padding
from lib.train.augment import (
    SENTENCES,
    apply_draws,
    augment_generator,
    batch_generator,
    draw,
    is_active,
)
from lib.train.batches import study_aware_batches
from lib.train.distributed import DistInfo, gather_outputs, init_distributed, shard_batch
from lib.train.live import EpochLog
from lib.train.optim import adamw, param_groups, warmup_cosine_scheduler

# An epoch whose train InfoNCE is within this fraction of its collapsed value is flagged.
COLLAPSE_TOLERANCE = 0.01


class TrainingError(PipelineError):
    """Training cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


class LossWatch:
    """Finds an epoch's first non-finite loss without reading the loss back every step.

    On a GPU, ``float(loss)`` or ``if not isfinite(loss)`` each step makes the host wait for
    the device, so the next step's kernels are not queued while this one runs. The watch
    keeps the first bad batch's index and loss terms on the device and is read every
    ``every`` batches and at the epoch's end (on the CPU every batch: reading is free
    there). Steps taken after a NaN only touch weights that are thrown away: the stop
    comes before the epoch's checkpoint is written, so the last good one is kept.
    """

    CUDA_EVERY = 50

    def __init__(self, device: torch.device) -> None:
        self.every = self.CUDA_EVERY if device.type == "cuda" else 1
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.terms: torch.Tensor | None = None
        self.names: list[str] = []

    def update(self, batch: int, losses: dict[str, torch.Tensor]) -> None:
        self.names = list(losses)
        values = torch.stack([v.detach().float() for v in losses.values()])
        new = ~torch.isfinite(losses["total"].detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(new, batch, self.first_bad)
        self.terms = values if self.terms is None else torch.where(new, values, self.terms)

    def check(self, model: str, epoch: int, state_dir: Path) -> None:
        """Raise TrainingError if a loss so far was not finite (the same on every rank: the
        loss is the global batch's)."""
        bad = int(self.first_bad)
        if bad < 0:
            return
        terms = dict(zip(self.names, self.terms.tolist(), strict=True))
        raise TrainingError(
            f"{model}: loss became {terms['total']} at epoch {epoch + 1}, batch {bad + 1} "
            f"({terms}); the last good checkpoint is kept in {state_dir}. Lower train.lr / "
            "train.warmup_lr or check the data"
        )


@dataclass
class TrainState:
    """What a resumed run needs besides weights and optimizer state."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    lr_history: list[list[float]] = field(default_factory=list)  # [step, lr]


def phase_of(epoch: int, variant: Variant) -> int:
    t = variant.train
    return 1 if t.staged_training and epoch < t.warmup_epochs else 2


def fingerprint(variant: Variant, master: Path) -> str:
    """Identifies a run: a checkpoint is resumed only by the run that wrote it."""
    st = master.stat()
    blob = json.dumps(variant.to_dict(), sort_keys=True) + f"|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Data:
    """A split in memory: images decoded once, texts tokenized once."""

    pixels: torch.Tensor | PackedPixels  # (N, S, S) uint8; pixels[idx] -> tensor
    tokens: torch.Tensor  # (T, L) long, one row per unique text
    text_of: torch.Tensor  # (N,) index into tokens
    split: Split
    # With sentences (train.text_sampling: sentence): every sentence of every unique text,
    # tokenized, (S, L) long, and each text's (first row, count) in it, (T, 2) long.
    sentence_tokens: torch.Tensor | None = None
    sentence_span: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        split: Split,
        root: Path,
        backbone: Backbone,
        threads: int = 4,
        pack: Pack | None = None,
        sentences: bool = False,
    ) -> Data:
        """From the pack (memory-mapped; the split must be ``pack.usable``) or, without one,
        by decoding the JPEGs under ``root``; ``sentences`` also tokenizes each sentence."""
        if pack is not None:
            pixels = pack.pixels(split, backbone.image_size)
        else:
            pixels = load_images(root, split.images, backbone.image_size, threads)
        return cls.in_memory(split, pixels, backbone, sentences)

    @classmethod
    def in_memory(
        cls,
        split: Split,
        pixels: torch.Tensor | PackedPixels,
        backbone: Backbone,
        sentences: bool = False,
    ) -> Data:
        """From pixels already at hand, (N, S, S) uint8 aligned with ``split``."""
        unique = sorted(set(split.texts))
        index = {t: i for i, t in enumerate(unique)}
        tokens = backbone.tokenizer(unique) if unique else torch.zeros(0, 1, dtype=torch.long)
        text_of = torch.tensor([index[t] for t in split.texts], dtype=torch.long)
        data = cls(pixels=pixels, tokens=tokens, text_of=text_of, split=split)
        if not sentences:
            return data
        # A text without a sentence end is one sentence; one with no word stays whole (QC
        # has already dropped reports shorter than data.min_report_chars).
        pieces = [split_sentences(t) or [t] for t in unique]
        flat = [p for ps in pieces for p in ps]
        counts = torch.tensor([len(ps) for ps in pieces], dtype=torch.long)
        starts = torch.cumsum(counts, 0) - counts
        data.sentence_tokens = backbone.tokenizer(flat) if flat else torch.zeros(0, 1).long()
        data.sentence_span = torch.stack([starts, counts], dim=1)
        return data


class Trainer:
    """Trains one variant; ``run()`` resumes from ``state_dir`` when it holds this run's state."""

    def __init__(
        self,
        variant: Variant,
        train: Data,
        val: Data,
        backbone: Backbone,
        state_dir: Path,
        run_id: str,
        device: torch.device,
        progress: bool = False,
        dist_info: DistInfo | None = None,
    ) -> None:
        self.v, self.tp, self.mp = variant, variant.train, variant.model
        # Under torchrun: this process's rank. Every rank runs the same global batches and
        # encodes its shard; the outputs are gathered so the loss sees the global batch
        # (lib/train/distributed.py); rank 0 validates and writes.
        self.dist = dist_info or DistInfo()
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.train_data, self.val_data, self.backbone = train, val, backbone
        self.state_dir, self.run_id, self.device, self.progress = (
            state_dir,
            run_id,
            device,
            progress,
        )
        torch.manual_seed(self.tp.seed)  # initialises the new heads identically every run
        # The model trains the backbone's modules in place: give it its own copy, so a
        # Backbone can be shared (e.g. between variants or runs in one process).
        own = dataclasses.replace(backbone, clip=copy.deepcopy(backbone.clip))
        self.model = build_model(own, variant.model).to(device)
        if self.dist.distributed and self.tp.batch_size % self.dist.world_size:
            raise TrainingError(
                f"train.batch_size = {self.tp.batch_size} is the global batch; it must be a "
                f"multiple of the {self.dist.world_size} ranks"
            )
        self.autocast, self.scaler = autocast_and_scaler(device, self.tp.use_amp)
        self.losses_of = torch.compile(self._losses_of) if self.tp.compile else self._losses_of
        self.state = TrainState()
        self.images_seen, self.train_seconds = 0, 0.0

    # ----------------------------------------------------------------- optimisation
    def steps_per_epoch(self) -> int:
        n = len(self.train_data.split) // self.tp.batch_size
        return max(1, math.ceil(n / self.tp.gradient_accumulation_steps))

    def make_optimizer(self, phase: int) -> tuple[torch.optim.Optimizer, Any]:
        t = self.tp
        self.model.set_backbone_frozen(phase == 1)
        if self.dist.distributed:
            # Built after freezing: DDP reduces exactly the parameters that require grad
            # now, so a phase change needs a new wrapper.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if phase == 1:
            groups = param_groups(self.model, t.warmup_lr, t.weight_decay, llrd_factor=1.0)
            opt = adamw(groups, t.warmup_lr, self.device)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        else:
            groups = param_groups(self.model, t.lr, t.weight_decay, t.llrd_factor)
            opt = adamw(groups, t.lr, self.device)
            first = t.warmup_epochs if t.staged_training else 0
            total = (t.epochs - first) * self.steps_per_epoch()
            # A demo-sized run can have fewer steps than train.warmup_steps: warm up over at
            # most half of phase 2 then, rather than never reaching the base rate.
            warmup = min(t.warmup_steps, total // 2)
            sched = warmup_cosine_scheduler(opt, total, warmup)
        return opt, sched

    # ----------------------------------------------------------------- checkpoints
    @property
    def last_path(self) -> Path:
        return self.state_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.state_dir / "best.safetensors"

    def save_checkpoint(self, opt: torch.optim.Optimizer, sched: Any) -> None:
        if not self.dist.is_main:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "run_id": self.run_id,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "state": json.dumps(self.state.__dict__),
        }
        with atomic_path(self.last_path) as tmp:
            torch.save(payload, tmp)

    def try_resume(self) -> tuple[torch.optim.Optimizer, Any] | None:
        if not self.last_path.is_file():
            return None
        payload = torch.load(self.last_path, map_location=self.device, weights_only=True)
        if payload.get("run_id") != self.run_id:
            return None  # another config or another master file: start over
        self.model.load_state_dict(payload["model"])
        self.state = TrainState(**json.loads(payload["state"]))
        opt, sched = self.make_optimizer(phase_of(self.state.epoch, self.v))
        if phase_of(max(self.state.epoch - 1, 0), self.v) == phase_of(self.state.epoch, self.v):
            opt.load_state_dict(payload["optimizer"])
            sched.load_state_dict(payload["scheduler"])
        return opt, sched

    def save_best(self) -> None:
        # save_model handles tensors shared between modules (logit_scale is also clip's).
        if not self.dist.is_main:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.best_path) as tmp:
            save_model(self.model, str(tmp))

    # ----------------------------------------------------------------- loops
    def batches(
        self, data: Data, idx: np.ndarray, train_at: tuple[int, int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs of images ``idx``; ``train_at`` = (epoch, batch index, global batch
        size) marks a training batch (nothing else passes it): its images are augmented
        (``train.augment``) and, with ``train.text_sampling: sentence``, each report is one
        of its sentences."""
        index = torch.as_tensor(idx)
        pixels = data.pixels[index]  # uint8: 4× fewer bytes to the device than float
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        pixels = pixels.to(self.device, non_blocking=True)
        if train_at is not None and is_active(self.tp.augment):
            x = self.augment(pixels, *train_at)
        else:
            x = to_model_input(pixels, self.backbone.mean, self.backbone.std)
        texts = data.text_of[index]
        if train_at is not None and self.tp.text_sampling == "sentence":
            tok = data.sentence_tokens[self.sentence_rows(data, texts, *train_at)]
        else:
            tok = data.tokens[texts]
        tok = trim_padding(tok, self.backbone.pad_id)
        return x, tok.to(self.device, non_blocking=True)

    def sentence_rows(
        self, data: Data, texts: torch.Tensor, epoch: int, i: int, n_global: int
    ) -> torch.Tensor:
        """Rows of ``data.sentence_tokens``: one sentence of each text, drawn uniformly for
        the whole global batch from (seed, epoch, batch), this rank's shard taken (as the
        augmentation's draws), so a resumed or distributed run draws the same."""
        if data.sentence_tokens is None or data.sentence_span is None:
            raise ValueError("train.text_sampling: sentence needs Data built with sentences")
        u = torch.rand(n_global, generator=batch_generator(self.tp.seed, epoch, i, SENTENCES))
        start = self.dist.rank * len(texts) if self.ddp is not None else 0
        span = data.sentence_span[texts]  # (b, 2): first row, count
        pick = (u[start : start + len(texts)] * span[:, 1]).long().clamp_max(span[:, 1] - 1)
        return span[:, 0] + pick

    def augment(self, pixels: torch.Tensor, epoch: int, i: int, n_global: int) -> torch.Tensor:
        """uint8 (b, S, S) on the device → augmented, normalised float (b, 3, S, S).

        The draws are made for the whole global batch from (seed, epoch, batch) and this
        rank takes its shard's rows, so every image gets the same augmentation whatever the
        number of ranks, and a resumed run the same as an uninterrupted one."""
        draws = draw(self.tp.augment, n_global, augment_generator(self.tp.seed, epoch, i))
        if self.ddp is not None:
            start = self.dist.rank * len(pixels)
            draws = draws.rows(start, start + len(pixels))
        x = pixels.float().div_(255).unsqueeze(1)  # (b, 1, S, S) in [0, 1]: grey, one channel
        x = apply_draws(x, self.tp.augment, draws).expand(-1, 3, -1, -1)
        # As lib.data.images.to_model_input, on the augmented [0, 1] batch.
        mean = torch.tensor(self.backbone.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.backbone.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def train_epoch(self, epoch: int, opt: torch.optim.Optimizer, sched: Any) -> dict[str, float]:
        t = self.tp
        self.model.train()
        # Dropout draws: the same on resume; another stream on each rank.
        torch.manual_seed(t.seed * 100_003 + epoch + 1_000_003 * self.dist.rank)
        batches = study_aware_batches(self.train_data.split.study, t.batch_size, t.seed, epoch)
        sums: dict[str, torch.Tensor] = {}
        watch = LossWatch(self.device)
        opt.zero_grad(set_to_none=True)
        start = time.perf_counter()
        bar = tqdm(
            batches,
            desc=f"{self.v.name} epoch {epoch + 1}/{t.epochs}",
            leave=False,
            disable=not self.progress,
            unit="batch",
        )
        for i, idx in enumerate(bar):
            last = i + 1 == len(batches)
            step = (i + 1) % t.gradient_accumulation_steps == 0 or last
            local = shard_batch(idx, self.dist.rank, self.dist.world_size) if self.ddp else idx
            x, tok = self.batches(self.train_data, local, train_at=(epoch, i, len(idx)))
            # Gradients are reduced across ranks only on the micro-batch that steps.
            sync = contextlib.nullcontext() if step or self.ddp is None else self.ddp.no_sync()
            with sync:
                total, losses = self.forward_loss(x, tok)
                loss = total / t.gradient_accumulation_steps
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            watch.update(i, losses)
            if last or (i + 1) % watch.every == 0:
                watch.check(f"model {self.v.name}", epoch, self.state_dir)
            if step:
                self.optimizer_step(opt, sched)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            self.images_seen += len(idx)  # the global batch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - start
        return {f"train_{k}": float(v) / max(len(batches), 1) for k, v in sums.items()}

    def forward_loss(
        self, x: torch.Tensor, tok: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one (micro-)batch; under DDP, of the global batch gathered from all ranks."""
        with self.autocast():
            module = self.ddp if self.ddp is not None else self.model
            losses = self.losses_of(module, x, tok)
        return losses["total"], losses

    def _losses_of(
        self, module: torch.nn.Module, x: torch.Tensor, tok: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The model's forward and the variant's losses: what ``train.compile`` compiles."""
        if self.ddp is not None:
            img, txt = gather_outputs(*module(x, tok))
        else:
            img, txt = module(x, tok)
        return compute_losses(img, txt, self.model.logit_scale, self.mp)

    def optimizer_step(self, opt: torch.optim.Optimizer, sched: Any) -> None:
        if self.scaler:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.state.step += 1
        self.state.lr_history.append([self.state.step, opt.param_groups[0]["lr"]])

    @torch.no_grad()
    def embed(self, data: Data) -> tuple[torch.Tensor, torch.Tensor]:
        """Global image embeddings (N, d) and text embeddings of each unique text (T, d)."""
        self.model.eval()
        bs = self.tp.eval_batch_size
        imgs, txts = [], []
        for s in range(0, len(data.split), bs):
            idx = torch.arange(s, min(s + bs, len(data.split)))
            x = to_model_input(data.pixels[idx], self.backbone.mean, self.backbone.std)
            with self.autocast():
                imgs.append(self.model.encode_image(x.to(self.device)).global_emb.float().cpu())
        for s in range(0, len(data.tokens), bs):
            with self.autocast():
                tok = trim_padding(data.tokens[s : s + bs], self.backbone.pad_id)
                out = self.model.encode_text(tok.to(self.device))
            txts.append(out.global_emb.float().cpu())
        return torch.cat(imgs), torch.cat(txts)

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(14, d) text embeddings of one prompt per label."""
        with self.autocast():
            out = self.model.encode_text(self.backbone.tokenizer(prompts).to(self.device))
        return out.global_emb.float().cpu()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        data, t = self.val_data, self.tp
        self.model.eval()
        # Validation loss on fixed study-aware batches (same every epoch).
        losses: dict[str, float] = {}
        batches = study_aware_batches(
            data.split.study, t.batch_size, t.seed, 10**6, drop_last=False
        )
        batches = [b for b in batches if len(b) > 1]
        for idx in batches:
            x, tok = self.batches(data, idx)
            with self.autocast():
                img, txt = self.model(x, tok)
                for k, v in compute_losses(img, txt, self.model.logit_scale, self.mp).items():
                    losses[k] = losses.get(k, 0.0) + float(v) / len(batches)
        image_emb, text_emb = self.embed(data)
        # One text candidate per study (the study's report).
        rows = first_per_study(data.split.study)
        study_text = text_emb[data.text_of[rows]]
        retrieval = retrieval_metrics(
            image_emb,
            data.split.study,
            study_text,
            data.split.study[rows],
            [data.split.texts[i] for i in rows],
        )
        positive, negative = label_prompts(
            t.val_prompt_template, t.val_negative_prompt_template, t.val_no_finding_prompts
        )
        prompt_emb = self.embed_prompts(positive)
        neg_emb = self.embed_prompts(negative) if negative is not None else None
        scores = zero_shot_scores(image_emb, prompt_emb, neg_emb)
        auc = auc_per_label(scores, data.split.labels, LABELS)
        out = {f"val_{k}": v for k, v in losses.items()}
        out.update({f"val_{k}": float(v) for k, v in retrieval.items()})
        if auc["mean_auc"] is None:
            # No label has both classes in val: the combined metric is recall alone (an
            # undefined AUC is never counted as 0.5).
            out["val_mean_auc"] = float("nan")
            out["val_combined"] = combined_metric(retrieval["mean_recall"], None, 1.0)
        else:
            out["val_mean_auc"] = float(auc["mean_auc"])
            out["val_combined"] = combined_metric(
                retrieval["mean_recall"], auc["mean_auc"], t.recall_weight
            )
        return out

    def validate_on_main(self) -> dict[str, float]:
        """validate() on rank 0, its result sent to every rank (the same early stopping)."""
        if not self.dist.distributed:
            return self.validate()
        box = [self.validate() if self.dist.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def run(self, on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainState:
        """Train to the end (or early stop); ``on_epoch`` sees each epoch's history row, the
        rows of a resumed run's earlier epochs first."""
        resumed = self.try_resume()
        opt, sched = resumed if resumed else self.make_optimizer(phase_of(0, self.v))
        t = self.tp
        for row in self.state.history if on_epoch else ():
            on_epoch(row)
        if resumed and self.dist.is_main:
            print(
                f"train@{self.v.name}: resuming after epoch {self.state.epoch} of {t.epochs} "
                f"from {self.last_path}",
                file=sys.stderr,
                flush=True,
            )
        epochs = tqdm(
            range(self.state.epoch, t.epochs),
            desc=f"train@{self.v.name}",
            unit="epoch",
            initial=self.state.epoch,
            total=t.epochs,
            disable=not self.progress,
        )
        for epoch in epochs:
            if self.state.stopped_early:
                break
            if epoch > 0 and phase_of(epoch, self.v) != phase_of(epoch - 1, self.v):
                opt, sched = self.make_optimizer(phase_of(epoch, self.v))
            row = {"epoch": epoch + 1, "phase": phase_of(epoch, self.v)}
            row.update(self.train_epoch(epoch, opt, sched))
            row.update(self.validate_on_main())
            row["lr"] = opt.param_groups[0]["lr"]
            # The first epoch averages over the start and the LR warm-up; from the second on,
            # an InfoNCE still at its all-alike value means the model learns nothing.
            row["collapsed"] = float(epoch > 0 and self.is_collapsed(row["train_clip"]))
            if row["collapsed"] and self.dist.is_main:
                print(
                    f"train@{self.v.name}: WARNING epoch {epoch + 1}: train InfoNCE "
                    f"{row['train_clip']:.4f} is within {COLLAPSE_TOLERANCE:.0%} of "
                    f"{self.collapse_level():.4f}, its value when all embeddings are alike "
                    "(collapsed); lower train.lr / train.warmup_lr or check the data",
                    file=sys.stderr,
                    flush=True,
                )
            self.state.history.append(row)
            self.state.epoch = epoch + 1
            if row["val_combined"] > self.state.best_metric:
                self.state.best_metric, self.state.best_epoch = row["val_combined"], epoch + 1
                self.state.bad_epochs = 0
                self.save_best()
            else:
                self.state.bad_epochs += 1
                self.state.stopped_early = self.state.bad_epochs >= t.patience
            self.save_checkpoint(opt, sched)
            if on_epoch:
                on_epoch(row)
            epochs.set_postfix(combined=f"{row['val_combined']:.3f}", best=self.state.best_epoch)
        return self.state

    def collapse_level(self) -> float:
        """The contrastive loss of a model whose embeddings are all alike: ln(batch) in each
        direction, weighted as the loss weights them."""
        m = self.mp
        return (m.contrastive_weight_i2t + m.contrastive_weight_t2i) * math.log(self.tp.batch_size)

    def is_collapsed(self, train_clip: float) -> bool:
        return train_clip >= (1 - COLLAPSE_TOLERANCE) * self.collapse_level()

    def efficiency(self) -> dict[str, float | str]:
        return {
            "train_images_per_second": round(self.images_seen / max(self.train_seconds, 1e-9), 1),
            **peak_memory(self.device),
            "device": str(self.device),
        }


def train_variant(
    variant: Variant,
    master: Path,
    splits: dict[str, Split],
    data_root: Path,
    state_dir: Path,
    progress: bool = False,
    pack: Pack | None = None,
    live_dir: Path | None = None,
) -> tuple[Trainer, TrainState]:
    """Load the backbone and the data (from the pack when given), then train (resuming if
    possible). Images the pack could not decode are left out. With ``live_dir``, rank 0
    logs every epoch there through DVCLive (lib/train/live.py)."""
    device = resolve_device(variant.train.device)
    info = init_distributed(device.type)  # rank 0 of 1 unless launched by torchrun
    if info.distributed and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    backbone = load_backbone(variant.model.backbone, device=device)
    threads = variant.train.num_workers
    if pack is not None:
        splits = {name: pack.usable(split) for name, split in splits.items()}
    sentences = variant.train.text_sampling == "sentence"
    train = Data.build(splits["train"], data_root, backbone, threads, pack, sentences)
    val = Data.build(splits["val"], data_root, backbone, threads, pack)
    trainer = Trainer(
        variant,
        train,
        val,
        backbone,
        state_dir,
        fingerprint(variant, master),
        device,
        progress and info.is_main,
        info,
    )
    if live_dir is None or not info.is_main:
        return trainer, trainer.run()
    with EpochLog(live_dir) as log:
        return trainer, trainer.run(on_epoch=log.log)
