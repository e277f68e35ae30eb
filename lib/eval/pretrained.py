"""The "pretrained backbone, no fine-tuning" reference (stage pretrained): model A's
architecture (the global CLIP baseline, whatever ``model.use_masking`` etc. say) on the
backbone exactly as ``model.backbone`` loads it, saved as a model folder like train@X's so
that stages embed / evaluate score it through the same code as A–E.

The global model adds no head of its own: its embeddings are open_clip's (the ViT's pooled
token through ``visual.head``, the text tower's pooled output through ``text.proj``), so this
model *is* the backbone's own image/text embedding. Its temperature is the backbone's loaded
``logit_scale`` (PatchIBModel would otherwise start it at ``model.temperature``). On real
data (``model.backbone`` = BiomedCLIP) the row is BiomedCLIP zero-shot; on the demo it is
whatever stage demo_backbone wrote.

Only ``model.backbone`` and ``train.use_amp`` (inference precision on CUDA) enter the folder,
so changing any other model or train param leaves it, and its evaluation, as they are. Its
config comes from stage resolve_config (data/configs/pretrained.json, with the digest of a
``local-dir:`` backbone folder), so editing the folder ``model.backbone`` names rebuilds it,
whichever folder that is.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_model

from lib.config.variants import PRETRAINED, Variant
from lib.errors import DataError
from lib.io import atomic_path
from lib.model.backbone import load_backbone
from lib.model.patch_ib import PatchIBModel

NAME = PRETRAINED


def pretrained_model(variant: Variant) -> PatchIBModel:
    """The untrained global model on the loaded backbone, its logit_scale as loaded."""
    backbone = load_backbone(variant.model.backbone, device="cpu")
    loaded = getattr(backbone.clip, "logit_scale", None)
    model = PatchIBModel(backbone, variant.model)
    if isinstance(loaded, torch.Tensor):
        with torch.no_grad():
            model.logit_scale.copy_(loaded.detach().reshape(()))
    return model.eval()


def read_config(path: Path) -> Variant:
    """The reference's config as stage resolve_config wrote it."""
    if not path.is_file():
        raise DataError(f"{path}: not found; run `dvc repro resolve_config` first")
    variant = Variant.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
    if variant.name != NAME:
        raise DataError(
            f"{path}: the config of {variant.name!r}, not of the {NAME!r} reference; pass "
            f"data/configs/{NAME}.json"
        )
    return variant


def write_pretrained_model(out: Path, variant: Variant) -> Variant:
    """``out``/model.safetensors + config.json (``variant``'s, digest included), as train@X
    writes them (load_trained)."""
    model = pretrained_model(variant)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        record = {**variant.to_dict(), "fine_tuned": False}
        (tmp / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return variant
