"""Building blocks for multi-GPU training with torchrun and DistributedDataParallel (DDP).

One optimizer step on W ranks (processes, one GPU each) and a global batch of B = W·b images:

1. every rank computes the same global study-aware batches from (seed, epoch) with
   ``lib.train.batches.study_aware_batches``; ``shard_batch`` gives rank r the rows
   r·b … (r+1)·b − 1;
2. the DDP-wrapped model encodes the rank's shard (b rows);
3. ``gather_outputs`` all-gathers the outputs in rank order, so every rank holds the global
   batch's outputs, rows in the order a single process would have them;
4. every rank runs ``compute_losses`` on the gathered outputs: all negatives of the global
   batch take part, and each rank's loss *equals* the single-process loss L of that batch;
5. ``loss.backward()`` on every rank, without rescaling (see "Gradients" below), and DDP
   averages the parameter gradients: the result is the single-process gradient of L.

Gradients. Write y_r for rank r's outputs and θ for the parameters (one copy per rank, kept
equal by DDP). The backward of the autograd-aware all-gather is a reduce-scatter (sum): rank r
receives Σ_s ∂L_s/∂y_r over the losses L_s of all ranks s, and since every L_s is the same L,
that is W·∂L/∂y_r. Rank r's parameter gradient is therefore W·(∂L/∂y_r)(∂y_r/∂θ) plus the
direct term ∂L/∂θ of parameters the loss uses outside the encoders (``logit_scale``), which
every rank computes in full. DDP divides the sum over ranks by W:

    (1/W)·Σ_r [W·(∂L/∂y_r)(∂y_r/∂θ) + ∂L/∂θ|direct] = Σ_r (∂L/∂y_r)(∂y_r/∂θ) + ∂L/∂θ|direct
                                                    = dL/dθ,

the single-process gradient exactly: the factor W of the all-gather's backward cancels DDP's
1/W. So back-propagate ``total`` as a single process would (divided by the gradient
accumulation steps, nothing else); multiplying or dividing it by W would be wrong.
``tests/train/test_distributed.py`` checks the loss and every parameter gradient against a single
process on two CPU ranks.

Wiring into a trainer (each point matters for correctness, not just speed):
- wrap in DDP *after* ``set_backbone_frozen`` and re-wrap at every phase change: DDP reduces
  only the parameters that required grad when it was built, so backbone weights unfrozen
  later keep per-rank gradients and the ranks silently drift apart (and weights frozen later
  make the next step fail with "Expected to have finished reduction");
- ``logit_scale``, ``encode_image`` / ``encode_text``, checkpoints: use ``ddp.module``; only
  ``DistInfo.is_main`` writes files;
- mix the rank into the dropout seed (``train_epoch``'s ``torch.manual_seed``), else every
  shard draws the same dropout masks;
- gradient accumulation: ``ddp.no_sync()`` on all but the last micro-batch;
- a partial batch (validation's ``drop_last=False``) does not shard: evaluate it on the
  unwrapped model.

The cost: every rank computes the full (B, B) losses, including the local alignment's
B·B·L·N attention, so that loss does not get cheaper per rank as W grows; only the encoders'
work is split.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor

from lib.errors import PipelineError
from lib.model.patch_ib import ImageOutput, TextOutput

# Set by torchrun for each process it starts.
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RENDEZVOUS_KEYS = ("MASTER_ADDR", "MASTER_PORT")


class DistributedError(PipelineError):
    """The distributed setup is inconsistent (environment, batch sizes, per-rank shapes)."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits among the ranks of a run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the GPU index on this machine

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise DistributedError(
                f"rank {self.rank} of world size {self.world_size} (local rank "
                f"{self.local_rank}) is impossible: need 0 <= rank < world_size and "
                "local_rank >= 0; launch with torchrun, which sets all three"
            )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str, timeout: timedelta | None = None) -> DistInfo:
    """Join the process group torchrun set up; a plain ``python`` run stays single-process.

    Reads RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR / MASTER_PORT for the rendezvous).
    Without WORLD_SIZE, or with WORLD_SIZE=1, nothing is initialised and rank 0 of 1 is
    returned. Otherwise the backend is NCCL for ``device_type="cuda"`` (after
    ``torch.cuda.set_device(LOCAL_RANK)``, so rank r uses GPU r of its machine) and Gloo for
    ``"cpu"``. ``timeout`` bounds every collective (torch's default when None). Calling it
    again in a process that has already joined returns the same info.
    """
    if device_type not in ("cuda", "cpu"):
        raise DistributedError(
            f"device type {device_type!r}: distributed training runs on 'cuda' (NCCL) or "
            "'cpu' (Gloo); pass torch.device(...).type of the training device"
        )
    world_size = _env_int("WORLD_SIZE", default=1)
    if world_size == 1:
        return DistInfo()
    missing = [k for k in (*ENV_KEYS, *RENDEZVOUS_KEYS) if k not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE = {world_size} but {', '.join(missing)} not set; launch with "
            "`torchrun --nproc-per-node=<gpus> ...`, which sets them all, or unset WORLD_SIZE "
            "for a single-process run"
        )
    info = DistInfo(_env_int("RANK"), world_size, _env_int("LOCAL_RANK"))
    die_with_launcher()
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (info.rank, info.world_size):
            raise DistributedError(
                f"the process group is already initialised as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but the environment says rank {info.rank} of "
                f"{info.world_size}; call cleanup() before re-initialising"
            )
        return info
    kwargs: dict = {}
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(
                "device type 'cuda' but CUDA is not available on this machine; use 'cpu' "
                "(Gloo) or run on a machine with GPUs"
            )
        if info.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK = {info.local_rank} but only {torch.cuda.device_count()} GPUs are "
                "visible; set torchrun --nproc-per-node to at most the number of GPUs (or fix "
                "CUDA_VISIBLE_DEVICES)"
            )
        torch.cuda.set_device(info.local_rank)
        kwargs["device_id"] = torch.device("cuda", info.local_rank)
    if timeout is not None:
        kwargs["timeout"] = timeout
    dist.init_process_group(
        backend="nccl" if device_type == "cuda" else "gloo",
        init_method="env://",
        rank=info.rank,
        world_size=info.world_size,
        **kwargs,
    )
    return info


