"""Patch-IB-CXR: the open_clip backbone plus a patch saliency mask and local-alignment heads.

One class covers the five variants through ``ModelParams``:
- A: global contrastive only (open_clip's own image and text embeddings);
- B: + local alignment (patch and word features projected to ``local_dim``);
- C: + soft mask, ``z = sigmoid(w·v + b)`` per final patch token, and an image embedding from
  the patches pooled as the ViT pools them, weighted by z (``mask_mode: soft``);
- D: the mask sharpened toward exactly K = round(keep_ratio·N) patches by a soft top-K of
  temperature ``topk_temperature`` (``mask_mode: topk``);
- E: the mask sits after ViT block ``drop_layer``; only the top-K patches (and the prefix
  tokens) continue through the remaining blocks, so the sequence really shortens
  (``mask_mode: drop``).

The open_clip model is kept whole as ``self.clip`` so its parameter names stay intact
(``clip.visual.trunk.blocks.{i}``, ``clip.text.transformer.encoder.layer.{i}``); new modules are
named ``*_head`` / ``*_proj``. No loss is computed here (see lib/model/losses.py).
Shapes: B batch, P prefix tokens (CLS, registers), N patches, K kept patches, W vision width,
L text length, d joint embedding size, l = local_dim.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.config.params import ModelParams
from lib.errors import ParamsError
from lib.model.backbone import Backbone


@dataclass(frozen=True)
class ImageOutput:
    global_emb: Tensor  # (B, d) L2-normalised: open_clip's visual head on the trunk output
    patch_emb: Tensor | None  # (B, N', l) patches in the local space; N' = N, or K (drop)
    patch_weight: Tensor | None  # (B, N') z of those patches; None without masking
    mask: Tensor | None  # (B, N) patch saliency z in (0, 1) over all N patches
    masked_emb: Tensor | None  # (B, d) L2-normalised embedding of the z-weighted patch mean
    kept_index: Tensor | None  # (B, K) patch indices that continued past drop_layer (E)


@dataclass(frozen=True)
class TextOutput:
    global_emb: Tensor  # (B, d) L2-normalised: open_clip's text tower (pooler + proj)
    word_emb: Tensor | None  # (B, L, l) projected last-hidden-state tokens (local alignment)
    word_mask: Tensor | None  # (B, L) bool: real word tokens (not [PAD], [CLS], [SEP])


class MaskHead(nn.Module):
    """Per-patch saliency logit ``w·v + b``: (B, N, W) -> (B, N).

    With ``normalize`` (mode E) a LayerNorm comes first: tokens taken from the middle of the
    ViT are the raw residual stream, whose scale grows with depth; final tokens are already
    normalised by the trunk.
    """

    def __init__(self, width: int, normalize: bool) -> None:
        super().__init__()
        self.norm: nn.Module = nn.LayerNorm(width) if normalize else nn.Identity()
        self.linear = nn.Linear(width, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear(self.norm(tokens)).squeeze(-1)


def num_kept(n_patches: int, keep_ratio: float) -> int:
    """K = round(keep_ratio · N), at least 1 and at most N."""
    return min(n_patches, max(1, round(keep_ratio * n_patches)))


def soft_topk(logits: Tensor, k: int, temperature: float) -> Tensor:
    """Differentiable top-K mask (B, N) -> (B, N) in (0, 1).

    ``sigmoid((s - t_K) / temperature)`` with t_K midway between the K-th and (K+1)-th largest
    logit of each row (detached, so gradients move the logits, not the threshold): as the
    temperature falls, exactly the K largest tend to 1 and the rest to 0. With K = N every
    patch is kept: t sits one logit unit below the smallest.
    """
    n = logits.shape[-1]
    top = logits.detach().topk(min(k + 1, n), dim=-1).values
    threshold = (top[..., k - 1] + top[..., k]) / 2 if k < n else top[..., n - 1] - 1.0
    return torch.sigmoid((logits - threshold.unsqueeze(-1)) / temperature)


def weighted_mean(tokens: Tensor, weights: Tensor, eps: float = 1e-6) -> Tensor:
    """(B, N, W) tokens, (B, N) weights -> (B, W) weighted mean."""
    total = weights.sum(dim=-1, keepdim=True).clamp_min(eps)
    return torch.einsum("bn,bnw->bw", weights, tokens) / total


def masked_pool(tokens: Tensor, weights: Tensor, pool: str) -> Tensor:
    """(B, N, W) patch tokens, (B, N) mask weights in [0, 1] -> (B, W): the masked image's
    counterpart of the ViT's own pooling ``pool`` (timm's ``global_pool``), equal to it when
    every weight is 1.

    - "avg", and "token" (no patch stands for the CLS token): the z-weighted mean;
    - "max": the per-feature maximum over the patches, each patch moved by 1 − z toward the
      image's per-feature minimum m: max_j (z_j·v_j + (1 − z_j)·m). A patch of weight 0
      cannot set a maximum, and a 0/1 mask gives exactly the maximum over the kept patches;
    - "avgmax": the mean of the two.
    """
    if pool in ("avg", "token", ""):
        return weighted_mean(tokens, weights)
    w = weights.unsqueeze(-1).to(tokens.dtype)  # (B, N, 1)
    floor = tokens.amin(dim=1, keepdim=True)  # (B, 1, W)
    top = (w * tokens + (1 - w) * floor).amax(dim=1)
    if pool == "max":
        return top
    if pool == "avgmax":
        return 0.5 * (top + weighted_mean(tokens, weights))
    raise ValueError(f"pool = {pool!r}: the masked embedding knows avg, token, max and avgmax")


class TowerFreezing(nn.Module):
    """Freezing of an open_clip backbone's two towers (``self.clip``: the timm trunk and the
    BERT transformer), shared by PatchIBModel and ConVIRTModel (train.staged_training)."""

    _backbone_frozen = False
    clip: nn.Module

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (phase 1) or unfreeze the image trunk and the BERT transformer.

        open_clip's projections (visual head, text proj), the new heads and logit_scale stay
        trainable. Dropout and train/eval mode stay the caller's, except for BatchNorm (the
        demo's convolutional stem, a ResNet): a frozen tower keeps its running statistics
        too, so its features are those it was pretrained with (see :meth:`train`).
        """
        self._backbone_frozen = frozen
        for module in (self.clip.visual.trunk, self.clip.text.transformer):
            for param in module.parameters():
                param.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> TowerFreezing:
        """nn.Module.train, with the BatchNorm layers of a frozen backbone kept in eval mode."""
        super().train(mode)
        if mode and self._backbone_frozen:
            for module in (self.clip.visual.trunk, self.clip.text.transformer):
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


