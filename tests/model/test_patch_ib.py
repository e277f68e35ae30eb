import copy
import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

from lib.config.fixed import fixed_model
from lib.errors import ParamsError
from lib.model.backbone import load_backbone, write_demo_backbone
from lib.model.patch_ib import (
    PatchIBModel,
    length_groups,
    masked_pool,
    num_kept,
    soft_topk,
    weighted_mean,
)
from tests.conftest import TINY_BACKBONE

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the network

# conftest's tiny backbone at 64 px: N = (64 / 16)² = 16 patches, 1 prefix token (CLS);
# depth 4 so drop_layer 2 is mid-way.
PARAMS = dataclasses.replace(
    TINY_BACKBONE, seed=3, image_size=64, vision_depth=4, text_layers=2, vocab_size=200,
    context_length=24, embed_dim=40,
)  # fmt: skip
N = 16
TEXTS = [
    "moderate cardiomegaly. no pleural effusion.",
    "small left pleural effusion with bibasilar atelectasis.",
    "the lungs are clear. no pneumothorax.",
    "mild pulmonary edema and moderate cardiomegaly.",
] * 3


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("model") / "backbone"
    write_demo_backbone(out, TEXTS, PARAMS)
    return load_backbone(f"local-dir:{out}")


@pytest.fixture(scope="module")
def batch(backbone):
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return images, backbone.tokenizer(TEXTS[:3])


def make(backbone, **kwargs) -> PatchIBModel:
    """A fresh model on the module's shared open_clip model, reset to a clean state."""
    torch.manual_seed(0)
    model = PatchIBModel(backbone, fixed_model(local_dim=16, **kwargs)).train()
    model.set_backbone_frozen(False)
    model.zero_grad(set_to_none=True)
    return model


def assert_unit_rows(x: torch.Tensor) -> None:
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[0]))


# --- A: global only ----------------------------------------------------------------------


def test_a_global_embeddings_are_open_clips(backbone, batch):
    images, ids = batch
    model = make(backbone).eval()
    with torch.no_grad():
        image, text = model(images, ids)
        # Independent computation: open_clip's own encoders.
        expected_image = F.normalize(backbone.clip.encode_image(images), dim=-1)
        expected_text = F.normalize(backbone.clip.encode_text(ids), dim=-1)
    assert image.global_emb.shape == text.global_emb.shape == (3, 40)
    torch.testing.assert_close(image.global_emb, expected_image)
    torch.testing.assert_close(text.global_emb, expected_text)
    assert_unit_rows(image.global_emb)
    assert (image.patch_emb, image.patch_weight, image.mask, image.masked_emb) == (None,) * 4
    assert image.kept_index is None
    assert text.word_emb is None and text.word_mask is None


def test_logit_scale_replaces_open_clips_and_names_are_kept(backbone):
    model = make(backbone, temperature=0.05)
    assert model.logit_scale.item() == pytest.approx(math.log(20))
    assert model.clip.logit_scale is model.logit_scale
    names = [n for n, _ in model.named_parameters()]
    assert names.count("logit_scale") == 1 and "clip.logit_scale" not in names
    assert any(n.startswith("clip.visual.trunk.blocks.3.") for n in names)
    assert any(n.startswith("clip.text.transformer.encoder.layer.1.") for n in names)


# --- B: local alignment ------------------------------------------------------------------


def test_b_local_features_and_word_mask(backbone, batch):
    images, ids = batch
    model = make(backbone, use_local_alignment=True)
    image, text = model(images, ids)
    assert image.patch_emb.shape == (3, N, 16)
    assert image.mask is None and image.masked_emb is None and image.patch_weight is None
    assert text.word_emb.shape == (3, 24, 16) and text.word_mask.dtype == torch.bool
    tok = backbone.tokenizer.tokenizer
    for row, text_ in zip(text.word_mask, TEXTS[:3], strict=True):
        n_words = len(tok.tokenize(text_))  # word pieces: no [CLS], [SEP], [PAD]
        assert row.tolist() == [False] + [True] * n_words + [False] * (24 - n_words - 1)
    assert {n for n, _ in model.named_parameters() if not n.startswith("clip.")} == {
        "logit_scale",
        "local_image_proj.weight",
        "local_image_proj.bias",
        "local_text_proj.weight",
        "local_text_proj.bias",
    }


# --- C: soft mask ------------------------------------------------------------------------