def cleanup() -> None:
    """Leave the process group, if this process joined one (safe to call either way)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world_size() -> int:
    """Ranks in the default process group; 1 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def shard_batch(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous slice of a global batch of indices (a copy).

    batch: (B,) indices of one global batch from ``study_aware_batches``. Every rank computes
    the same global batches from (seed, epoch), so the split needs no communication, is the
    same on resume, and keeps the batches study-aware globally: no two images of one study
    in the whole global batch, which is what the gathered loss sees. Contiguous slices in
    rank order make the gathered rows come back in the global batch's order.
    """
    batch = np.asarray(batch)
    if batch.ndim != 1:
        raise DistributedError(f"batch of shape {batch.shape} must be 1-D: (B,) indices")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(
            f"rank {rank} of world size {world_size}: need 0 <= rank < world_size"
        )
    n = len(batch)
    if n == 0 or n % world_size:
        raise DistributedError(
            f"a global batch of {n} images cannot be split evenly over {world_size} ranks: set "
            f"train.batch_size to a positive multiple of {world_size} and keep "
            "study_aware_batches(drop_last=True); a partial last batch (drop_last=False) must "
            "be dropped or evaluated without sharding"
        )
    b = n // world_size
    return batch[rank * b : (rank + 1) * b].copy()


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather along dim 0 from every rank: (b, ...) -> (W·b, ...), rank 0's rows first.

    Gradients flow back to each rank's own slice: the backward sums, over ranks, the gradient
    every rank's loss sends to that slice (see the module docstring for what this means for
    the loss scale). Every rank must call it, in the same order, with the same shape and dtype;
    pad dimensions that differ with ``gather_padded``. Tensors that do not require grad
    (masks, indices) take a plain all-gather. Identity when not distributed.
    """
    if _world_size() == 1:
        return x
    if x.requires_grad:
        with warnings.catch_warnings():
            # Deprecated in torch 2.14 in favour of the private
            # torch.distributed._functional_collectives.all_gather_single, whose backward is
            # the same reduce-scatter (sum); this public one still works.
            warnings.filterwarnings("ignore", ".*nn.functional.all_gather", FutureWarning)
            return torch.cat(dist_nn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def gather_padded(x: Tensor, dim: int = 1, pad_value: float | bool = 0) -> Tensor:
    """``gather_with_grad`` for tensors whose size along ``dim`` differs between ranks.

    E.g. word_emb (b, L_r, l) with each rank's text trimmed to its own longest report: every
    rank's tensor is padded with ``pad_value`` at the end of ``dim`` to the longest L_r over
    ranks, then gathered to (W·b, max L_r, l). The padding must be something the consumer
    ignores (word_mask False there). The other dimensions must agree across ranks.
    Identity when not distributed.
    """
    if _world_size() == 1:
        return x
    if not 1 <= dim < x.ndim:
        raise DistributedError(
            f"dim = {dim} for a tensor of shape {tuple(x.shape)}: pad a dimension in "
            f"1..{x.ndim - 1} (dim 0 is the one gathered)"
        )
    shapes = _all_gather_ints(list(x.shape), x.device)  # (W, ndim)
    other = [d for d in range(x.ndim) if d != dim]
    if (shapes[:, other] != shapes[:1, other]).any():
        raise DistributedError(
            f"per-rank shapes {[tuple(s) for s in shapes.tolist()]} differ outside dim {dim}; "
            "every rank needs the same batch size (use shard_batch) and feature sizes"
        )
    return gather_with_grad(_pad_to(x, dim, int(shapes[:, dim].max()), pad_value))


def gather_outputs(img: ImageOutput, txt: TextOutput) -> tuple[ImageOutput, TextOutput]:
    """The model's outputs on the whole global batch, gathered from every rank in rank order.

    Every tensor field is gathered (None stays None); ``compute_losses`` on the result sees
    the global batch. word_emb / word_mask are padded to the longest text over ranks, with 0
    and False: the losses ignore words whose mask is False, so this equals a single process
    that trimmed the global batch's padding. Where ``patch_weight`` is ``mask`` (soft and
    top-K masking) the gathered pair is one tensor too. One small all-gather first checks that
    every rank has the same batch size and fields (all ranks raise together, none hangs).
    Identity when not distributed.
    """
    if _world_size() == 1:
        return img, txt
    lengths = {t.shape[1] for t in (txt.word_emb, txt.word_mask) if t is not None}
    if len(lengths) > 1:
        raise DistributedError(
            f"word_emb {tuple(txt.word_emb.shape)} and word_mask {tuple(txt.word_mask.shape)} "
            "must share (b, L) before gathering: take both from one encode_text call"
        )
    text_len = lengths.pop() if lengths else 0
    present = [getattr(img, f.name) is not None for f in dataclasses.fields(img)]
    present += [getattr(txt, f.name) is not None for f in dataclasses.fields(txt)]
    shared = img.patch_weight is not None and img.patch_weight is img.mask
    signature = [img.global_emb.shape[0], txt.global_emb.shape[0], int(shared), *map(int, present)]
    table = _all_gather_ints([text_len, *signature], img.global_emb.device)  # (W, 4 + fields)
    if (table[:, 1:] != table[:1, 1:]).any():
        raise DistributedError(
            "ranks disagree on batch size or output fields ([b_image, b_text, patch_weight is "
            "mask, field present...] "
            f"per rank: {table[:, 1:].tolist()}): give every rank an equal shard (shard_batch) "
            "and build every rank's model from the same ModelParams"
        )
    length = int(table[:, 0].max())

    gathered: dict[int, Tensor] = {}  # id of a local tensor -> its gathered tensor

    def gather(x: Tensor | None, pad_value: float | bool | None = None) -> Tensor | None:
        if x is None:
            return None
        if id(x) not in gathered:
            padded = x if pad_value is None else _pad_to(x, 1, length, pad_value)
            gathered[id(x)] = gather_with_grad(padded)
        return gathered[id(x)]

    img_out = ImageOutput(
        global_emb=gather(img.global_emb),
        patch_emb=gather(img.patch_emb),
        patch_weight=gather(img.patch_weight),
        mask=gather(img.mask),
        masked_emb=gather(img.masked_emb),
        kept_index=gather(img.kept_index),
    )
    txt_out = TextOutput(
        global_emb=gather(txt.global_emb),
        word_emb=gather(txt.word_emb, pad_value=0.0),
        word_mask=gather(txt.word_mask, pad_value=False),
    )
    return img_out, txt_out


def _pad_to(x: Tensor, dim: int, length: int, pad_value: float | bool) -> Tensor:
    """x padded with pad_value at the end of ``dim`` to ``length`` (differentiable)."""
    short = length - x.shape[dim]
    if short == 0:
        return x
    shape = list(x.shape)
    shape[dim] = short
    return torch.cat([x, x.new_full(shape, pad_value)], dim=dim)


def _all_gather_ints(values: list[int], device: torch.device) -> Tensor:
    """(W, k) CPU int64 table: row r holds rank r's ``values`` (k the same on every rank)."""
    local = torch.tensor(values, dtype=torch.int64, device=device)
    parts = [torch.empty_like(local) for _ in range(_world_size())]
    dist.all_gather(parts, local)
    return torch.stack(parts).cpu()


def _env_int(key: str, default: int | None = None) -> int:
    raw = os.environ.get(key)
    if raw is None:
        if default is None:
            raise DistributedError(f"{key} is not set; launch with torchrun, which sets it")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(
            f"{key} = {raw!r} is not an integer; launch with torchrun, which sets it"
        ) from None


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_launcher() -> None:
    """On Linux, have the kernel SIGKILL this rank as soon as its launcher dies.

    torchrun starts every rank in a session of its own, so a launcher killed outright (the
    OOM killer, ``kill -9`` of ``dvc repro``'s process group) cannot pass the signal on: the
    ranks would train on as orphans, writing checkpoints and stage outputs behind the back
    of the next run. With this, killing the launcher kills the run, and rerunning the stage
    resumes from the last checkpoint. Elsewhere than Linux it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not permitted here (unusual sandboxes): keep torchrun's own behaviour
    if os.getppid() != parent:  # (the launcher may itself be PID 1, e.g. in a container)
        raise DistributedError(
            "this rank's launcher (torchrun) exited before the rank started; rerun the stage"
        )


def relaunch_with_torchrun(module: str, nproc: int, argv: list[str], what: str) -> None:
    """Run ``torchrun --standalone --nproc-per-node=nproc -m module *argv`` and wait.

    Through torchrun's Python API rather than its command line, which would take a stage's
    ``--master`` for an abbreviation of its own ``--master-addr`` / ``--master-port``.
    Raises DistributedError naming the failed rank's error when a rank fails.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    targs = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", module]
    )
    targs.training_script_args = list(argv)
    print(f"{what}: torchrun --standalone --nproc-per-node={nproc} -m {module}", flush=True)
    try:
        torchrun(targs)
    except ChildFailedError as err:
        raise DistributedError(
            f"{what}: a rank of the torchrun launch failed (its error is printed above): "
            f"{err.get_first_failure()[1].message}"
        ) from None
