import itertools
import math
import pickle

import pytest
import torch
from torch import nn

from lib.train.optim import cosine_with_warmup, param_groups, warmup_cosine_scheduler

BASE, WD, F = 1e-3, 0.05, 0.5


class Block(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.Linear(width, width)


class Tiny(nn.Module):
    """Parameter names laid out like open_clip's timm-ViT + HF-BERT CLIP, wrapped once."""

    def __init__(self):
        super().__init__()
        self.clip = nn.Module()
        self.clip.visual = nn.Module()
        trunk = self.clip.visual.trunk = nn.Module()
        trunk.patch_embed = nn.Module()
        trunk.patch_embed.proj = nn.Conv2d(1, 4, 2)
        trunk.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        trunk.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        trunk.blocks = nn.ModuleList(Block() for _ in range(3))
        trunk.norm = nn.LayerNorm(4)
        self.clip.visual.head = nn.Linear(4, 3)
        self.clip.text = nn.Module()
        bert = self.clip.text.transformer = nn.Module()
        bert.embeddings = nn.Module()
        bert.embeddings.word_embeddings = nn.Embedding(10, 4)
        bert.embeddings.position_embeddings = nn.Embedding(8, 4)
        bert.embeddings.LayerNorm = nn.LayerNorm(4)
        bert.encoder = nn.Module()
        bert.encoder.layer = nn.ModuleList(Block() for _ in range(2))
        self.clip.text.proj = nn.Linear(4, 3, bias=False)
        self.clip.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.mask_head = nn.Linear(4, 1)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def lookup(groups):
    """{parameter name: (lr, weight_decay)}."""
    out = {}
    for g in groups:
        for name in g["param_names"]:
            assert name not in out, f"{name} in two groups"
            out[name] = (g["lr"], g["weight_decay"])
    return out


def test_layerwise_rates_in_both_towers():
    rates = lookup(param_groups(Tiny(), BASE, WD, F))
    v, t = "clip.visual.trunk.", "clip.text.transformer."
    expected = {
        # vision depth 3: block i gets F^(3 - i), embeddings F^4
        v + "blocks.2.attn.weight": (BASE * F, WD),
        v + "blocks.1.attn.weight": (BASE * F**2, WD),
        v + "blocks.0.attn.weight": (BASE * F**3, WD),
        v + "blocks.0.norm1.weight": (BASE * F**3, 0.0),
        v + "blocks.0.attn.bias": (BASE * F**3, 0.0),
        v + "patch_embed.proj.weight": (BASE * F**4, WD),
        v + "patch_embed.proj.bias": (BASE * F**4, 0.0),
        v + "cls_token": (BASE * F**4, 0.0),
        v + "pos_embed": (BASE * F**4, 0.0),
        v + "norm.weight": (BASE, 0.0),
        "clip.visual.head.weight": (BASE, WD),
        # text depth 2: layer i gets F^(2 - i), embeddings F^3
        t + "encoder.layer.1.attn.weight": (BASE * F, WD),
        t + "encoder.layer.0.attn.weight": (BASE * F**2, WD),
        t + "embeddings.word_embeddings.weight": (BASE * F**3, WD),
        t + "embeddings.position_embeddings.weight": (BASE * F**3, 0.0),
        t + "embeddings.LayerNorm.bias": (BASE * F**3, 0.0),
        "clip.text.proj.weight": (BASE, WD),
        "clip.logit_scale": (BASE, 0.0),
        "mask_head.weight": (BASE, WD),
        "mask_head.bias": (BASE, 0.0),
    }
    for name, (lr, wd) in expected.items():
        assert rates[name][0] == pytest.approx(lr), name
        assert rates[name][1] == wd, name
    trainable = {n for n, p in Tiny().named_parameters() if p.requires_grad}
    assert set(rates) == trainable and not any(n.startswith("frozen") for n in rates)


def test_groups_merge_equal_rates_and_record_scale():
    groups = param_groups(Tiny(), BASE, WD, F)
    keys = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys))
    by_name = {g["name"]: g for g in groups}
    # vision block 2 and text layer 1 share base·F; vision block 0 and text embeddings F^3
    assert by_name["visual.block2+text.layer1/decay"]["lr_scale"] == pytest.approx(F)
    assert "visual.block0+text.embed/no_decay" in by_name
    for g in groups:
        assert g["lr"] == pytest.approx(BASE * g["lr_scale"])
    assert [g["lr_scale"] for g in groups] == sorted(g["lr_scale"] for g in groups)
    assert len(param_groups(Tiny(), BASE, WD, 1.0)) == 2  # no LLRD: decay / no decay


def test_groups_build_an_adamw_and_scheduler_keeps_scales():
    model = Tiny()
    opt = torch.optim.AdamW(param_groups(model, BASE, WD, F))
    sched = warmup_cosine_scheduler(opt, total_steps=100, warmup_steps=10)
    for _ in range(10):
        opt.step()
        sched.step()
    for g in opt.param_groups:  # end of warmup: every group at its own peak
        assert g["lr"] == pytest.approx(BASE * g["lr_scale"])
    assert pickle.loads(pickle.dumps(sched.state_dict()))["last_epoch"] == 10


def test_param_groups_rejects_bad_settings():
    with pytest.raises(ValueError, match="llrd_factor = 1.5"):
        param_groups(Tiny(), BASE, WD, 1.5)
    with pytest.raises(ValueError, match="layer-wise decay would do nothing"):
        param_groups(nn.Linear(2, 2), BASE, WD, 0.8)
    assert len(param_groups(nn.Linear(2, 2), BASE, WD, 1.0)) == 2
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        param_groups(frozen, BASE, WD, 1.0)


def test_cosine_with_warmup_key_points():
    def lr(step):
        return cosine_with_warmup(step, total_steps=110, warmup_steps=10, min_ratio=0.1)

    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lr(110) == pytest.approx(0.1)
    assert lr(500) == pytest.approx(0.1)
    after = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert cosine_with_warmup(0, 50, 0) == 1.0 and cosine_with_warmup(50, 50, 0) == 0.0


def test_cosine_with_warmup_rejects_bad_settings():
    with pytest.raises(ValueError, match="warmup_steps = 20"):
        cosine_with_warmup(0, 20, 20)
    with pytest.raises(ValueError, match="min_ratio"):
        cosine_with_warmup(0, 20, 2, min_ratio=1.5)
