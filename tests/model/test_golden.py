"""Loss and gradients of every variant on a fixed CPU batch, against values recorded before
the speed work of issue 14 (tests/model/golden_losses.json).

Any change to the model or loss code that is meant to be a pure speed-up (fused attention,
fewer host syncs, compiled graphs) must leave these equal within float tolerance. Regenerate
the file only for a change that is *meant* to alter the numbers, and say so in the commit:

    python -m tests.model.test_golden --write
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from lib.config.fixed import fixed_model
from lib.config.params import ConvirtBackboneParams
from lib.model.backbone import load_backbone, write_demo_backbone
from lib.model.build import build_model
from lib.model.convirt import write_convirt_backbone
from lib.model.losses import compute_losses
from tests.conftest import TINY_BACKBONE, params_section

GOLDEN = Path(__file__).with_name("golden_losses.json")
PARAMS = dataclasses.replace(
    TINY_BACKBONE, seed=5, image_size=64, vision_depth=4, text_layers=2, vocab_size=200,
    context_length=32, embed_dim=24,
)  # fmt: skip
TEXTS = [
    "moderate cardiomegaly. no pleural effusion.",
    "small left pleural effusion with bibasilar atelectasis.",
    "the lungs are clear. no pneumothorax.",
    "mild pulmonary edema and moderate cardiomegaly. endotracheal tube in place.",
    "right lower lobe opacity, possibly pneumonia.",
    "no acute cardiopulmonary process.",
]
VARIANTS = {
    "A": {},
    "B": {"use_local_alignment": True},
    "C": {"use_local_alignment": True, "use_masking": True},
    "D": {"use_local_alignment": True, "use_masking": True, "mask_mode": "topk"},
    "E": {"use_local_alignment": True, "use_masking": True, "mask_mode": "drop"},
    # ConVIRT on a ResNet (width 8) beside the same BERT, its lowest text layer frozen
    "ConVIRT": {
        "architecture": "convirt",
        "head_dim": 16,
        "learn_temperature": False,
        "contrastive_weight_i2t": 0.75,
        "contrastive_weight_t2i": 0.25,
        "frozen_text_layers": 1,
    },
}


def compute(folder: Path) -> dict[str, dict[str, float]]:
    """{variant: {loss term: value, "grad/<param>": gradient norm}} on a fixed batch."""
    out = {}
    images = torch.randn(len(TEXTS), 3, 64, 64, generator=torch.Generator().manual_seed(1))
    convirt = folder.with_name(folder.name + "_convirt")
    if not convirt.exists():
        write_convirt_backbone(
            convirt, folder, params_section(ConvirtBackboneParams, seed=2, width=8)
        )
    for name, kwargs in VARIANTS.items():
        where = convirt if kwargs.get("architecture") == "convirt" else folder
        backbone = load_backbone(f"local-dir:{where}")
        tokens = backbone.tokenizer(TEXTS)
        torch.manual_seed(0)
        params = fixed_model(local_dim=16, backbone=f"local-dir:{where}", **kwargs)
        model = build_model(backbone, params).train()
        model.set_backbone_frozen(False)
        img, txt = model(images, tokens)
        losses = compute_losses(img, txt, model.logit_scale, params)
        losses["total"].backward()
        row = {k: float(v.detach()) for k, v in losses.items()}
        for pname, p in model.named_parameters():
            if p.grad is not None:
                row[f"grad/{pname}"] = float(p.grad.norm())
        out[name] = row
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "backbone"
    write_demo_backbone(out, TEXTS * 4, PARAMS)
    return out


@pytest.fixture(scope="module")
def computed(folder: Path) -> dict[str, dict[str, float]]:
    return compute(folder)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_losses_and_gradients_equal_the_recorded_ones(computed, variant):
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))[variant]
    got = computed[variant]
    assert sorted(got) == sorted(expected), "the set of loss terms or trained parameters changed"
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "backbone"
        write_demo_backbone(path, TEXTS * 4, PARAMS)
        GOLDEN.write_text(json.dumps(compute(path), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