def test_c_soft_mask_and_masked_embedding(backbone, batch):
    images, _ = batch
    model = make(backbone, use_masking=True).eval()
    with torch.no_grad():
        image = model.encode_image(images)
        tokens = backbone.clip.visual.trunk.forward_features(images)[:, 1:]  # (B, N, W)
        z = torch.sigmoid(model.mask_head.linear(tokens)).squeeze(-1)
        pooled = (z[..., None] * tokens).sum(1) / z.sum(1, keepdim=True)
        expected = F.normalize(model.masked_proj(pooled), dim=-1)
    assert image.mask.shape == (3, N)
    assert ((image.mask > 0) & (image.mask < 1)).all()
    torch.testing.assert_close(image.mask, z)
    assert image.patch_weight is image.mask
    assert image.patch_emb.shape == (3, N, 16)  # the mask's patches live in the local space too
    assert image.masked_emb.shape == (3, 40)
    assert_unit_rows(image.masked_emb)
    torch.testing.assert_close(image.masked_emb, expected)
    assert image.kept_index is None


def test_c_mask_noise_replaces_what_the_mask_removes(backbone, batch):
    """model.mask_noise: each patch is z·v + (1 − z)·noise and the embedding is their plain
    mean; in eval mode the noise is the running feature mean, so inference is deterministic."""
    images, _ = batch
    model = make(backbone, use_masking=True, mask_noise=True)
    model.train()
    model.encode_image(images)  # one training batch moves the running statistics
    assert not torch.equal(model.patch_mean, torch.zeros_like(model.patch_mean))
    model.eval()
    with torch.no_grad():
        image = model.encode_image(images)
        again = model.encode_image(images)
        tokens = backbone.clip.visual.trunk.forward_features(images)[:, 1:]
        z = image.mask[..., None]
        mixed = z * tokens + (1 - z) * model.patch_mean
        expected = F.normalize(
            model.masked_proj(model.clip.visual.trunk.fc_norm(mixed.mean(1))), dim=-1
        )
    torch.testing.assert_close(image.masked_emb, expected)
    torch.testing.assert_close(image.masked_emb, again.masked_emb)
    # In training, what is masked out is noise: the same batch gives another embedding.
    model.train()
    first, second = model.encode_image(images), model.encode_image(images)
    assert not torch.allclose(first.masked_emb, second.masked_emb)


# --- D: soft top-K -----------------------------------------------------------------------


def test_soft_topk_keeps_exactly_k_at_low_temperature():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1, 0.9], [5.0, 4.0, 3.0, 2.0, 1.0]])
    z = soft_topk(logits, k=2, temperature=1e-3)
    assert z.round().tolist() == [[0, 0, 1, 0, 1], [1, 1, 0, 0, 0]]
    warm = soft_topk(logits, k=2, temperature=10.0)
    assert ((warm > 0.4) & (warm < 0.6)).all()  # high temperature: barely sharpened
    assert (soft_topk(logits, k=5, temperature=1e-3) > 0.99).all()
    # The threshold is detached: gradients move the logits only.
    logits.requires_grad_(True)
    soft_topk(logits, k=2, temperature=1.0).sum().backward()
    assert (logits.grad > 0).all()


def test_num_kept():
    assert [num_kept(196, r) for r in (0.5, 0.25, 1.0, 0.001)] == [98, 49, 196, 1]


def test_d_topk_mask_has_exactly_k_patches(backbone, batch):
    images, _ = batch
    model = make(
        backbone, use_masking=True, mask_mode="topk", keep_ratio=0.25, topk_temperature=1e-4
    )
    image = model.encode_image(images)
    k = num_kept(N, 0.25)
    assert k == 4
    assert ((image.mask > 0.5).sum(dim=1) == k).all()
    # The kept patches are the K highest saliency logits.
    logits = model.mask_head(backbone.clip.visual.trunk.forward_features(images)[:, 1:])
    top = logits.topk(k, dim=1).indices.sort(dim=1).values
    assert torch.equal((image.mask > 0.5).nonzero()[:, 1].view(3, k), top)
    assert_unit_rows(image.masked_emb)


# --- E: hard token drop ------------------------------------------------------------------


def count_tokens(module: torch.nn.Module, seen: list[int]):
    return module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))


