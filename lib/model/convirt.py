"""ConVIRT (Zhang et al., 2020): the baseline Patch-IB-CXR descends from, on a CNN + BERT
backbone loaded through the same open_clip path as A–E (lib/model/backbone.py).

- image: the timm ResNet's globally average-pooled features h_v (ResNet-50: 2048-d), then
  g_v, a two-layer MLP with ReLU (in → head_dim → head_dim; ConVIRT: 2048 → 512 → 512);
- text: the BERT's last hidden states pooled over the real tokens (``model.text_pool``,
  ConVIRT's max-pooling by default) into h_u (768-d), then g_u (768 → 512 → 512);
- both embeddings L2-normalised; the loss is lib/model/losses.py's bidirectional InfoNCE
  with ConVIRT's weighting λ of the image→text direction (``model.contrastive_weight_i2t``
  = λ, ``contrastive_weight_t2i`` = 1 − λ) at a fixed temperature τ
  (``model.learn_temperature: false``, ``model.temperature``).

The model exposes the interface the trainer and the evaluation use for A–E (encode_image /
encode_text returning ImageOutput / TextOutput, logit_scale, set_backbone_frozen, grid and
patch_tokens), with no mask and no local alignment. Its spatial map for phrase grounding is
the similarity of each cell of the ResNet's last feature map, taken through g_v as the
pooled features are, to the phrase's embedding.

:func:`write_convirt_backbone` writes the demo's ConVIRT backbone folder (stage
convirt_backbone): the demo ResNet at random beside the demo backbone's pretrained BERT.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.config.params import ConvirtBackboneParams, ModelParams
from lib.errors import DataError, ParamsError
from lib.io import atomic_path
from lib.model.backbone import (
    BERT_FILES,
    CLIP_CONFIG,
    CLIP_MEAN,
    CLIP_STD,
    WEIGHTS,
    Backbone,
    BackboneConfigError,
    load_backbone,
    random_init_state,
    resnet_model_name,
)
from lib.model.patch_ib import ImageOutput, TextOutput, TowerFreezing, run_text_tower


def projection_head(in_dim: int, dim: int) -> nn.Sequential:
    """ConVIRT's g: Linear(in_dim, dim) → ReLU → Linear(dim, dim)."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def pool_tokens(hidden: Tensor, attention: Tensor, mode: str) -> Tensor:
    """(B, L, W) hidden states, (B, L) 1 for real tokens -> (B, W).

    max: the elementwise maximum over the real tokens (ConVIRT's); mean: their mean; cls:
    the first token ([CLS]). Padding never enters."""
    if mode == "cls":
        return hidden[:, 0]
    real = attention.bool().unsqueeze(-1)  # (B, L, 1)
    if mode == "max":
        return hidden.masked_fill(~real, torch.finfo(hidden.dtype).min).amax(dim=1)
    if mode == "mean":
        return (hidden * real).sum(dim=1) / real.sum(dim=1).clamp_min(1)
    raise ValueError(f"text pooling {mode!r}: use max, mean or cls")


