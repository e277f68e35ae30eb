"""The spatial maps a model gives for an image and a phrase, over its ViT's patch grid.

Which maps a variant has (lib/eval/box_scores.py scores them against boxes):

- ``mask`` (C, D, E): the patch mask z, the same for every phrase of an image. E scores
  every patch before its drop layer, so its z covers the whole grid too.
- ``attention`` (B–E): the phrase's word-to-patch attention, the softmax over patches of
  the local alignment (``model.local_temperature``), weighted by z where the loss weights
  it, averaged over the phrase's words. E attends only to the patches it kept; the others
  get 0.
- ``similarity`` (A–D, ConVIRT and the pretrained backbone): the cosine between each patch
  token, taken through the global image head (as the pooled token is), and the phrase's
  global text embedding; no gradient and no extra training (MaskCLIP's reading of a CLIP).
  ConVIRT's "patches" are the cells of its ResNet's last feature map (``patch_tokens``). E
  has none: past its drop layer only the kept tokens exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lib.data.images import to_model_input
from lib.eval.embed_model import Trained
from lib.model.build import Model
from lib.model.patch_ib import ImageOutput, trim_padding

MAP_KINDS: tuple[str, ...] = ("mask", "attention", "similarity")


def map_kinds(model: Model) -> tuple[str, ...]:
    """The maps of ``MAP_KINDS`` that ``model`` has (module docstring)."""
    p = model.params
    kinds = []
    if p.use_masking:
        kinds.append("mask")
    if model.local_text_proj is not None:
        kinds.append("attention")
    if not (p.use_masking and p.mask_mode == "drop"):
        kinds.append("similarity")
    return tuple(kinds)


def word_patch_attention(
    model: Model, words: torch.Tensor, img: ImageOutput, i: int, n_patch: int
) -> torch.Tensor:
    """(n_patch,) mean attention of ``words`` (t, l) of one text over the patches of image
    ``i`` of ``img``: the local alignment's softmax, weighted by z and renormalised where
    the model has a mask, on the full grid (patches E dropped get 0)."""
    assert img.patch_emb is not None  # models with local alignment have patch embeddings
    if words.shape[0] == 0:  # nothing to attend with (a phrase of special tokens only)
        return torch.full((n_patch,), 1.0 / n_patch, device=words.device)
    w = F.normalize(words.float(), dim=-1)
    p = F.normalize(img.patch_emb[i].float(), dim=-1)  # (N', l)
    att = (w @ p.T / model.params.local_temperature).softmax(dim=-1)  # (t, N')
    if img.patch_weight is not None:
        att = att * img.patch_weight[i].float()
        att = att / att.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    full = torch.zeros(n_patch, device=att.device)
    if img.kept_index is not None:
        full[img.kept_index[i].to(att.device)] = att.mean(dim=0)
    else:
        full[: att.shape[1]] = att.mean(dim=0)
    return full


@torch.no_grad()
def phrase_maps(
    trained: Trained, pixels: torch.Tensor, phrases: list[str]
) -> dict[str, torch.Tensor]:
    """Maps of each (image, phrase) pair: uint8 images (B, S, S) and B phrases ->
    kind -> (B, gh, gw) float32 on the CPU, for the kinds of ``map_kinds``."""
    model, bb, device = trained.model, trained.backbone, trained.device
    gh, gw = model.grid
    n, n_patch = len(phrases), gh * gw
    if pixels.shape[0] != n:
        raise ValueError(f"{pixels.shape[0]} images but {n} phrases")
    kinds = map_kinds(model)
    x = to_model_input(pixels.to(device), bb.mean, bb.std).to(trained.dtype)
    ids = trim_padding(bb.tokenizer(phrases), bb.pad_id).to(device)
    out: dict[str, torch.Tensor] = {}
    with trained.autocast():
        img = model.encode_image(x)
        txt = model.encode_text(ids)
        if "similarity" in kinds:
            patches = model.patch_tokens(x)  # (B, N, d)
            sim = torch.einsum("bnd,bd->bn", patches, txt.global_emb.float())
            out["similarity"] = sim
    if "mask" in kinds:
        assert img.mask is not None
        out["mask"] = img.mask.float()
    if "attention" in kinds:
        assert txt.word_emb is not None and txt.word_mask is not None
        out["attention"] = torch.stack(
            [
                word_patch_attention(model, txt.word_emb[i][txt.word_mask[i]], img, i, n_patch)
                for i in range(n)
            ]
        )
    return {k: v.reshape(n, gh, gw).float().cpu() for k, v in out.items()}
