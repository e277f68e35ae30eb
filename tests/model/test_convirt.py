"""ConVIRT: its backbone folders (the demo's, and towers pretrained on their own read from the
local Hugging Face cache), its heads, pooling, freezing and its λ-weighted loss."""

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib.config.fixed import fixed_model
from lib.config.params import ConvirtBackboneParams, ModelParams
from lib.errors import ParamsError
from lib.model.backbone import (
    CLIP_CONFIG,
    WEIGHTS,
    BackboneNotFoundError,
    load_backbone,
    resnet_model_name,
    towers_pretrained,
    write_demo_backbone,
)
from lib.model.build import build_model
from lib.model.convirt import ConVIRTModel, pool_tokens, write_convirt_backbone
from lib.model.losses import compute_losses
from lib.model.patch_ib import PatchIBModel
from tests.conftest import TINY_BACKBONE, params_section
from tests.model.test_backbone import no_network, put_in_hf_cache  # noqa: F401 (a fixture)
from tests.model.test_patch_ib import TEXTS

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the network

REPO = Path(__file__).resolve().parents[2]
REAL_CONFIG = REPO / "configs/backbones/convirt-resnet50-bioclinicalbert" / CLIP_CONFIG
DEMO = dataclasses.replace(
    TINY_BACKBONE, seed=3, image_size=64, text_layers=2, vocab_size=200, context_length=24
)
RESNET = params_section(
    ConvirtBackboneParams, seed=5, width=8, depth=1
)  # 8·32 = 256 pooled features


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the demo backbone, ConVIRT's demo backbone written from it)."""
    base = tmp_path_factory.mktemp("convirt")
    write_demo_backbone(base / "demo", TEXTS, DEMO)
    write_convirt_backbone(base / "convirt", base / "demo", RESNET)
    return base / "demo", base / "convirt"


def params(folder: Path, **kwargs) -> ModelParams:
    settings = dict(
        architecture="convirt",
        backbone=f"local-dir:{folder}",
        head_dim=24,
        learn_temperature=False,
        contrastive_weight_i2t=0.75,
        contrastive_weight_t2i=0.25,
    )
    return fixed_model(**{**settings, **kwargs})


def make(folder: Path, **kwargs) -> ConVIRTModel:
    torch.manual_seed(0)
    model = build_model(load_backbone(f"local-dir:{folder}"), params(folder, **kwargs))
    assert isinstance(model, ConVIRTModel)
    return model


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# --- the demo folder ---------------------------------------------------------------------


def test_demo_folder_is_a_resnet_plus_the_demo_bert(folders):
    demo, convirt = folders
    config = json.loads((convirt / CLIP_CONFIG).read_text())
    vision, text = config["model_cfg"]["vision_cfg"], config["model_cfg"]["text_cfg"]
    assert vision["timm_model_name"] == resnet_model_name(RESNET) == "patchib_resnet_w8_d1"
    assert (vision["timm_proj"], vision["timm_pool"], text["hf_proj_type"]) == ("none", "avg", None)
    assert not towers_pretrained(config)
    ours, theirs = load_file(convirt / WEIGHTS), load_file(demo / WEIGHTS)
    bert = [k for k in theirs if k.startswith("text.transformer.")]
    assert bert and all(torch.equal(ours[k], theirs[k]) for k in bert)
    assert (convirt / "vocab.txt").read_bytes() == (demo / "vocab.txt").read_bytes()
    loaded = load_backbone(f"local-dir:{convirt}")
    assert loaded.vision_depth == 4 and loaded.image_size == 64
    assert (
        loaded.tokenizer(TEXTS[:2]).tolist()
        == load_backbone(f"local-dir:{demo}").tokenizer(TEXTS[:2]).tolist()
    )


def test_demo_folder_is_byte_identical_and_its_seed_moves_only_the_resnet(folders, tmp_path):
    demo, convirt = folders
    write_convirt_backbone(tmp_path / "again", demo, RESNET)
    for f in convirt.iterdir():
        assert (tmp_path / "again" / f.name).read_bytes() == f.read_bytes(), f.name
    write_convirt_backbone(tmp_path / "seed", demo, dataclasses.replace(RESNET, seed=6))
    a, b = load_file(convirt / WEIGHTS), load_file(tmp_path / "seed" / WEIGHTS)
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    assert moved and all(k.startswith("visual.trunk.") for k in moved)