class ConVIRTModel(TowerFreezing):
    """ConVIRT on a loaded backbone (a timm CNN trunk with global pooling and no projection,
    and an open_clip Hugging Face text tower). Takes ownership of ``backbone.clip``."""

    def __init__(self, backbone: Backbone, params: ModelParams) -> None:
        super().__init__()
        params.validate()
        if params.architecture != "convirt":
            raise ParamsError(
                f"ConVIRTModel needs model.architecture = 'convirt', got {params.architecture!r}"
            )
        self.params = params
        self.clip = backbone.clip
        trunk = getattr(self.clip.visual, "trunk", None)
        if trunk is None or not all(
            hasattr(trunk, a) for a in ("forward_features", "forward_head", "num_features")
        ):
            raise ParamsError(
                f"model.backbone = {params.backbone!r}: ConVIRT's image tower must be a timm "
                "model (open_clip vision_cfg.timm_model_name, e.g. resnet50.a1_in1k)"
            )
        text = self.clip.text
        if not all(hasattr(text, a) for a in ("transformer", "config")):
            raise ParamsError(
                f"model.backbone = {params.backbone!r}: ConVIRT's text tower must be a Hugging "
                "Face model (open_clip text_cfg.hf_model_name, e.g. "
                "emilyalsentzer/Bio_ClinicalBERT)"
            )
        layers = _text_layers(text.transformer)
        if params.frozen_text_layers > len(layers):
            raise ParamsError(
                f"model.frozen_text_layers = {params.frozen_text_layers} but the text tower of "
                f"{params.backbone} has {len(layers)} layers; use 0..{len(layers)}"
            )
        # No prefix tokens, no mask, no local alignment: what the shared evaluation code asks.
        self.num_prefix = 0
        self.mask_head = self.masked_proj = None
        self.local_image_proj = self.local_text_proj = None
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1 / params.temperature)),
            requires_grad=params.learn_temperature,
        )
        self.clip.logit_scale = self.logit_scale
        self.image_head = projection_head(int(trunk.num_features), params.head_dim)
        self.text_head = projection_head(int(text.config.hidden_size), params.head_dim)
        with torch.no_grad():  # the last feature map's size at the backbone's input size
            was = trunk.training
            trunk.eval()
            probe = torch.zeros(1, 3, backbone.image_size, backbone.image_size)
            fmap = trunk.forward_features(probe.to(next(trunk.parameters()).device))
            trunk.train(was)
        self._grid = (int(fmap.shape[-2]), int(fmap.shape[-1]))
        # Channels-last convolutions: 25 % faster fwd+bwd of the demo ResNet on 2 CPU cores
        # (benchmarks/README.md), and what tensor cores want under AMP.
        trunk.to(memory_format=torch.channels_last)
        self._freeze_lower_text()

    # --- image ----------------------------------------------------------------------------

    def encode_image(self, images: Tensor) -> ImageOutput:
        """(B, 3, H, W) normalised images -> ImageOutput with the global embedding only."""
        trunk = self.clip.visual.trunk
        x = images.contiguous(memory_format=torch.channels_last)
        pooled = trunk.forward_head(trunk.forward_features(x))  # (B, C): global avg pool
        emb = F.normalize(self.image_head(pooled), dim=-1)
        return ImageOutput(emb, None, None, None, None, None)

    # --- text -----------------------------------------------------------------------------

    def encode_text(self, token_ids: Tensor) -> TextOutput:
        """(B, L) token ids, padded with the tokenizer's pad id -> TextOutput (global only)."""
        attention = (token_ids != self.clip.text.config.pad_token_id).long()
        _, pooled = run_text_tower(self._text_tower, token_ids, attention)
        return TextOutput(F.normalize(self.text_head(pooled), dim=-1), None, None)

    def _text_tower(self, token_ids: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
        out = self.clip.text.transformer(input_ids=token_ids, attention_mask=attention)
        hidden = out.last_hidden_state
        return hidden, pool_tokens(hidden, attention, self.params.text_pool)

    def forward(self, images: Tensor, token_ids: Tensor) -> tuple[ImageOutput, TextOutput]:
        return self.encode_image(images), self.encode_text(token_ids)

    # --- spatial maps ---------------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the trunk's last feature map."""
        return self._grid

    def patch_tokens(self, images: Tensor) -> Tensor:
        """(B, h·w, d) float32 L2-normalised: each cell of the last feature map through g_v."""
        x = images.contiguous(memory_format=torch.channels_last)
        fmap = self.clip.visual.trunk.forward_features(x)  # (B, C, h, w)
        cells = fmap.flatten(2).transpose(1, 2)  # (B, h·w, C)
        return F.normalize(self.image_head(cells).float(), dim=-1)

    # --- training -------------------------------------------------------------------------

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze or unfreeze both towers (train.staged_training's phase 1); the text tower's
        embeddings and lowest ``model.frozen_text_layers`` layers stay frozen either way."""
        super().set_backbone_frozen(frozen)
        self._freeze_lower_text()

    def _freeze_lower_text(self) -> None:
        n = self.params.frozen_text_layers
        if n == 0:
            return
        transformer = self.clip.text.transformer
        for module in (transformer.embeddings, *_text_layers(transformer)[:n]):
            for param in module.parameters():
                param.requires_grad_(False)


def _text_layers(transformer: nn.Module) -> nn.ModuleList:
    encoder = getattr(transformer, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ParamsError(
            "ConVIRT's text tower must be a BERT-style model (transformer.encoder.layer)"
        )
    return layers


# --- the demo backbone folder of ConVIRT (stage convirt_backbone) ---------------------


def convirt_open_clip_config(
    text_config: dict[str, Any], image_size: int, timm_name: str
) -> dict[str, Any]:
    """open_clip_config.json of ConVIRT's demo backbone: the timm CNN ``timm_name`` (the
    demo ResNet) with its own pooled features and the demo backbone's BERT (``text_config``:
    that folder's width and context length), neither with a projection: ConVIRT's MLP heads
    are the model's (lib/model/convirt.py)."""
    return {
        "model_cfg": {
            # The towers' outputs are used as they are: the text "projection" is the identity
            # when embed_dim is BERT's width.
            "embed_dim": int(text_config["width"]),
            "vision_cfg": {
                "timm_model_name": timm_name,
                "timm_model_pretrained": False,
                "timm_pool": "avg",
                "timm_proj": "none",
                "image_size": image_size,
            },
            "text_cfg": {
                "hf_model_name": ".",
                "hf_tokenizer_name": ".",
                "hf_proj_type": None,
                "hf_pooler_type": "mean_pooler",  # unused: ConVIRT pools itself (text_pool)
                "context_length": int(text_config["context_length"]),
            },
        },
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }


def write_convirt_backbone(
    out_dir: Path, text_from: Path, params: ConvirtBackboneParams, timm_name: str | None = None
) -> None:
    """Write ConVIRT's demo backbone as an open_clip ``local-dir:`` folder, reproducibly.

    The image tower is the demo ResNet at random from ``params.seed`` (ConVIRT starts from an
    ImageNet ResNet-50; the demo has no natural-image corpus to pretrain one on), or the
    timm model ``timm_name`` at random (benchmarks: ``resnet50``). The text tower is the
    BERT of the demo backbone in ``text_from`` (its config, tokenizer and pretrained
    weights), ConVIRT's stand-in for ClinicalBERT.
    """
    from safetensors.torch import load_file, save_file

    params.validate()
    source = load_backbone(f"local-dir:{text_from}")
    text_state = {
        k: v for k, v in load_file(text_from / WEIGHTS).items() if k.startswith("text.transformer.")
    }
    if not text_state:
        raise DataError(
            f"{text_from / WEIGHTS}: no text.transformer.* weights; it is not an open_clip "
            "model with a Hugging Face text tower; rewrite it with `dvc repro demo_backbone`"
        )
    text_config = {
        "width": source.clip.text.config.hidden_size,
        "context_length": source.context_length,
    }
    config = convirt_open_clip_config(
        text_config, source.image_size, timm_name or resnet_model_name(params)
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in BERT_FILES:  # the BERT's config and tokenizer
            if (text_from / name).is_file():
                (tmp / name).write_bytes((text_from / name).read_bytes())
        (tmp / CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = random_init_state(tmp, config, f"local-dir:{out_dir}", params.seed)
        missing = sorted(set(text_state) - set(state))
        if missing:
            raise BackboneConfigError(
                f"{text_from}: its BERT weights do not fit the tower built from its config "
                f"(missing {missing[:3]}); rewrite it with `dvc repro demo_backbone`"
            )
        state.update({k: v.contiguous() for k, v in text_state.items()})
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})
