"""The "pretrained backbone, no fine-tuning" reference (lib/eval/pretrained.py): a model
folder that load_trained reads, whose embeddings are the backbone's own."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.config.variants import pretrained_variant, with_backbone_digest
from lib.data.images import to_model_input
from lib.errors import DataError
from lib.eval.embed_model import embed_images, embed_texts, load_trained
from lib.eval.pretrained import NAME, read_config, write_pretrained_model
from lib.model.backbone import load_backbone
from lib.model.patch_ib import trim_padding


def test_reference_folder_is_the_backbone_as_loaded(tiny_backbone, tmp_path):
    spec = f"local-dir:{tiny_backbone}"
    out = tmp_path / "pretrained"
    variant = write_pretrained_model(out, with_backbone_digest(pretrained_variant(spec, False)))
    config = json.loads((out / "config.json").read_text())
    assert variant.name == config["name"] == NAME and config["fine_tuned"] is False
    # The folder's digest: embed_pretrained and grounding rerun when the backbone changes.
    assert config["backbone_digest"].startswith("sha256:")
    assert not variant.model.use_masking and not variant.model.use_local_alignment

    trained = load_trained(out, "cpu")  # the same loader as A–E (raises on a mismatch)
    raw = load_backbone(spec).clip.eval()
    # Its temperature is the backbone's, not model.temperature.
    assert torch.equal(trained.model.logit_scale.detach(), raw.logit_scale.detach())

    # Independently: open_clip's own encode_image / encode_text, normalised.
    bb = trained.backbone
    pixels = torch.randint(0, 256, (3, bb.image_size, bb.image_size), dtype=torch.uint8)
    ours = embed_images(trained, pixels, batch_size=2).emb
    with torch.no_grad():
        x = to_model_input(pixels, bb.mean, bb.std)
        theirs = F.normalize(raw.encode_image(x), dim=-1).numpy()
    assert np.allclose(ours, theirs, atol=1e-5)
    texts = ["A chest x-ray showing edema", "No acute cardiopulmonary process."]
    tok = trim_padding(bb.tokenizer(texts), bb.pad_id)
    with torch.no_grad():
        theirs_t = F.normalize(raw.encode_text(tok), dim=-1).numpy()
    assert np.allclose(embed_texts(trained, texts, batch_size=8), theirs_t, atol=1e-5)


def test_reference_folder_is_deterministic(tiny_backbone, tmp_path):
    spec = f"local-dir:{tiny_backbone}"
    a, b = tmp_path / "a", tmp_path / "b"
    write_pretrained_model(a, pretrained_variant(spec, True))
    write_pretrained_model(b, pretrained_variant(spec, True))
    for name in ("model.safetensors", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_config_is_read_back_and_must_be_the_reference(tmp_path):
    variant = pretrained_variant("hf-hub:org/model", use_amp=True)
    path = tmp_path / "pretrained.json"
    path.write_text(json.dumps(variant.to_dict()))
    assert read_config(path) == variant
    other = dataclasses.replace(variant, name="A")
    path.write_text(json.dumps(other.to_dict()))
    with pytest.raises(DataError, match="not of the 'pretrained' reference"):
        read_config(path)
    with pytest.raises(DataError, match="dvc repro resolve_config"):
        read_config(tmp_path / "missing.json")
