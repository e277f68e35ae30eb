"""Training losses of the Patch-IB-CXR variants, as pure functions of tensors.

- ``clip_loss``: the global image–report InfoNCE every variant trains with (Model A and up).
- ``local_alignment_loss``: GLoRIA-style word→patch attention, contrastive over the batch.
- ``sparsity_loss`` / ``consistency_loss``: the information-bottleneck terms of the masked
  variants — keep about ``keep_ratio`` of the patches, and keep what they say about the report.
- ``mask_guide_loss``: our addition (``model.mask_guide_weight``): the mask learns where the
  report's words attend, so that it chooses patches at all.
- ``compute_losses``: the terms a variant's ``ModelParams`` switch on, unweighted, plus the
  weighted ``total`` that is back-propagated.

Shapes: B images / reports per batch, d the joint embedding size, N patches, L word slots,
Dl the local (word/patch) feature size. Batches never hold two images of one study (the
sampler guarantees it), so image i's only positive is report i: plain diagonal targets.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lib.config.params import ModelParams

# CLIP clamps the inverse temperature exp(logit_scale) at 100 (temperature >= 0.01):
# beyond it the logits saturate and training becomes unstable. The parameter itself is the
# log, so the optimizer step clamps it at log(100) (lib/train/loop.py): past that its
# gradient here would be zero and it could never come back.
MAX_INVERSE_TEMPERATURE = 100.0
MAX_LOGIT_SCALE = math.log(MAX_INVERSE_TEMPERATURE)
# Elements of one (images-chunk × B·L × Dl) context tensor in local_alignment_loss: 2**26
# values = 256 MiB in float32 each, a few of which are alive at once per chunk.
LOCAL_CHUNK_ELEMENTS = 2**26

Aggregate = Literal["lse", "mean"]
LocalMode = Literal["all_pairs", "within_pair"]


def inverse_temperature(logit_scale: Tensor) -> Tensor:
    """exp(logit_scale) clamped at 100, as CLIP does (scalar tensor; no gradient above 100)."""
    return logit_scale.exp().clamp(max=MAX_INVERSE_TEMPERATURE)


def clip_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor,
    w_i2t: float = 0.5,
    w_t2i: float = 0.5,
) -> Tensor:
    """InfoNCE between L2-normalised image and text embeddings, both directions.

    image_emb, text_emb: (B, d), row i of each is a positive pair. logit_scale: scalar, the
    log of the inverse temperature. Returns w_i2t·CE(image→text) + w_t2i·CE(text→image); at
    0.5/0.5 this is exactly ``open_clip.loss.ClipLoss()(image_emb, text_emb, scale)`` with
    scale = exp(logit_scale) as long as that stays below the clamp at 100.
    """
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    _check_weights(w_i2t, w_t2i)
    logits = inverse_temperature(logit_scale) * image_emb @ text_emb.T  # (B_img, B_txt)
    return _infonce(logits, w_i2t, w_t2i)


def local_alignment_loss(
    word_emb: Tensor,
    word_mask: Tensor | None,
    patch_emb: Tensor,
    patch_weight: Tensor | None,
    temperature: float | Tensor,
    *,
    mode: LocalMode = "all_pairs",
    aggregate: Aggregate = "lse",
    gamma: float = 5.0,
    pair_scale: float = 10.0,
    w_i2t: float = 0.5,
    w_t2i: float = 0.5,
    max_chunk_elements: int = LOCAL_CHUNK_ELEMENTS,
) -> Tensor:
    """Word↔patch local alignment; ``mode`` picks GLoRIA's or MGCA's contrast.

    word_emb (B, L, Dl), word_mask (B, L) bool (True = real word; None = all real),
    patch_emb (B, N, Dl), patch_weight (B, N) in [0, 1] (None = all ones).

    Attention: words attend over patches with softmax(cos(word, patch) / temperature),
    multiplied by patch_weight and renormalised, so a patch of weight 0 contributes nothing
    (an image whose weights are all 0 gives zero context vectors, cosine 0). Word and patch
    features are L2-normalised first, so ``temperature`` means the same whatever their scale.

    - ``mode="all_pairs"`` (GLoRIA; the default): contrastive over every (image i, report j)
      pair of the batch. The words of report j attend over the patches of image i; each word
      gets a context vector, and cos(word, context) is pooled over the real words of j:

      - "lse": (1/γ)·log mean_l exp(γ·cos) — GLoRIA's γ2 = 5 soft maximum, minus
        log(#words) and divided by γ so that it stays in [-1, 1] and long reports get no
        bonus of log(#words) over short ones (GLoRIA omits both);
      - "mean": the plain mean.

      This gives a (B, B) similarity matrix; InfoNCE over the batch in both directions at
      ``pair_scale`` (GLoRIA's γ3 = 10) makes it contrastive: a collapsed model, where every
      word and patch is the same vector, scores every pair alike and pays log(B).
      Cost O(B²·L·N) in compute; memory O(B²·L·Dl), see :func:`_local_pair_similarity`.
    - ``mode="within_pair"`` (MGCA's token-level alignment): only matching pairs. Inside
      pair i, each real word's context (over image i's patches) must identify that word among
      the report's words, and each patch's context (over report i's real words) must identify
      that patch among the image's patches: InfoNCE over tokens at ``pair_scale``, weighted
      w_t2i (word anchors) and w_i2t (patch anchors; each patch counts with its weight,
      detached, so masked-out patches are not asked to explain the text). Cost O(B·L·N); it
      learns which patch goes with which word but contrasts no image against other reports
      (the global loss does that).
    """
    _check_weights(w_i2t, w_t2i)
    if word_emb.ndim != 3 or patch_emb.ndim != 3:
        raise ValueError(
            f"word_emb {tuple(word_emb.shape)} and patch_emb {tuple(patch_emb.shape)} must be "
            "(B, L, Dl) and (B, N, Dl)"
        )
    b, n_words, dim = word_emb.shape
    if patch_emb.shape[0] != b or patch_emb.shape[2] != dim:
        raise ValueError(
            f"patch_emb {tuple(patch_emb.shape)} does not match word_emb "
            f"{tuple(word_emb.shape)}: need the same batch size B and feature size Dl"
        )
    n_patches = patch_emb.shape[1]
    if word_mask is None:
        word_mask = torch.ones(b, n_words, dtype=torch.bool, device=word_emb.device)
    if word_mask.shape != (b, n_words):
        raise ValueError(
            f"word_mask {tuple(word_mask.shape)} must be (B, L) = {(b, n_words)}, like word_emb"
        )
    word_mask = word_mask.bool()
    if patch_weight is not None and patch_weight.shape != (b, n_patches):
        raise ValueError(
            f"patch_weight {tuple(patch_weight.shape)} must be (B, N) = {(b, n_patches)}, "
            "like patch_emb, or None for all ones"
        )
    if mode not in ("all_pairs", "within_pair"):
        raise ValueError(f"mode = {mode!r}: use 'all_pairs' or 'within_pair' (model.local_mode)")
    if aggregate not in ("lse", "mean"):
        raise ValueError(f"aggregate = {aggregate!r}: use 'lse' or 'mean'")
    if gamma <= 0 or pair_scale <= 0:
        raise ValueError(f"gamma = {gamma} and pair_scale = {pair_scale} must both be > 0")
    if isinstance(temperature, int | float) and temperature <= 0:
        raise ValueError(f"temperature = {temperature} must be > 0 (e.g. 0.1)")
    if _debug_checks(word_mask):
        empty = (~word_mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"reports {empty[:10]} of the batch have no real word in word_mask; every "
                "report needs at least one token (check the tokenizer's mask and the "
                "empty-text QC)"
            )

    words = F.normalize(word_emb, dim=-1)  # (B, L, Dl)
    patches = F.normalize(patch_emb, dim=-1)  # (B, N, Dl)
    if mode == "within_pair":
        return _within_pair_loss(
            words, word_mask, patches, patch_weight, temperature, pair_scale, w_i2t, w_t2i
        )
    pair_sim = functools.partial(
        _local_pair_similarity,
        word_mask=word_mask,
        temperature=temperature,
        aggregate=aggregate,
        gamma=gamma,
    )
    weight = None if patch_weight is None else patch_weight.to(patches.dtype)
    per_image = b * n_words * dim
    chunk = max(1, max_chunk_elements // max(1, per_image))
    parts = []
    for start in range(0, b, chunk):
        w = None if weight is None else weight[start : start + chunk]
        parts.append(pair_sim(words, patches[start : start + chunk], w))
    sim = torch.cat(parts)  # (B_img, B_txt)
    return _infonce(pair_scale * sim, w_i2t, w_t2i)


def _debug_checks(word_mask: Tensor) -> bool:
    """Whether to run checks that read values back to the host: on CPU tensors only, where
    that is free. On a GPU each would stall the step; there the QC stage's empty-text check
    keeps empty reports out, and the training loop's NaN stop catches what gets through."""
    return word_mask.device.type == "cpu" and not torch.compiler.is_compiling()


def _attend(
    query: Tensor, keys: Tensor, weight: Tensor | None, temperature: float | Tensor
) -> Tensor:
    """Weighted attention of unit queries over unit keys (the keys are also the values), up
    to a positive factor per row.

    query (c, Q, D), or (1, Q, D) broadcast over c; keys (c, K, D); weight (c, K) or None.
    Returns (c, Q, D): Σ_k softmax(q·k/τ)_k·w_k·k, which is the context
    softmax(q·k/τ + log w)·k = Σ_k softmax(q·k/τ)_k·w_k·k / Σ_k softmax(q·k/τ)_k·w_k times
    that row's denominator. The callers use only its direction (a cosine, or a normalised
    vector), so the denominator is never formed; rows whose weights are all 0 give 0.

    One ``scaled_dot_product_attention`` call with the weighted keys as values: flash /
    memory-efficient kernels on a GPU, the fused CPU kernel otherwise, so the (c, Q, K)
    attention is never stored, and the weights get their gradient through the values.
    """
    c = keys.shape[0]
    values = keys if weight is None else keys * weight[..., None]
    q = (query / temperature).expand(c, -1, -1)
    out = F.scaled_dot_product_attention(q[:, None], keys[:, None], values[:, None], scale=1.0)
    return out[:, 0]


def _context_cosine(context: Tensor, anchors: Tensor) -> Tensor:
    """cos(anchor, context) per row; anchors are unit vectors. A zero context gives 0;
    clamping the squared norm, not the norm, keeps its gradient at 0 finite."""
    norm = context.square().sum(-1).clamp_min(1e-16).sqrt()
    return (context * anchors).sum(-1) / norm


def _local_pair_similarity(
    words: Tensor,
    patches: Tensor,
    weight: Tensor | None,
    *,
    word_mask: Tensor,
    temperature: float | Tensor,
    aggregate: Aggregate,
    gamma: float,
) -> Tensor:
    """Similarity of a chunk of c images to all B reports: (c, B).

    words (B, L, Dl) unit rows; patches (c, N, Dl) unit rows; weight (c, N) patch weights.
    The words of all B reports are one query sequence of B·L per image, so a chunk is one
    fused attention call; autograd keeps its (c, B·L, Dl) output, not the (c, B·L, N)
    attention: O(B²·L·Dl) memory for the whole batch.
    """
    c = patches.shape[0]
    b, n_words = word_mask.shape
    flat = words.reshape(1, b * n_words, -1)  # (1, B·L, Dl)
    context = _attend(flat, patches, weight, temperature)  # (c, B·L, Dl)
    cos = _context_cosine(context, flat).reshape(c, b, n_words)
    real = word_mask[None]  # (1, B, L)
    n_real = real.sum(-1).to(cos.dtype)  # (1, B)
    if aggregate == "mean":
        return (cos * real).sum(-1) / n_real
    pooled = torch.logsumexp((gamma * cos).masked_fill(~real, -math.inf), dim=-1)
    return (pooled - n_real.log()) / gamma


def _within_pair_loss(
    words: Tensor,
    word_mask: Tensor,
    patches: Tensor,
    patch_weight: Tensor | None,
    temperature: float | Tensor,
    pair_scale: float,
    w_i2t: float,
    w_t2i: float,
) -> Tensor:
    """MGCA-style token-level InfoNCE inside each matching pair (see local_alignment_loss)."""
    weight = None if patch_weight is None else patch_weight.to(patches.dtype)
    real = word_mask.to(words.dtype)  # (B, L)
    # Words → patches of their own image; each real word must pick its own context among
    # the contexts of its report's real words.
    word_ctx = F.normalize(_attend(words, patches, weight, temperature), dim=-1, eps=1e-8)
    logits = pair_scale * words @ word_ctx.transpose(1, 2)  # (B, L anchors, L candidates)
    logits = logits.masked_fill(~word_mask[:, None, :], -math.inf)
    word_ce = _diagonal_ce(logits).masked_fill(~word_mask, 0)  # (B, L)
    word_loss = (word_ce.sum(-1) / real.sum(-1).clamp_min(1)).mean()
    # Patches → real words of their own report (padding words weigh 0); each patch must
    # pick its own context.
    patch_ctx = F.normalize(_attend(patches, words, real, temperature), dim=-1, eps=1e-8)
    patch_ce = _diagonal_ce(pair_scale * patches @ patch_ctx.transpose(1, 2))  # (B, N)
    if weight is None:
        patch_loss = patch_ce.mean()
    else:
        w = weight.detach()
        patch_loss = ((patch_ce * w).sum(-1) / w.sum(-1).clamp_min(1e-6)).mean()
    return w_t2i * word_loss + w_i2t * patch_loss


def sparsity_loss(mask: Tensor, keep_ratio: float) -> Tensor:
    """(mean_j z_ij − keep_ratio)² averaged over images; mask (B, N) of z in [0, 1].

    Penalises the fraction of patches kept per image, not each z, so the model is free to
    choose which patches to keep.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, N): one weight per patch")
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio = {keep_ratio} must be in (0, 1] (model.keep_ratio)")
    return ((mask.mean(dim=1) - keep_ratio) ** 2).mean()


def consistency_loss(
    masked_emb: Tensor,
    full_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor,
) -> Tensor:
    """Keep the masked image embedding's behaviour close to the full image's.

    masked_emb, full_emb, text_emb: (B, d) L2-normalised; logit_scale: scalar (log).

    KL(p_full ‖ p_masked) over the image→text rows, with p = softmax(image·textᵀ·s) and
    p_full detached (the full image is the teacher: the mask should learn to preserve what
    the full embedding says, not drag it towards the masked one), averaged over images;

    plus the symmetric InfoNCE of the masked embedding against the texts (0.5/0.5). Why both:
    the KL alone only copies the teacher, which early in training is near uniform and
    rewards any mask; the InfoNCE term asks the kept patches to identify their own report,
    which is the bottleneck's aim (keep what predicts the text). The two are summed with
    equal weight; ``cons_weight`` scales the sum.
    """
    _check_pair(masked_emb, text_emb, "masked_emb", "text_emb")
    _check_pair(full_emb, text_emb, "full_emb", "text_emb")
    scale = inverse_temperature(logit_scale)
    teacher = F.log_softmax(scale * full_emb @ text_emb.T, dim=1).detach()  # (B, B)
    student = F.log_softmax(scale * masked_emb @ text_emb.T, dim=1)
    kl = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    nce = _infonce(scale * masked_emb @ text_emb.T, 0.5, 0.5)
    return kl + nce


def mask_guide_loss(
    mask: Tensor, patch_emb: Tensor, word_emb: Tensor, word_mask: Tensor | None, temperature: float
) -> Tensor:
    """KL(t ‖ z / Σz): the mask's share of each patch against where its report's words look.

    mask (B, N') z of the patches in patch_emb (B, N', l) (all N patches in C and D; the K
    kept ones in E); word_emb (B, L, l); word_mask (B, L) bool, None = all real. t_i is the
    local alignment's attention of report i's words over image i's patches,
    softmax_j(cos(word, patch_j) / temperature), averaged over its real words, detached: the
    teacher. Gradients flow through z only: into the mask head and, through the patch tokens
    it scores, into the image trunk (unless frozen); never into the teacher's side.

    Why (not in the specification; ``model.mask_guide_weight``, 0 = off): L_sparse fixes
    the mask's mean and L_cons asks the z-weighted patch mean to behave like the full
    image, and a uniform z = keep_ratio meets both exactly, since the weighted mean of a
    uniform mask *is* the full mean. Nothing in them asks the mask to choose. This term
    asks it to keep the patches its report is grounded in, which the local alignment
    already finds.
    """
    words = F.normalize(word_emb.detach().float(), dim=-1)
    patches = F.normalize(patch_emb.detach().float(), dim=-1)
    att = (words @ patches.transpose(1, 2) / temperature).softmax(dim=-1)  # (B, L, N')
    if word_mask is None:
        target = att.mean(dim=1)
    else:
        real = word_mask.to(att.dtype)[..., None]  # (B, L, 1)
        target = (att * real).sum(1) / real.sum(1).clamp_min(1.0)  # (B, N')
    share = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1e-6)
    return F.kl_div(share.clamp_min(1e-12).log(), target, reduction="batchmean")


def compute_losses(
    img: Any, txt: Any, logit_scale: Tensor, params: ModelParams
) -> dict[str, Tensor]:
    """The loss terms a variant uses, unweighted, plus their weighted sum "total".

    img: has global_emb, and (as the variant needs) patch_emb, patch_weight, mask,
    masked_emb (the model's ImageOutput); txt: global_emb, word_emb, word_mask (TextOutput).
    Keys: "clip" always; "local" with params.use_local_alignment; "sparse" and "cons" with
    params.use_masking, and "guide" with both and mask_guide_weight > 0; "total" = clip +
    local_weight·local + sparse_weight·sparse + cons_weight·cons + mask_guide_weight·guide.
    The local InfoNCE uses the same direction weights as the global one.
    """
    w_i2t, w_t2i = params.contrastive_weight_i2t, params.contrastive_weight_t2i
    out = {"clip": clip_loss(img.global_emb, txt.global_emb, logit_scale, w_i2t, w_t2i)}
    total = out["clip"]
    if params.use_local_alignment:
        word_emb = _need(txt, "word_emb", "use_local_alignment")
        patch_emb = _need(img, "patch_emb", "use_local_alignment")
        out["local"] = local_alignment_loss(
            word_emb,
            getattr(txt, "word_mask", None),
            patch_emb,
            getattr(img, "patch_weight", None),
            params.local_temperature,
            mode=params.local_mode,
            w_i2t=w_i2t,
            w_t2i=w_t2i,
        )
        total = total + params.local_weight * out["local"]
    if params.use_masking:
        mask = _need(img, "mask", "use_masking")
        masked_emb = _need(img, "masked_emb", "use_masking")
        out["sparse"] = sparsity_loss(mask, params.keep_ratio)
        out["cons"] = consistency_loss(masked_emb, img.global_emb, txt.global_emb, logit_scale)
        total = total + params.sparse_weight * out["sparse"] + params.cons_weight * out["cons"]
    if params.use_masking and params.use_local_alignment and params.mask_guide_weight > 0:
        out["guide"] = mask_guide_loss(
            _need(img, "patch_weight", "mask_guide_weight"),
            _need(img, "patch_emb", "mask_guide_weight"),
            _need(txt, "word_emb", "mask_guide_weight"),
            getattr(txt, "word_mask", None),
            params.local_temperature,
        )
        total = total + params.mask_guide_weight * out["guide"]
    out["total"] = total
    return out


def _infonce(logits: Tensor, w_i2t: float, w_t2i: float) -> Tensor:
    """Weighted two-way cross-entropy of a (B, B) logit matrix with positives on the diagonal."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return w_i2t * F.cross_entropy(logits, target) + w_t2i * F.cross_entropy(logits.T, target)


def _diagonal_ce(logits: Tensor) -> Tensor:
    """(B, T, T) logits -> (B, T) cross-entropy of row t with target t."""
    b, t, _ = logits.shape
    target = torch.arange(t, device=logits.device).repeat(b)
    return F.cross_entropy(logits.flatten(0, 1), target, reduction="none").reshape(b, t)


def _check_pair(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must both be (B, d) "
            "with row i of each a positive pair"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name_a} and {name_b} are empty (batch size 0); skip empty batches")


def _check_weights(w_i2t: float, w_t2i: float) -> None:
    if w_i2t < 0 or w_t2i < 0 or w_i2t + w_t2i == 0:
        raise ValueError(
            f"direction weights w_i2t = {w_i2t}, w_t2i = {w_t2i} must be >= 0 and not both 0 "
            "(model.contrastive_weight_i2t / _t2i; CLIP uses 0.5 / 0.5)"
        )


def _need(out: Any, attr: str, flag: str) -> Tensor:
    value = getattr(out, attr, None)
    if value is None:
        raise ValueError(
            f"model.{flag} is on but the model output {type(out).__name__} has {attr} = None; "
            f"build the model with the same ModelParams (or set {flag}: false)"
        )
    return value