def test_e_drop_really_shortens_the_sequence(backbone, batch):
    images, _ = batch
    model = make(backbone, use_masking=True, use_local_alignment=True, mask_mode="drop",
                 drop_layer=2, keep_ratio=0.25)  # fmt: skip
    blocks = backbone.clip.visual.trunk.blocks
    first, last = [], []
    hooks = [count_tokens(blocks[0], first), count_tokens(blocks[-1], last)]
    try:
        image = model.encode_image(images)
    finally:
        for hook in hooks:
            hook.remove()
    k = num_kept(N, 0.25)
    assert (first, last) == ([1 + N], [1 + k])  # CLS + patches, then CLS + kept patches
    assert image.mask.shape == (3, N) and ((image.mask > 0) & (image.mask < 1)).all()
    assert image.kept_index.shape == (3, k)
    # The kept patches are the top K by z, listed in image order.
    expected = image.mask.topk(k, dim=1).indices.sort(dim=1).values
    assert torch.equal(image.kept_index, expected)
    torch.testing.assert_close(image.patch_weight, image.mask.gather(1, image.kept_index))
    assert image.patch_emb.shape == (3, k, 16)
    assert_unit_rows(image.global_emb)
    assert_unit_rows(image.masked_emb)


def test_e_gradients_reach_the_mask_head_through_the_kept_tokens(backbone, batch):
    images, _ = batch
    model = make(backbone, use_masking=True, mask_mode="drop", drop_layer=2)
    image = model.encode_image(images)
    # Only the global embedding: the gradient must come through the shortened ViT.
    (image.global_emb * torch.randn_like(image.global_emb)).sum().backward()
    grad = model.mask_head.linear.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_e_keeping_everything_is_model_a(backbone, batch):
    images, _ = batch
    a = make(backbone).eval()
    e = make(backbone, use_masking=True, mask_mode="drop", keep_ratio=1.0, drop_layer=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            e.encode_image(images).global_emb, a.encode_image(images).global_emb
        )


def test_e_drop_layer_must_be_inside_the_vit(backbone):
    with pytest.raises(ParamsError, match=r"model\.drop_layer = 4 must be < .*4 blocks"):
        make(backbone, use_masking=True, mask_mode="drop", drop_layer=4)
    make(backbone, use_masking=False, drop_layer=4)  # not used without drop: no error


# --- staged training ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["soft", "drop"])
def test_frozen_backbone_trains_only_heads(backbone, batch, mode):
    images, ids = batch
    model = make(backbone, use_masking=True, use_local_alignment=True, mask_mode=mode)
    model.set_backbone_frozen(True)
    image, text = model(images, ids)
    loss = (
        (model.logit_scale.exp() * image.global_emb @ text.global_emb.T).logsumexp(1).sum()
        + (image.patch_weight[..., None] * image.patch_emb).sum()
        + image.masked_emb.sum()
        + text.word_emb[text.word_mask].sum()
    )
    loss.backward()
    frozen = [model.clip.visual.trunk, model.clip.text.transformer]
    assert all(p.grad is None for m in frozen for p in m.parameters())
    trained = [
        model.clip.visual.head,
        model.clip.text.proj,
        model.mask_head,
        model.masked_proj,
        model.local_image_proj,
        model.local_text_proj,
    ]
    for module in trained:
        assert all(p.grad is not None for p in module.parameters()), module
    assert model.logit_scale.grad is not None
    model.set_backbone_frozen(False)
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_backbone_keeps_batchnorm_statistics(tmp_path):
    """A frozen trunk with BatchNorm (the conv stem) is frozen statistics included: train()
    leaves its BatchNorm layers in eval mode until the backbone is unfrozen."""
    out = tmp_path / "cs"
    write_demo_backbone(out, TEXTS, dataclasses.replace(PARAMS, patch_embed="conv"))
    bb = load_backbone(f"local-dir:{out}")
    model = PatchIBModel(bb, fixed_model(local_dim=16)).train()
    bns = [m for m in model.clip.visual.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 4 and all(bn.training for bn in bns)
    images, ids = torch.randn(3, 3, 64, 64), bb.tokenizer(TEXTS[:3])
    model.set_backbone_frozen(True)
    before = [bn.running_mean.clone() for bn in bns]
    model.train()
    assert model.training and not any(bn.training for bn in bns)
    assert model.clip.visual.head.training
    model(images, ids)
    for bn, mean in zip(bns, before, strict=True):
        torch.testing.assert_close(bn.running_mean, mean)
    model.set_backbone_frozen(False)
    assert all(bn.training for bn in bns)
    model(images, ids)
    assert not torch.equal(bns[0].running_mean, before[0])


def test_weighted_mean():
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    torch.testing.assert_close(
        weighted_mean(tokens, torch.tensor([[1.0, 3.0]])), torch.tensor([[2.5, 1.5]])
    )


def test_masked_pool_is_the_towers_pooling_when_nothing_is_masked():
    tokens = torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(4, 7)
    torch.testing.assert_close(masked_pool(tokens, ones, "avg"), tokens.mean(1))
    torch.testing.assert_close(masked_pool(tokens, ones, "max"), tokens.amax(1))
    torch.testing.assert_close(
        masked_pool(tokens, ones, "avgmax"), 0.5 * (tokens.amax(1) + tokens.mean(1))
    )


def test_masked_max_of_a_hard_mask_is_the_maximum_over_the_kept_patches():
    tokens = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(2))
    keep = torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1]])
    got = masked_pool(tokens, keep, "max")
    torch.testing.assert_close(got[0], tokens[0, [0, 3]].amax(0))
    torch.testing.assert_close(got[1], tokens[1, 5])
    # A soft weight moves a patch toward the image's per-feature minimum, never past it.
    half = masked_pool(tokens, torch.full((2, 6), 0.5), "max")
    assert (half <= tokens.amax(1) + 1e-6).all() and (half >= tokens.amin(1) - 1e-6).all()


