import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from lib.config.fixed import fixed_model
from lib.model.losses import (
    clip_loss,
    compute_losses,
    consistency_loss,
    local_alignment_loss,
    mask_guide_loss,
    sparsity_loss,
)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# ---------------------------------------------------------------- clip_loss


def test_clip_loss_equals_open_clip():
    img, txt = unit(16, 32, seed=1), unit(16, 32, seed=2)
    scale = torch.tensor(math.log(1 / 0.07))
    ours = clip_loss(img, txt, scale)
    ref = ClipLoss()(img, txt, scale.exp())
    torch.testing.assert_close(ours, ref)


def test_clip_loss_gradients_equal_open_clip():
    img, txt = unit(8, 16, seed=3).requires_grad_(), unit(8, 16, seed=4).requires_grad_()
    scale = torch.tensor(2.5, requires_grad=True)
    grads = torch.autograd.grad(clip_loss(img, txt, scale), (img, txt, scale))
    ref = torch.autograd.grad(ClipLoss()(img, txt, scale.exp()), (img, txt, scale))
    for ours, theirs in zip(grads, ref, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_clip_loss_clamps_scale_at_100():
    img, txt = unit(8, 16, seed=5), unit(8, 16, seed=6)
    ours = clip_loss(img, txt, torch.tensor(math.log(1000.0)))
    torch.testing.assert_close(ours, ClipLoss()(img, txt, torch.tensor(100.0)))


def test_clip_loss_direction_weights():
    img, txt = unit(6, 8, seed=7), unit(6, 8, seed=8)
    scale = torch.tensor(1.0)
    logits = scale.exp() * img @ txt.T
    target = torch.arange(6)
    i2t, t2i = F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
    assert not torch.isclose(i2t, t2i)
    torch.testing.assert_close(clip_loss(img, txt, scale, 1.0, 0.0), i2t)
    torch.testing.assert_close(clip_loss(img, txt, scale, 0.2, 0.8), 0.2 * i2t + 0.8 * t2i)


def test_clip_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        clip_loss(unit(4, 8), unit(5, 8), torch.tensor(1.0))
    with pytest.raises(ValueError, match="w_i2t"):
        clip_loss(unit(4, 8), unit(4, 8), torch.tensor(1.0), 0.0, 0.0)


# ---------------------------------------------------------------- local alignment


def reference_local(word, mask, patch, weight, tau, gamma=5.0, scale=10.0, agg="lse"):
    """Pair-by-pair loop, written straight from the definition."""
    b = word.shape[0]
    sim = torch.zeros(b, b, dtype=word.dtype)
    for i in range(b):
        p = F.normalize(patch[i], dim=-1)
        for j in range(b):
            w = F.normalize(word[j][mask[j]], dim=-1)
            attn = torch.softmax(w @ p.T / tau, dim=1) * weight[i][None]
            attn = attn / attn.sum(dim=1, keepdim=True)
            cos = F.cosine_similarity(w, attn @ p, dim=-1)
            if agg == "lse":
                sim[i, j] = (torch.logsumexp(gamma * cos, 0) - math.log(len(cos))) / gamma
            else:
                sim[i, j] = cos.mean()
    target = torch.arange(b)
    return 0.5 * F.cross_entropy(scale * sim, target) + 0.5 * F.cross_entropy(scale * sim.T, target)


def local_case(b=5, n_words=7, n_patches=9, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    word = torch.randn(b, n_words, dim, generator=g, dtype=torch.float64)
    patch = torch.randn(b, n_patches, dim, generator=g, dtype=torch.float64)
    mask = torch.rand(b, n_words, generator=g) > 0.3
    mask[:, 0] = True
    weight = torch.rand(b, n_patches, generator=g, dtype=torch.float64)
    return word, mask, patch, weight


@pytest.mark.parametrize("agg", ["lse", "mean"])
def test_local_matches_pairwise_reference(agg):
    word, mask, patch, weight = local_case()
    ours = local_alignment_loss(word, mask, patch, weight, 0.2, aggregate=agg)
    torch.testing.assert_close(ours, reference_local(word, mask, patch, weight, 0.2, agg=agg))


@pytest.mark.parametrize("weighted", [True, False])
def test_local_gradients_match_pairwise_reference(weighted):
    """The fused attention (weights as a value column) has the reference's gradients, the
    patch weights' included."""
    word, mask, patch, weight = local_case(seed=7)
    ones = torch.ones_like(weight)
    ours_in = [t.clone().requires_grad_() for t in (word, patch, weight if weighted else ones)]
    ref_in = [t.clone().requires_grad_() for t in (word, patch, weight if weighted else ones)]
    ours = local_alignment_loss(ours_in[0], mask, ours_in[1], ours_in[2] if weighted else None, 0.1)
    ref = reference_local(ref_in[0], mask, ref_in[1], ref_in[2], 0.1)
    grads = torch.autograd.grad(ours, ours_in[:3] if weighted else ours_in[:2])
    ref_grads = torch.autograd.grad(ref, ref_in[:3] if weighted else ref_in[:2])
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["all_pairs", "within_pair"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_local_on_cuda_matches_cpu(mode, dtype):
    """The fused GPU kernels (flash / memory-efficient attention, stride-0 broadcast
    queries) give the CPU's loss and gradients, in fp32 and under bf16 autocast."""
    case = local_case(b=16, n_words=40, n_patches=49, dim=64)
    word, mask, patch, weight = (t.float() if t.is_floating_point() else t for t in case)
    cpu_in = [t.clone().requires_grad_() for t in (word, patch, weight)]
    gpu_in = [t.cuda().requires_grad_() for t in (word, patch, weight)]
    cpu = local_alignment_loss(cpu_in[0], mask, cpu_in[1], cpu_in[2], 0.1, mode=mode)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        gpu = local_alignment_loss(gpu_in[0], mask.cuda(), gpu_in[1], gpu_in[2], 0.1, mode=mode)
    rel = 1e-4 if dtype == torch.float32 else 3e-2  # bf16 keeps 8 bits of mantissa
    assert abs(float(gpu) - float(cpu)) <= rel * float(cpu)
    grads = torch.autograd.grad(gpu.float(), gpu_in)
    for a, b in zip(grads, torch.autograd.grad(cpu, cpu_in), strict=True):
        assert float((a.float().cpu() - b).norm()) <= rel * float(b.norm())


def reference_within_pair(word, mask, patch, weight, tau, scale=10.0):
    """MGCA-style token-level loss, pair by pair, written straight from the definition."""
    word_terms, patch_terms = [], []
    for i in range(word.shape[0]):
        w = F.normalize(word[i][mask[i]], dim=-1)  # (l, D) real words only
        p = F.normalize(patch[i], dim=-1)
        attn = torch.softmax(w @ p.T / tau, dim=1) * weight[i][None]
        ctx = F.normalize(attn / attn.sum(1, keepdim=True) @ p, dim=-1)
        word_terms.append(F.cross_entropy(scale * w @ ctx.T, torch.arange(len(w))))
        pctx = F.normalize(torch.softmax(p @ w.T / tau, dim=1) @ w, dim=-1)
        ce = F.cross_entropy(scale * p @ pctx.T, torch.arange(len(p)), reduction="none")
        patch_terms.append((ce * weight[i]).sum() / weight[i].sum())
    return 0.5 * torch.stack(word_terms).mean() + 0.5 * torch.stack(patch_terms).mean()


def test_within_pair_matches_reference_with_gradients():
    word, mask, patch, weight = local_case(seed=8)
    ours_in = [t.clone().requires_grad_() for t in (word, patch)]
    ref_in = [t.clone().requires_grad_() for t in (word, patch)]
    ours = local_alignment_loss(ours_in[0], mask, ours_in[1], weight, 0.1, mode="within_pair")
    ref = reference_within_pair(ref_in[0], mask, ref_in[1], weight, 0.1)
    torch.testing.assert_close(ours, ref)
    grads = zip(torch.autograd.grad(ours, ours_in), torch.autograd.grad(ref, ref_in), strict=True)
    for a, b in grads:
        torch.testing.assert_close(a, b)


def test_within_pair_contrasts_no_pair_with_another():
    """Each pair's term depends on that pair alone: the batch loss is the mean of the
    single-pair losses (unlike all_pairs, whose negatives are the other pairs)."""
    word, mask, patch, weight = local_case(seed=9)
    batch = local_alignment_loss(word, mask, patch, weight, 0.1, mode="within_pair")
    singles = [
        local_alignment_loss(
            word[i : i + 1],
            mask[i : i + 1],
            patch[i : i + 1],
            weight[i : i + 1],
            0.1,
            mode="within_pair",
        )
        for i in range(len(word))
    ]
    torch.testing.assert_close(batch, torch.stack(singles).mean())
    # all_pairs, by contrast, has nothing to contrast in a batch of one pair.
    one = local_alignment_loss(word[:1], mask[:1], patch[:1], weight[:1], 0.1)
    torch.testing.assert_close(one, torch.zeros((), dtype=one.dtype))
    assert local_alignment_loss(word, mask, patch, weight, 0.1) > 0


def test_within_pair_rewards_word_patch_correspondence():
    """Words that each match one distinct patch score far below words that are all alike."""
    dim, n = 16, 6
    basis = torch.eye(dim)
    words = basis[None, :n].repeat(2, 1, 1)  # word l along e_l
    patches = torch.cat([basis[None, :n].repeat(2, 1, 1), basis[None, 8:14].repeat(2, 1, 1)], 1)
    aligned = local_alignment_loss(words, None, patches, None, 0.05, mode="within_pair")
    same = F.normalize(torch.ones(dim), dim=0).expand(2, n, dim)
    collapsed = local_alignment_loss(same, None, same, None, 0.05, mode="within_pair")
    torch.testing.assert_close(collapsed, torch.tensor(math.log(n)))
    assert aligned < 0.5 * math.log(n)


def test_within_pair_zero_weight_patches_are_not_anchors():
    word, mask, patch, weight = local_case(seed=10)
    junk = torch.randn(5, 4, patch.shape[2], dtype=patch.dtype) * 10
    padded_patch = torch.cat([patch, junk], 1)
    padded_weight = torch.cat([weight, torch.zeros(5, 4, dtype=weight.dtype)], 1)
    # The word side ignores zero-weight patches exactly.
    word_only = dict(w_i2t=0.0, w_t2i=1.0, mode="within_pair")
    torch.testing.assert_close(
        local_alignment_loss(word, mask, patch, weight, 0.1, **word_only),
        local_alignment_loss(word, mask, padded_patch, padded_weight, 0.1, **word_only),
    )
    # The patch side keeps them as candidates (negatives) but not as anchors: it equals the
    # reference, whose anchor terms are weighted by the patch weights.
    torch.testing.assert_close(
        local_alignment_loss(word, mask, padded_patch, padded_weight, 0.1, mode="within_pair"),
        reference_within_pair(word, mask, padded_patch, padded_weight, 0.1),
    )


def test_local_chunked_equals_unchunked_with_gradients():
    word, mask, patch, weight = local_case(b=6)
    inputs = [t.clone().requires_grad_() for t in (word, patch, weight)]
    full = local_alignment_loss(inputs[0], mask, inputs[1], inputs[2], 0.1)
    g_full = torch.autograd.grad(full, inputs)
    # one image's queries hold B·L·Dl = 6·7·12 = 504 elements: a budget of 756 gives chunks
    # of one image
    small = [t.clone().requires_grad_() for t in (word, patch, weight)]
    chunked = local_alignment_loss(
        small[0], mask, small[1], small[2], 0.1, max_chunk_elements=2 * 6 * 7 * 9
    )
    g_chunked = torch.autograd.grad(chunked, small)
    torch.testing.assert_close(chunked, full)
    for a, b in zip(g_chunked, g_full, strict=True):
        torch.testing.assert_close(a, b)


def test_local_collapse_is_not_rewarded():
    b, dim = 8, 16
    same = F.normalize(torch.ones(dim), dim=0)
    words = same.expand(b, 10, dim)
    patches = same.expand(b, 20, dim)
    collapsed = local_alignment_loss(words, None, patches, None, 0.1)
    torch.testing.assert_close(collapsed, torch.tensor(math.log(b)))

    # Aligned: report j's words point along e_j; image i has 5 patches along e_i among 15
    # background patches shared by all images.
    basis = torch.eye(dim)
    words = basis[:b, None, :].expand(b, 10, dim)
    patches = basis[dim - 1].repeat(b, 20, 1)
    patches[:, :5] = basis[:b, None, :]
    aligned = local_alignment_loss(words, None, patches, None, 0.1)
    assert aligned < 0.01 < math.log(b) - 1


def test_local_zero_weight_patches_contribute_nothing():
    word, mask, patch, weight = local_case(seed=3)
    base = local_alignment_loss(word, mask, patch, weight, 0.1)
    junk = torch.randn(5, 4, patch.shape[2], dtype=patch.dtype) * 10
    padded = local_alignment_loss(
        word,
        mask,
        torch.cat([patch, junk], dim=1),
        torch.cat([weight, torch.zeros(5, 4, dtype=weight.dtype)], dim=1),
        0.1,
    )
    torch.testing.assert_close(padded, base)


def test_local_padding_words_are_ignored():
    word, mask, patch, weight = local_case(seed=4)
    base = local_alignment_loss(word, mask, patch, weight, 0.1)
    noisy = word.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), word.shape[2], dtype=word.dtype)
    torch.testing.assert_close(local_alignment_loss(noisy, mask, patch, weight, 0.1), base)


def test_local_all_masked_image_stays_finite():
    word, mask, patch, weight = local_case(seed=5)
    weight = weight.clone()
    weight[2] = 0
    weight[0, :4] = 0
    inputs = [t.clone().requires_grad_() for t in (word, patch, weight)]
    loss = local_alignment_loss(inputs[0], mask, inputs[1], inputs[2], 0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() for t in inputs)
    assert inputs[2].grad[1].abs().sum() > 0  # weights get a gradient: the mask learns


def test_local_rejects_bad_input():
    word, mask, patch, weight = local_case()
    with pytest.raises(ValueError, match="same batch size"):
        local_alignment_loss(word, mask, patch[:3], weight[:3], 0.1)
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"reports \[1\]"):
        local_alignment_loss(word, empty, patch, weight, 0.1)
    with pytest.raises(ValueError, match="aggregate"):
        local_alignment_loss(word, mask, patch, weight, 0.1, aggregate="max")
    with pytest.raises(ValueError, match="within_pair"):
        local_alignment_loss(word, mask, patch, weight, 0.1, mode="pairs")


