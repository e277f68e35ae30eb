"""AdamW parameter groups with layer-wise learning-rate decay, and the LR schedule.

Layer-wise decay (LLRD) in both towers of a timm-ViT + Hugging Face BERT CLIP (BiomedCLIP's
layout in open_clip): pretrained lower layers hold general features and move least, the
freshly initialised heads move most. Parameters are recognised by name:

- vision block i of Dv: ``...visual.trunk.blocks.{i}.``  → base·factor^(Dv − i)
- text layer i of Dt:   ``...text.transformer.encoder.layer.{i}.`` → base·factor^(Dt − i)
- embeddings (below block 0) → base·factor^(D + 1): ``visual.trunk.{patch_embed, cls_token,
  reg_token, pos_embed, norm_pre}`` and ``text.transformer.embeddings``
- everything else (final trunk norm, pooler, heads, projections, mask / local heads,
  logit_scale) → base.

Depths are the number of blocks found by name (counting frozen ones too), so the top block
always gets base·factor whatever is frozen.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_TOWERS: dict[str, tuple[re.Pattern[str], re.Pattern[str]]] = {
    # tower: (its block pattern with the index as group 1, its embeddings pattern)
    "visual": (
        re.compile(r"(?:^|\.)visual\.trunk\.blocks\.(\d+)\."),
        re.compile(
            r"(?:^|\.)visual\.trunk\.(?:patch_embed\.|cls_token$|reg_token$|pos_embed$|"
            r"norm_pre\.)"
        ),
    ),
    "text": (
        re.compile(r"(?:^|\.)text\.transformer\.encoder\.layer\.(\d+)\."),
        re.compile(r"(?:^|\.)text\.transformer\.embeddings\."),
    ),
}
# Learned tokens that weight decay would pull towards 0 for no reason: ViT class/register/
# position tokens, BERT position embeddings, mask tokens, and the temperature.
_NO_DECAY_NAMES = re.compile(
    r"(?:^|\.)(?:cls_token|reg_token|pos_embed|mask_token|logit_scale)$|"
    r"(?:^|\.)position_embeddings\.weight$"
)


def param_groups(
    model: nn.Module, base_lr: float, weight_decay: float, llrd_factor: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise LR decay in both towers.

    Each trainable parameter gets lr = base_lr·lr_scale (see the module docstring for
    lr_scale) and weight_decay, except biases and other 1-D parameters (norm weights),
    0-D ones (logit_scale) and learned tokens (cls/pos/reg/mask tokens, BERT position
    embeddings), which get no decay. Parameters with requires_grad False are left out.
    Parameters with equal (lr, weight decay) share a group, so e.g. vision block Dv − 1 and
    text layer Dt − 1 are one group.

    Each group: {"params", "param_names", "lr", "weight_decay", "lr_scale", "name"}; "name"
    lists the layers merged in it, e.g. "visual.block3+text.layer1/decay". Groups are
    ordered by lr_scale (lowest first), then decay before no-decay.
    """
    if base_lr <= 0:
        raise ValueError(f"base_lr = {base_lr} must be > 0")
    if weight_decay < 0:
        raise ValueError(f"weight_decay = {weight_decay} must be >= 0 (0 turns it off)")
    if not 0 < llrd_factor <= 1:
        raise ValueError(f"llrd_factor = {llrd_factor} must be in (0, 1]; 1 turns LLRD off")

    named = list(model.named_parameters())
    depths = _tower_depths(name for name, _ in named)
    if llrd_factor < 1 and not depths:
        raise ValueError(
            f"llrd_factor = {llrd_factor} but {type(model).__name__} has no parameter named "
            "like '...visual.trunk.blocks.<i>.' or '...text.transformer.encoder.layer.<i>.'; "
            "layer-wise decay would do nothing: set llrd_factor to 1.0 or use a "
            "timm-ViT / HF-BERT CLIP"
        )

    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        layer, exponent = _layer_of(name, depths)
        scale = llrd_factor**exponent
        decay = 0.0 if param.ndim <= 1 or _NO_DECAY_NAMES.search(name) else weight_decay
        group = groups.setdefault(
            (scale, decay),
            {"params": [], "param_names": [], "layers": [], "lr_scale": scale, "decay": decay},
        )
        group["params"].append(param)
        group["param_names"].append(name)
        if layer not in group["layers"]:
            group["layers"].append(layer)
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no parameter with requires_grad; nothing to optimise "
            "(check which towers are frozen)"
        )

    out = []
    for (scale, decay), g in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        out.append(
            {
                "params": g["params"],
                "param_names": g["param_names"],
                "lr": base_lr * scale,
                "weight_decay": decay,
                "lr_scale": scale,
                "name": "+".join(g["layers"]) + ("/decay" if decay > 0 else "/no_decay"),
            }
        )
    return out


def adamw(groups: list[dict[str, Any]], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``param_groups``' groups; on a GPU the fused kernel (one launch per group
    for every parameter's update, instead of a chain of foreach kernels)."""
    return torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")


def _tower_depths(names: Any) -> dict[str, int]:
    """{tower: number of blocks} for the towers whose blocks appear in ``names``."""
    depths: dict[str, int] = {}
    for name in names:
        for tower, (blocks, _) in _TOWERS.items():
            m = blocks.search(name)
            if m:
                depths[tower] = max(depths.get(tower, 0), int(m.group(1)) + 1)
    return depths


def _layer_of(name: str, depths: dict[str, int]) -> tuple[str, int]:
    """(layer label for group names, exponent of llrd_factor) of one parameter."""
    for tower, (blocks, embeddings) in _TOWERS.items():
        if tower not in depths:
            continue
        m = blocks.search(name)
        if m:
            i = int(m.group(1))
            label = f"{tower}.block{i}" if tower == "visual" else f"{tower}.layer{i}"
            return label, depths[tower] - i
        if embeddings.search(name):
            return f"{tower}.embed", depths[tower] + 1
    return "head", 0


def cosine_with_warmup(
    step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> float:
    """LR multiplier at ``step`` (0-based optimizer steps): linear 0 → 1 over warmup_steps,
    then half a cosine from 1 down to min_ratio at total_steps (and min_ratio after it).

    Step 0 gives 0 when there is a warmup (the first update is a no-op, as in Hugging Face's
    get_cosine_schedule_with_warmup); warmup_steps = 0 starts at 1.
    """
    _check_schedule(total_steps, warmup_steps, min_ratio)
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> LambdaLR:
    """LambdaLR applying cosine_with_warmup to every group's initial lr (= base·lr_scale from
    param_groups, so the layer-wise decay is kept through the schedule). Call .step() after
    each optimizer step."""
    _check_schedule(total_steps, warmup_steps, min_ratio)
    # functools.partial (not a lambda) so the scheduler's state_dict can be saved.
    fn = functools.partial(
        cosine_with_warmup,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        min_ratio=min_ratio,
    )
    return LambdaLR(optimizer, fn)


def _check_schedule(total_steps: int, warmup_steps: int, min_ratio: float) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps = {total_steps} must be >= 1")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps = {warmup_steps} must be in [0, total_steps = {total_steps}); "
            "lower the warmup or train longer"
        )
    if not 0 <= min_ratio <= 1:
        raise ValueError(f"min_ratio = {min_ratio} must be in [0, 1] (final LR / peak LR)")