# --- towers pretrained on their own, from the local Hugging Face cache -----------------------


@pytest.fixture
def towers_folder(folders, tmp_path, monkeypatch) -> tuple[Path, dict[str, torch.Tensor]]:
    """A folder shaped like configs/backbones/convirt-resnet50-bioclinicalbert (no CLIP
    weights; both towers pretrained) naming a small timm model and a BERT repo, with both
    repos in a local Hugging Face cache; returns (folder, the timm weights put there)."""
    import timm

    demo, _ = folders
    cache = tmp_path / "hub"
    torch.manual_seed(9)
    resnet = timm.create_model("resnet10t", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in resnet.items()}, tmp_path / "model.safetensors")
    put_in_hf_cache(
        cache,
        "timm/resnet10t.c3_in1k",
        {"model.safetensors": (tmp_path / "model.safetensors").read_bytes()},
    )
    bert = {k.removeprefix("text.transformer."): v for k, v in load_file(demo / WEIGHTS).items()
            if k.startswith("text.transformer.")}  # fmt: skip
    save_file(bert, tmp_path / "bert.safetensors")
    files = {n: (demo / n).read_bytes() for n in ("config.json", "vocab.txt")}
    files["model.safetensors"] = (tmp_path / "bert.safetensors").read_bytes()
    put_in_hf_cache(cache, "patchib/tiny-clinical-bert", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    config = json.loads(REAL_CONFIG.read_text())
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "resnet10t.c3_in1k"
    text = config["model_cfg"]["text_cfg"]
    text["hf_model_name"] = text["hf_tokenizer_name"] = "patchib/tiny-clinical-bert"
    text["context_length"] = 24
    config["model_cfg"]["embed_dim"] = DEMO.text_width
    folder = tmp_path / "convirt-towers"
    folder.mkdir()
    (folder / CLIP_CONFIG).write_text(json.dumps(config))
    return folder, resnet


def test_real_config_names_resnet50_and_clinical_bert_pretrained():
    config = json.loads(REAL_CONFIG.read_text())
    vision, text = config["model_cfg"]["vision_cfg"], config["model_cfg"]["text_cfg"]
    assert vision["timm_model_name"] == "resnet50.a1_in1k"
    assert text["hf_model_name"] == "emilyalsentzer/Bio_ClinicalBERT"
    assert towers_pretrained(config) and config["model_cfg"]["embed_dim"] == 768
    assert (vision["timm_proj"], text["hf_proj_type"]) == ("none", None)


@pytest.mark.usefixtures("no_network")
def test_towers_load_offline_from_the_cache_with_their_own_weights(towers_folder):
    folder, resnet = towers_folder
    backbone = load_backbone(f"local-dir:{folder}")
    trunk = backbone.clip.visual.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in resnet.items() if k in trunk)
    assert {k for k in resnet if not k.startswith("fc.")} <= set(trunk)
    model = ConVIRTModel(backbone, params(folder))
    assert model.image_head[0].in_features == 512  # resnet10t's pooled features
    out = model(images(2), backbone.tokenizer(TEXTS[:2]))
    assert out[0].global_emb.shape == out[1].global_emb.shape == (2, 24)


@pytest.mark.usefixtures("no_network")
def test_towers_missing_from_the_cache_name_what_to_download(towers_folder):
    folder, _ = towers_folder
    cache = Path(os.environ["HF_HUB_CACHE"])
    import shutil

    shutil.rmtree(cache / "models--timm--resnet10t.c3_in1k")
    with pytest.raises(BackboneNotFoundError, match=r"hf download timm/resnet10t\.c3_in1k"):
        load_backbone(f"local-dir:{folder}")


# --- the model -------------------------------------------------------------------------------


def test_heads_are_two_layer_relu_mlps_into_unit_embeddings(folders):
    _, convirt = folders
    model = make(convirt)
    for head, width in ((model.image_head, 256), (model.text_head, DEMO.text_width)):
        assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
        assert (head[0].in_features, head[0].out_features) == (width, 24)
        assert (head[2].in_features, head[2].out_features) == (24, 24)
    backbone = load_backbone(f"local-dir:{convirt}")
    img, txt = model(images(3), backbone.tokenizer(TEXTS[:3]))
    for emb in (img.global_emb, txt.global_emb):
        assert emb.shape == (3, 24)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert img.patch_emb is None and img.mask is None and txt.word_emb is None
    assert model.grid == (2, 2)  # 64 px at output stride 32
    tokens = model.patch_tokens(images(3))
    assert tokens.shape == (3, 4, 24)
    torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(3, 4))