# ---------------------------------------------------------------- masking terms


def test_sparsity_loss_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # image means 0.5 and 1.0 against keep_ratio 0.25: ((0.25)² + (0.75)²) / 2
    torch.testing.assert_close(sparsity_loss(mask, 0.25), torch.tensor(0.3125))
    with pytest.raises(ValueError, match="keep_ratio"):
        sparsity_loss(mask, 0.0)


def test_consistency_zero_kl_when_masked_equals_full():
    img, txt = unit(8, 16, seed=10), unit(8, 16, seed=11)
    scale = torch.tensor(2.0)
    torch.testing.assert_close(consistency_loss(img, img, txt, scale), clip_loss(img, txt, scale))


def test_consistency_kl_part_and_teacher_detached():
    full = unit(8, 16, seed=12).requires_grad_()
    masked = unit(8, 16, seed=13).requires_grad_()
    txt = unit(8, 16, seed=14)
    scale = torch.tensor(2.0)
    loss = consistency_loss(masked, full, txt, scale)
    p = torch.softmax(scale.exp() * full @ txt.T, 1)
    q = torch.softmax(scale.exp() * masked @ txt.T, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(loss, kl + clip_loss(masked, txt, scale))
    loss.backward()
    assert full.grad is None  # the full image is the teacher
    assert masked.grad.abs().sum() > 0


# ---------------------------------------------------------------- mask_guide_loss


def guide_reference(mask, patch_emb, word_emb, word_mask, temperature):
    """The guide loss image by image and word by word, in float64."""
    total = 0.0
    for i in range(mask.shape[0]):
        patches = [p / p.norm() for p in patch_emb[i].double()]
        target = torch.zeros(len(patches), dtype=torch.float64)
        rows = zip(word_emb[i].double(), word_mask[i], strict=True)
        words = [w / w.norm() for w, real in rows if real]
        for w in words:
            target += torch.softmax(torch.stack([w @ p for p in patches]) / temperature, 0)
        target /= len(words)
        share = mask[i].double() / mask[i].double().sum()
        total += float((target * (target.log() - share.log())).sum())
    return total / mask.shape[0]


def test_mask_guide_matches_reference_and_ignores_padding():
    g = torch.Generator().manual_seed(30)
    mask = torch.rand(3, 7, generator=g) * 0.9 + 0.05
    patches, words = torch.randn(3, 7, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    word_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    loss = mask_guide_loss(mask, patches, words, word_mask, 0.1)
    ref = guide_reference(mask, patches, words, word_mask, 0.1)
    assert loss.item() == pytest.approx(ref, rel=1e-4)
    padded = words.clone()
    padded[~word_mask] = torch.randn(int((~word_mask).sum()), 8, generator=g)
    torch.testing.assert_close(mask_guide_loss(mask, patches, padded, word_mask, 0.1), loss)


def test_mask_guide_is_zero_for_a_mask_proportional_to_the_attention():
    patches, words = torch.randn(2, 6, 8), torch.randn(2, 4, 8)
    att = F.normalize(words, dim=-1) @ F.normalize(patches, dim=-1).transpose(1, 2) / 0.1
    target = att.softmax(-1).mean(1)  # (2, 6)
    loss = mask_guide_loss(0.7 * target / target.max(), patches, words, None, 0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    uniform = mask_guide_loss(torch.full((2, 6), 0.5), patches, words, None, 0.1)
    assert uniform.item() > 0.01  # a uniform mask is not what the words attend to


def test_mask_guide_trains_the_mask_only():
    mask = torch.rand(2, 6).clamp_min(0.05).requires_grad_()
    patches, words = torch.randn(2, 6, 8).requires_grad_(), torch.randn(2, 4, 8).requires_grad_()
    mask_guide_loss(mask, patches, words, None, 0.1).backward()
    assert mask.grad.abs().sum() > 0
    assert patches.grad is None and words.grad is None  # the attention is the teacher


# ---------------------------------------------------------------- compute_losses


def outputs(b=4, n=6, n_words=5, d=8, dl=8):
    img = SimpleNamespace(
        global_emb=unit(b, d, seed=20),
        patch_emb=torch.randn(b, n, dl),
        patch_weight=torch.rand(b, n),
        mask=torch.rand(b, n),
        masked_emb=unit(b, d, seed=21),
    )
    txt = SimpleNamespace(
        global_emb=unit(b, d, seed=22),
        word_emb=torch.randn(b, n_words, dl),
        word_mask=torch.ones(b, n_words, dtype=torch.bool),
    )
    return img, txt


def test_compute_losses_terms_and_total():
    img, txt = outputs()
    scale = torch.tensor(2.0)
    params = fixed_model(
        use_local_alignment=True,
        use_masking=True,
        local_weight=2.0,
        sparse_weight=3.0,
        cons_weight=0.5,
    )
    out = compute_losses(img, txt, scale, params)
    assert set(out) == {"clip", "local", "sparse", "cons", "total"}
    torch.testing.assert_close(out["clip"], clip_loss(img.global_emb, txt.global_emb, scale))
    torch.testing.assert_close(out["sparse"], sparsity_loss(img.mask, 0.5))
    expected = out["clip"] + 2.0 * out["local"] + 3.0 * out["sparse"] + 0.5 * out["cons"]
    torch.testing.assert_close(out["total"], expected)


def test_compute_losses_adds_the_weighted_guide_for_masked_variants():
    img, txt = outputs()
    scale = torch.tensor(2.0)
    base = fixed_model(use_local_alignment=True, use_masking=True)
    guided = compute_losses(img, txt, scale, dataclasses.replace(base, mask_guide_weight=2.5))
    plain = compute_losses(img, txt, scale, base)
    assert "guide" not in plain
    expected = mask_guide_loss(img.patch_weight, img.patch_emb, txt.word_emb, txt.word_mask, 0.1)
    torch.testing.assert_close(guided["guide"], expected)
    torch.testing.assert_close(guided["total"], plain["total"] + 2.5 * expected)
    b_only = fixed_model(use_local_alignment=True, mask_guide_weight=2.5)
    assert "guide" not in compute_losses(img, txt, scale, b_only)  # no mask, nothing to guide


def test_compute_losses_model_a_is_clip_only():
    img, txt = outputs()
    img.patch_emb = img.mask = img.masked_emb = None
    out = compute_losses(img, txt, torch.tensor(2.0), fixed_model())
    assert set(out) == {"clip", "total"}
    torch.testing.assert_close(out["total"], out["clip"])


def test_compute_losses_names_missing_output():
    img, txt = outputs()
    img.masked_emb = None
    with pytest.raises(ValueError, match="masked_emb = None"):
        compute_losses(img, txt, torch.tensor(2.0), fixed_model(use_masking=True))