def test_masked_pool_refuses_an_unknown_pooling():
    with pytest.raises(ValueError, match="'map'"):
        masked_pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "map")


def test_c_masked_embedding_pools_as_the_vit_pools(backbone, batch):
    """With a max-pooled ViT (backbone.vision_pool: max) the masked embedding is the masked
    maximum, not the weighted mean: the full and masked images are pooled alike."""
    images, _ = batch
    model = make(copy.deepcopy(backbone), use_masking=True).eval()
    trunk = model.clip.visual.trunk
    trunk.global_pool = "max"
    with torch.no_grad():
        image = model.encode_image(images)
        tokens = trunk.forward_features(images)[:, 1:]
        pooled = masked_pool(tokens, image.mask, "max")
        expected = F.normalize(model.masked_proj(trunk.fc_norm(pooled)), dim=-1)
        mean = F.normalize(model.masked_proj(trunk.fc_norm(weighted_mean(tokens, image.mask))))
    torch.testing.assert_close(image.masked_emb, expected)
    assert not torch.allclose(image.masked_emb, mean, atol=1e-4)


# --- text tower in length groups ----------------------------------------------------------


def test_length_groups_cut_where_padding_is_wasted():
    short, long = [1] * 3 + [0] * 9, [1] * 12
    attention = torch.tensor([long, short, short, long, short, short])
    (rows_a, width_a), (rows_b, width_b) = length_groups(attention)
    assert sorted(rows_a.tolist()) == [1, 2, 4, 5] and width_a == 3
    assert sorted(rows_b.tolist()) == [0, 3] and width_b == 12
    # Lengths that are all alike, or a saving under MIN_GROUP_SAVING: one call.
    assert length_groups(torch.ones(6, 12, dtype=torch.long)) is None
    nearly = torch.tensor([[1] * 11 + [0]] * 5 + [[1] * 12])
    assert length_groups(nearly) is None


@pytest.mark.parametrize("kwargs", [{}, {"use_local_alignment": True}])
def test_grouped_text_tower_equals_each_report_alone(backbone, kwargs):
    """A batch of short and long reports (two tower calls) gives every report the outputs
    it has when encoded alone, with no padding at all."""
    model = make(backbone, **kwargs).eval()
    texts = ["no effusion."] * 3 + [" ".join(TEXTS)] * 2 + ["clear lungs."] * 3
    tokens = backbone.tokenizer(texts)
    assert length_groups((tokens != backbone.pad_id).long()) is not None
    with torch.no_grad():
        out = model.encode_text(tokens)
        for i in range(len(texts)):
            n = int((tokens[i] != backbone.pad_id).sum())
            alone = model.encode_text(tokens[i : i + 1, :n])
            torch.testing.assert_close(out.global_emb[i], alone.global_emb[0], atol=1e-5, rtol=0)
            if out.word_emb is not None:
                real = out.word_mask[i]
                assert torch.equal(real[:n], alone.word_mask[0]) and not real[n:].any()
                torch.testing.assert_close(
                    out.word_emb[i, :n][real[:n]], alone.word_emb[0][real[:n]], atol=1e-5, rtol=0
                )