def test_patch_ib_variants_still_build_patch_ib_models(folders):
    demo, _ = folders
    model = build_model(
        load_backbone(f"local-dir:{demo}"), fixed_model(backbone=f"local-dir:{demo}")
    )
    assert isinstance(model, PatchIBModel)


def test_pooling_over_real_tokens_only():
    hidden = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [99.0, 99.0]]])  # the last is padding
    attention = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool_tokens(hidden, attention, "max"), torch.tensor([[3.0, 0.0]]))
    torch.testing.assert_close(pool_tokens(hidden, attention, "mean"), torch.tensor([[2.0, -1.0]]))
    torch.testing.assert_close(pool_tokens(hidden, attention, "cls"), torch.tensor([[1.0, -2.0]]))


@pytest.mark.parametrize("pool", ["max", "mean", "cls"])
def test_a_text_encodes_alike_alone_and_padded_in_a_batch(folders, pool):
    _, convirt = folders
    model = make(convirt, text_pool=pool).eval()
    tok = load_backbone(f"local-dir:{convirt}").tokenizer
    texts = [TEXTS[0], TEXTS[1] * 3, TEXTS[2], TEXTS[3]]
    batch = model.encode_text(tok(texts)).global_emb
    for i, text in enumerate(texts):
        ids = tok([text])
        alone = model.encode_text(ids[:, : int((ids != 0).sum())]).global_emb
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_lower_text_layers_stay_frozen_and_the_temperature_is_fixed(folders):
    _, convirt = folders
    model = make(convirt, frozen_text_layers=1)
    text = model.clip.text.transformer
    frozen = [*text.embeddings.parameters(), *text.encoder.layer[0].parameters()]
    for state in (False, True, False):
        model.set_backbone_frozen(state)
        assert not any(p.requires_grad for p in frozen)
        assert all(p.requires_grad != state for p in text.encoder.layer[1].parameters())
        assert all(p.requires_grad != state for p in model.clip.visual.trunk.parameters())
        assert all(p.requires_grad for p in model.image_head.parameters())
    assert not model.logit_scale.requires_grad
    assert model.logit_scale.item() == pytest.approx(math.log(10))
    with pytest.raises(ParamsError, match="frozen_text_layers = 3.*0..2"):
        make(convirt, frozen_text_layers=3)


def test_convirt_params_refuse_patch_ib_settings(folders):
    _, convirt = folders
    with pytest.raises(ParamsError, match="no patch tokens"):
        params(convirt, use_local_alignment=True).validate()
    with pytest.raises(ParamsError, match="architecture: convirt only"):
        fixed_model(frozen_text_layers=2).validate()


def test_lambda_weighted_loss_equals_convirts_formula(folders):
    """ConVIRT's loss, written out pair by pair (its eqs. 2-4): for each image i,
    ℓ(v→u)_i = -log exp(<v_i,u_i>/τ) / Σ_k exp(<v_i,u_k>/τ), and likewise u→v; the batch
    mean of λ·ℓ(v→u) + (1-λ)·ℓ(u→v)."""
    _, convirt = folders
    model = make(convirt)
    tok = load_backbone(f"local-dir:{convirt}").tokenizer
    img, txt = model(images(4), tok(TEXTS[:4]))
    got = compute_losses(img, txt, model.logit_scale, model.params)
    v, u = img.global_emb.detach().double(), txt.global_emb.detach().double()
    tau, lam, n = 0.1, 0.75, 4
    expected = 0.0
    for i in range(n):
        cos = [float(v[i] @ u[k]) for k in range(n)]
        cos_t = [float(u[i] @ v[k]) for k in range(n)]
        l_vu = -math.log(math.exp(cos[i] / tau) / sum(math.exp(c / tau) for c in cos))
        l_uv = -math.log(math.exp(cos_t[i] / tau) / sum(math.exp(c / tau) for c in cos_t))
        expected += (lam * l_vu + (1 - lam) * l_uv) / n
    assert got["total"].item() == pytest.approx(expected, rel=1e-5)
    assert set(got) == {"clip", "total"}
