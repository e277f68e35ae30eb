"""The VQA model of stage vqa@X: SSG-VQA-Net's scene-graph encoder and Scene-Embedded
Interaction (SIM) on a backbone's patch and question-token features.

Inputs per question (B questions): question token features (B, L, Dt) with their mask
(B, L), image patch features (B, N, Dv) with their cells as boxes (N, 6), scene nodes
(B, S) region / entity ids and
(B, S, 6) box features (x1, y1, x2, y2, w, h in [0, 1]) with their mask (B, S).

- Scene-graph encoder: 6 box + 64-d region embedding + 64-d entity embedding = 134 → hidden.
- SIM: ``layers`` cross-modal layers; in each, the question tokens attend to the image
  patches and scene nodes together, then the patches and the nodes attend to the question.
- Heads on the fused vector: binary (2), category, region, severity, and the CheXpert
  auxiliary head (14 logits, trained by masked BCE at ``aux_weight``).

``image=False`` is the question-only floor: no patch, no scene node; the same layers then
attend from the question to itself, so the heads see the language prior alone.
The last layer's question→patch attention (mean over heads and question tokens) is returned
for attention plausibility (IoU with the answer boxes) and entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS = ("binary", "category", "region", "severity")
N_CHEXPERT = 14
BOX_DIM, EMB_DIM = 6, 64


@dataclass(frozen=True)
class VQAOutput:
    logits: dict[str, Tensor]  # head -> (B, n_classes)
    chexpert: Tensor  # (B, 14)
    patch_attention: Tensor | None  # (B, N) sums to 1; None without an image


class SceneEncoder(nn.Module):
    """(B, S) region and entity ids, (B, S, 6) boxes -> (B, S, hidden). Id 0 = unknown."""

    def __init__(self, n_regions: int, n_entities: int, hidden: int) -> None:
        super().__init__()
        self.region = nn.Embedding(n_regions + 1, EMB_DIM)
        self.entity = nn.Embedding(n_entities + 1, EMB_DIM)
        self.proj = nn.Sequential(nn.Linear(BOX_DIM + 2 * EMB_DIM, hidden), nn.GELU())

    def forward(self, boxes: Tensor, region: Tensor, entity: Tensor) -> Tensor:
        return self.proj(torch.cat([boxes, self.region(region), self.entity(entity)], dim=-1))


class SIMLayer(nn.Module):
    """One Scene-Embedded Interaction layer: question ← (patches, nodes), then
    (patches, nodes) ← question; residual + LayerNorm, a feed-forward on the question."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.q_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.v_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.q_norm, self.v_norm, self.f_norm = (nn.LayerNorm(hidden) for _ in range(3))
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 2 * hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, hidden),
        )

    def forward(
        self, q: Tensor, q_pad: Tensor, kv: Tensor, kv_pad: Tensor, update_kv: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        att, weights = self.q_attn(q, kv, kv, key_padding_mask=kv_pad, need_weights=True)
        q = self.q_norm(q + att)
        q = self.f_norm(q + self.ffn(q))
        if update_kv:
            back, _ = self.v_attn(kv, q, q, key_padding_mask=q_pad, need_weights=False)
            kv = self.v_norm(kv + back)
        return q, kv, weights  # weights (B, L, N + S), mean over heads


class VQAModel(nn.Module):
    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        n_classes: dict[str, int],
        n_regions: int,
        n_entities: int,
        hidden: int,
        heads: int,
        layers: int,
        dropout: float,
        image: bool = True,
    ) -> None:
        super().__init__()
        self.image = image
        self.text_proj = nn.Sequential(nn.Linear(text_dim, hidden), nn.LayerNorm(hidden))
        self.image_proj = nn.Sequential(nn.Linear(image_dim, hidden), nn.LayerNorm(hidden))
        # each patch's cell as a box, like the scene nodes': where-questions need to know
        # where the attended patches are (the towers' own position signal is faint)
        self.patch_pos = nn.Linear(BOX_DIM, hidden)
        self.scene = SceneEncoder(n_regions, n_entities, hidden)
        self.layers = nn.ModuleList(SIMLayer(hidden, heads, dropout) for _ in range(layers))
        fused = 2 * hidden if image else hidden
        self.heads = nn.ModuleDict({h: nn.Linear(fused, n_classes[h]) for h in HEADS})
        self.chexpert = nn.Linear(fused, N_CHEXPERT)

    def forward(
        self,
        q_tokens: Tensor,
        q_mask: Tensor,
        patches: Tensor | None = None,
        scene_boxes: Tensor | None = None,
        scene_region: Tensor | None = None,
        scene_entity: Tensor | None = None,
        scene_mask: Tensor | None = None,
        patch_boxes: Tensor | None = None,
    ) -> VQAOutput:
        q = self.text_proj(q_tokens)
        q_pad = ~q_mask
        if self.image:
            assert patches is not None
            v = self.image_proj(patches)
            if patch_boxes is not None:
                v = v + self.patch_pos(patch_boxes)
            n = v.shape[1]
            nodes = self.scene(scene_boxes, scene_region, scene_entity)
            kv = torch.cat([v, nodes], dim=1)
            kv_pad = torch.cat([torch.zeros_like(v[..., 0], dtype=torch.bool), ~scene_mask], 1)
        else:
            kv, kv_pad, n = q, q_pad, 0
        weights = None
        for layer in self.layers:
            q, kv, weights = layer(q, q_pad, kv, kv_pad, update_kv=self.image)
            if not self.image:
                kv = q
        keep = q_mask.unsqueeze(-1).float()
        pooled = (q * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        attention = None
        if self.image:
            v_pooled = kv[:, :n].mean(1)
            pooled = torch.cat([pooled, v_pooled], dim=-1)
            w = (weights[:, :, :n] * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (B, N)
            attention = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        logits = {h: head(pooled) for h, head in self.heads.items()}
        return VQAOutput(logits, self.chexpert(pooled), attention)


def grid_boxes(rows: int, cols: int) -> Tensor:
    """(rows · cols, 6) boxes of a patch grid, row-major: x1, y1, x2, y2, w, h in [0, 1]."""
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    x1, y1 = x.flatten() / cols, y.flatten() / rows
    w, h = torch.full_like(x1, 1 / cols), torch.full_like(y1, 1 / rows)
    return torch.stack([x1, y1, x1 + w, y1 + h, w, h], dim=1).float()


def vqa_loss(
    out: VQAOutput, head_index: Tensor, targets: Tensor, chexpert: Tensor, aux_weight: float
) -> Tensor:
    """Cross-entropy of each question on its own head (``head_index`` into HEADS,
    ``targets`` its class) + ``aux_weight`` × masked BCE of the CheXpert labels (1/0; -1
    ignored)."""
    losses = []
    for i, h in enumerate(HEADS):
        rows = head_index == i
        if rows.any():
            losses.append(F.cross_entropy(out.logits[h][rows], targets[rows], reduction="sum"))
    loss = torch.stack(losses).sum() / max(len(targets), 1)
    if aux_weight > 0:
        known = chexpert >= 0
        if known.any():
            bce = F.binary_cross_entropy_with_logits(out.chexpert[known], chexpert[known].float())
            loss = loss + aux_weight * bce
    return loss


def attention_entropy(attention: Tensor) -> Tensor:
    """(B, N) distributions -> (B,) entropy normalised by log N (1 = uniform)."""
    p = attention.clamp_min(1e-12)
    return -(p * p.log()).sum(-1) / torch.log(torch.tensor(float(attention.shape[-1])))
