"""Backbone features for stage vqa@X: X's image tower gives patch features, X's text tower
the question's token features.

The functions are kept in a registry keyed by ``model.architecture``, so an architecture
adds its own in a few lines (``register("medklip", patches=..., tokens=...)``); a model
that offers ``patch_features(images) -> (B, N, D)`` needs no patch function at all.
Frozen towers (``vqa.fine_tune: false``, the default) are run once per stage over the
images of the QA studies (read from the pack) and once per distinct question text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lib.data.images import to_model_input
from lib.errors import DataError
from lib.eval.embed_model import Trained
from lib.model.patch_ib import trim_padding

# images (B, 3, H, W) normalised -> (B, N, D) patch features
PatchFn = Callable[[torch.nn.Module, Tensor], Tensor]
# token ids (B, L), attention (B, L) -> (B, L, D) last hidden states
TokenFn = Callable[[torch.nn.Module, Tensor, Tensor], Tensor]


def _patch_tokens(model: torch.nn.Module, images: Tensor) -> Tensor:
    return model.patch_tokens(images)  # patch_ib: ViT patches; convirt: ResNet map cells


def _hidden_states(model: torch.nn.Module, ids: Tensor, attention: Tensor) -> Tensor:
    return model._text_tower(ids, attention)[0]  # BERT last hidden state


PATCH_FNS: dict[str, PatchFn] = {"patch_ib": _patch_tokens, "convirt": _patch_tokens}
TOKEN_FNS: dict[str, TokenFn] = {"patch_ib": _hidden_states, "convirt": _hidden_states}


def register(
    architecture: str, patches: PatchFn | None = None, tokens: TokenFn | None = None
) -> None:
    """Add an architecture's feature functions (MedKLIP: its patch_features and text tower)."""
    if patches is not None:
        PATCH_FNS[architecture] = patches
    if tokens is not None:
        TOKEN_FNS[architecture] = tokens


def patch_fn(architecture: str) -> PatchFn:
    if architecture in PATCH_FNS:
        return PATCH_FNS[architecture]
    return lambda model, images: model.patch_features(images)


def token_fn(architecture: str) -> TokenFn:
    if architecture not in TOKEN_FNS:
        raise DataError(
            f"model.architecture = {architecture!r}: no question encoder registered for VQA; "
            f"add one with lib.vqa.features.register (known: {sorted(TOKEN_FNS)})"
        )
    return TOKEN_FNS[architecture]


@dataclass
class TextFeatures:
    tokens: np.ndarray  # (Q, L, D) float32, per distinct question, zero-padded
    mask: np.ndarray  # (Q, L) bool
    index: dict[str, int]  # question text -> row


def images_input(trained: Trained, pixels: Tensor) -> Tensor:
    bb = trained.backbone
    return to_model_input(pixels.to(trained.device), bb.mean, bb.std).to(trained.dtype)


@torch.no_grad()
def image_features(trained: Trained, pixels: Sequence | Tensor, batch_size: int) -> np.ndarray:
    """(N, P, D) float32 patch features of uint8 (N, S, S) images, the tower frozen."""
    fn = patch_fn(trained.variant.model.architecture)
    out = []
    for start in range(0, len(pixels), batch_size):
        x = images_input(trained, pixels[start : start + batch_size])
        with trained.autocast():
            out.append(fn(trained.model, x).float().cpu())
    if not out:
        raise DataError("no images for VQA features: no QA study has an image in the pack")
    return torch.cat(out).numpy()


@torch.no_grad()
def text_features(trained: Trained, texts: Sequence[str], batch_size: int) -> TextFeatures:
    """Token features of each distinct question text (special tokens kept: [CLS] carries
    the sentence), padded to the longest."""
    fn = token_fn(trained.variant.model.architecture)
    bb = trained.backbone
    unique = sorted(set(texts))
    feats, masks = [], []
    for start in range(0, len(unique), batch_size):
        ids = trim_padding(bb.tokenizer(unique[start : start + batch_size]), bb.pad_id)
        ids = ids.to(trained.device)
        attention = (ids != bb.pad_id).long()
        with trained.autocast():
            feats.append(fn(trained.model, ids, attention).float().cpu())
        masks.append(attention.bool().cpu())
    length = max(f.shape[1] for f in feats)
    tokens = np.zeros((len(unique), length, feats[0].shape[2]), dtype=np.float32)
    mask = np.zeros((len(unique), length), dtype=bool)
    row = 0
    for f, m in zip(feats, masks, strict=True):
        tokens[row : row + len(f), : f.shape[1]] = f.numpy()
        mask[row : row + len(f), : f.shape[1]] = m.numpy()
        row += len(f)
    return TextFeatures(tokens, mask, {t: i for i, t in enumerate(unique)})


def patch_grid(trained: Trained) -> tuple[int, int]:
    """(rows, columns) of the patch features (for attention maps against boxes)."""
    grid = getattr(trained.model, "grid", None)
    if grid is None:
        raise DataError(f"{trained.variant.name}: the model has no patch grid")
    return int(grid[0]), int(grid[1])