class PatchIBModel(TowerFreezing):
    """One Patch-IB-CXR variant (A–E by ``params``) on a loaded backbone.

    Takes ownership of ``backbone.clip``: it becomes ``self.clip`` and its ``logit_scale`` is
    replaced by this model's, so build one PatchIBModel per loaded backbone.
    """

    def __init__(self, backbone: Backbone, params: ModelParams) -> None:
        super().__init__()
        params.validate()
        self.params = params
        self.clip = backbone.clip
        trunk = self.clip.visual.trunk
        _check_towers(self.clip, params.backbone)
        self.num_prefix = int(trunk.num_prefix_tokens)
        depth = len(trunk.blocks)
        if params.use_masking and params.mask_mode == "drop" and params.drop_layer >= depth:
            raise ParamsError(
                f"model.drop_layer = {params.drop_layer} must be < the depth of the backbone's "
                f"ViT ({depth} blocks in {params.backbone}); use 1..{depth - 1}, e.g. "
                f"{max(1, depth // 2)}"
            )
        vision_width = int(trunk.num_features)
        text_width = int(self.clip.text.config.hidden_size)

        # Replaces open_clip's; shared with self.clip so clip.get_logits agrees. Listed once,
        # as "logit_scale", by named_parameters().
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1 / params.temperature)), requires_grad=params.learn_temperature
        )
        self.clip.logit_scale = self.logit_scale
        self.register_buffer(
            "special_ids", torch.tensor(backbone.special_ids, dtype=torch.long), persistent=False
        )

        self.mask_head: MaskHead | None = None
        self.masked_proj: nn.Module | None = None
        self.local_image_proj: nn.Linear | None = None
        self.local_text_proj: nn.Linear | None = None
        if params.use_masking:
            self.mask_head = MaskHead(vision_width, normalize=params.mask_mode == "drop")
            # A copy of open_clip's visual head: the masked embedding starts from the same
            # projection into the joint space as the global one, not from a random one.
            self.masked_proj = copy.deepcopy(self.clip.visual.head)
            if params.mask_noise:
                # Running per-feature mean and sd of the patch tokens (as BatchNorm's): the
                # noise that replaces what the mask removes (see _masked).
                self.register_buffer("patch_mean", torch.zeros(vision_width))
                self.register_buffer("patch_std", torch.ones(vision_width))
        if params.use_local_alignment or params.use_masking:
            self.local_image_proj = nn.Linear(vision_width, params.local_dim)
        if params.use_local_alignment:
            self.local_text_proj = nn.Linear(text_width, params.local_dim)

    # --- image ----------------------------------------------------------------------------

    def encode_image(self, images: Tensor) -> ImageOutput:
        """(B, 3, H, W) normalised images -> ImageOutput."""
        if self.params.use_masking and self.params.mask_mode == "drop":
            return self._encode_image_drop(images)
        trunk = self.clip.visual.trunk
        tokens = trunk.forward_features(images)  # (B, P + N, W), after the final norm
        global_emb = self._global(tokens)
        patches = tokens[:, self.num_prefix :]  # (B, N, W)
        patch_emb = self.local_image_proj(patches) if self.local_image_proj is not None else None
        if self.mask_head is None:
            return ImageOutput(global_emb, patch_emb, None, None, None, None)
        logits = self.mask_head(patches)  # (B, N)
        if self.params.mask_mode == "topk":
            k = num_kept(patches.shape[1], self.params.keep_ratio)
            z = soft_topk(logits, k, self.params.topk_temperature)
        else:
            z = torch.sigmoid(logits)
        masked_emb = self._masked(patches, z)
        return ImageOutput(global_emb, patch_emb, z, z, masked_emb, None)

    def _encode_image_drop(self, images: Tensor) -> ImageOutput:
        """Mode E: score patches after block ``drop_layer``, keep the top K, run on with those.

        The kept tokens are multiplied by ``1 + z - z.detach()``: their values are unchanged
        (the pretrained blocks see what they were trained on) while the gradient reaching z is
        the token's contribution to the loss (straight-through), so the mask head learns.
        """
        trunk = self.clip.visual.trunk
        p, layer = self.num_prefix, self.params.drop_layer
        x = trunk.patch_embed(images)
        x = trunk._pos_embed(x)  # prepends the prefix tokens, adds position embeddings
        x = trunk.norm_pre(trunk.patch_drop(x))
        x = _run_blocks(trunk, trunk.blocks[:layer], x)  # (B, P + N, W)
        prefix, patches = x[:, :p], x[:, p:]
        z = torch.sigmoid(self.mask_head(patches))  # (B, N)
        k = num_kept(patches.shape[1], self.params.keep_ratio)
        kept_index = z.detach().topk(k, dim=1).indices.sort(dim=1).values  # (B, K), in order
        z_kept = z.gather(1, kept_index)  # (B, K)
        kept = patches.gather(1, kept_index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        kept = kept * (1 + z_kept - z_kept.detach()).unsqueeze(-1)
        x = _run_blocks(trunk, trunk.blocks[layer:], torch.cat([prefix, kept], dim=1))
        tokens = trunk.norm(x)  # (B, P + K, W)
        global_emb = self._global(tokens)
        kept_tokens = tokens[:, p:]  # (B, K, W)
        patch_emb = self.local_image_proj(kept_tokens)
        masked_emb = self._masked(kept_tokens, z_kept)
        return ImageOutput(global_emb, patch_emb, z_kept, z, masked_emb, kept_index)

    def _global(self, tokens: Tensor) -> Tensor:
        """open_clip's visual path from final tokens: timm pooling (+ fc_norm), then its head."""
        pooled = self.clip.visual.trunk.forward_head(tokens)  # (B, W)
        return F.normalize(self.clip.visual.head(pooled), dim=-1)

    def _masked(self, patches: Tensor, z: Tensor) -> Tensor:
        """(B, N, W), (B, N) -> (B, d): the masked image's embedding through masked_proj.

        Default: the patches pooled as the ViT pools them, weighted by z
        (:func:`masked_pool`: the z-weighted mean for ``vision_pool: avg``, a maximum over
        the patches moved toward their minimum by 1 − z for ``max``). With
        ``model.mask_noise`` (the information bottleneck of Schulz et al. 2020): each patch
        becomes z·v + (1 − z)·ε, ε drawn from the patch features' per-feature normal (its
        running mean in eval mode, so inference is deterministic), and the embedding is the
        plain pooling of those. A weighted mean is blind to the mask's overall level and,
        when the full embedding is itself the patch mean (``vision_pool: avg``), a uniform
        mask reproduces it exactly: nothing asks the mask to choose. With noise, each unit
        of z buys information, so a mask of fixed mass keeps most by sitting on the patches
        that say most about the report.
        """
        trunk = self.clip.visual.trunk
        pool = getattr(trunk, "global_pool", "avg")
        if not self.params.mask_noise:
            pooled = trunk.fc_norm(masked_pool(patches, z, pool))
            return F.normalize(self.masked_proj(pooled), dim=-1)
        if self.training:
            feats = patches.detach().float().flatten(0, 1)  # (B·N, W)
            mean, std = feats.mean(0), feats.std(0)
            with torch.no_grad():
                self.patch_mean.lerp_(mean.to(self.patch_mean.dtype), 0.1)
                self.patch_std.lerp_(std.to(self.patch_std.dtype), 0.1)
            noise = mean.to(patches.dtype) + std.to(patches.dtype) * torch.randn_like(patches)
        else:
            noise = self.patch_mean.to(patches.dtype).expand_as(patches)
        keep = z.unsqueeze(-1).to(patches.dtype)
        mixed = keep * patches + (1 - keep) * noise
        pooled = trunk.fc_norm(masked_pool(mixed, torch.ones_like(z), pool))
        return F.normalize(self.masked_proj(pooled), dim=-1)

    # --- text -----------------------------------------------------------------------------

    def encode_text(self, token_ids: Tensor) -> TextOutput:
        """(B, L) long token ids, padded with the tokenizer's pad id -> TextOutput.

        On the CPU a batch whose reports differ much in length goes through the text tower
        in two calls, short reports and long ones, each padded to its own longest
        (:func:`length_groups`): the same per-report outputs (BERT attends within a report,
        and padding is masked) for up to a third less compute.
        """
        attention = (token_ids != self.clip.text.config.pad_token_id).long()
        hidden, pooled = run_text_tower(self._text_tower, token_ids, attention)
        global_emb = F.normalize(pooled, dim=-1)
        if self.local_text_proj is None:
            return TextOutput(global_emb, None, None)
        word_emb = self.local_text_proj(hidden)  # (B, L, l); padding rows are masked
        word_mask = attention.bool() & ~torch.isin(token_ids, self.special_ids)
        return TextOutput(global_emb, word_emb, word_mask)

    def _text_tower(self, token_ids: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
        """open_clip's text path: (last hidden states (B, L, W), projected pooling (B, d))."""
        text = self.clip.text
        out = text.transformer(input_ids=token_ids, attention_mask=attention)
        return out.last_hidden_state, text.proj(text.pooler(out, attention))

    def forward(self, images: Tensor, token_ids: Tensor) -> tuple[ImageOutput, TextOutput]:
        return self.encode_image(images), self.encode_text(token_ids)

    # --- spatial maps (lib/eval/phrase_maps.py) -----------------------------------------------

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the ViT's patch grid."""
        gh, gw = self.clip.visual.trunk.patch_embed.grid_size
        return int(gh), int(gw)

    def patch_tokens(self, images: Tensor) -> Tensor:
        """(B, N, d) float32 L2-normalised: each final patch token taken through the global
        image head, as the pooled token is (MaskCLIP's reading of a CLIP)."""
        trunk = self.clip.visual.trunk
        tokens = trunk.forward_features(images)[:, self.num_prefix :]  # (B, N, W)
        return F.normalize(self.clip.visual.head(trunk.fc_norm(tokens)).float(), dim=-1)


def _run_blocks(trunk: nn.Module, blocks: nn.Sequential, x: Tensor) -> Tensor:
    """Run a slice of the ViT's blocks, with activation checkpointing if the trunk uses it."""
    if getattr(trunk, "grad_checkpointing", False) and torch.is_grad_enabled():
        from timm.models import checkpoint_seq

        return checkpoint_seq(blocks, x)
    return blocks(x)


def _check_towers(clip: nn.Module, spec: str) -> None:
    """The model reaches into timm's ViT and open_clip's HF text tower; fail early otherwise."""
    trunk = getattr(getattr(clip, "visual", None), "trunk", None)
    needed = ("patch_embed", "_pos_embed", "blocks", "norm", "fc_norm", "forward_head")
    if trunk is None or not all(hasattr(trunk, a) for a in needed):
        raise ParamsError(
            f"model.backbone = {spec!r}: the vision tower must be a timm VisionTransformer "
            "(open_clip vision_cfg.timm_model_name, as BiomedCLIP); choose such a backbone"
        )
    if getattr(trunk, "cls_token", None) is None:
        raise ParamsError(
            f"model.backbone = {spec!r}: the ViT has no CLS token; use a ViT with class token"
        )
    text = getattr(clip, "text", None)
    if not all(hasattr(text, a) for a in ("transformer", "pooler", "proj", "config")):
        raise ParamsError(
            f"model.backbone = {spec!r}: the text tower must be a Hugging Face model "
            "(open_clip text_cfg.hf_model_name, as BiomedCLIP); choose such a backbone"
        )


def run_text_tower(
    tower: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], token_ids: Tensor, attention: Tensor
) -> tuple[Tensor, Tensor]:
    """``tower(token_ids, attention)`` -> (hidden (B, L, W), pooled (B, ·)) on the batch, in
    the two calls of :func:`length_groups` where that saves compute: the same per-text
    outputs (BERT attends within a text and padding is masked), hidden states padded back to
    the batch's width."""
    groups = length_groups(attention)
    if groups is None:
        return tower(token_ids, attention)
    parts = [tower(token_ids[g, :n], attention[g, :n]) for g, n in groups]
    inverse = torch.argsort(torch.cat([g for g, _ in groups]))
    width = token_ids.shape[1]
    hidden = torch.cat([F.pad(h, (0, 0, 0, width - h.shape[1])) for h, _ in parts])
    return hidden[inverse], torch.cat([p for _, p in parts])[inverse]


# length_groups splits a batch only if that saves at least this share of its token slots.
MIN_GROUP_SAVING = 0.2


def length_groups(attention: Tensor) -> list[tuple[Tensor, int]] | None:
    """Two groups of a batch's rows by text length, or None for one text-tower call.

    attention (B, L) 1 for real tokens (right-padded). Sorted by length, the cut k minimises
    the token slots k·len_k + (B − k)·len_max that two calls pad to; returns [(row indices,
    padded width)] for the short and the long rows if that saves at least
    MIN_GROUP_SAVING of the B·len_max of one call. Only on the CPU and outside
    torch.compile: it reads the lengths on the host, which a GPU step must not do.
    """
    if attention.device.type != "cpu" or torch.compiler.is_compiling() or len(attention) < 4:
        return None
    lengths = attention.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    s = lengths[order].tolist()
    b, longest = len(s), s[-1]
    k = min(range(1, b), key=lambda i: i * s[i - 1] + (b - i) * longest)
    if k * s[k - 1] + (b - k) * longest > (1 - MIN_GROUP_SAVING) * b * longest:
        return None
    return [(order[:k], max(1, s[k - 1])), (order[k:], max(1, longest))]


def trim_padding(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the trailing columns that are padding in every row of the batch.

    Exact (padding is masked and position embeddings are absolute) and it makes the text
    tower and the word-patch alignment cost scale with the batch's longest report, not
    with the context length.
    """
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens[:, :1]
