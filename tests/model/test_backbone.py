import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.config.params import BackboneParams
from lib.errors import DataError, ParamsError
from lib.model.backbone import (
    BIOMEDCLIP,
    BIOMEDCLIP_BERT,
    CLIP_CONFIG,
    WEIGHTS,
    BackboneConfigError,
    BackboneNotFoundError,
    VitArch,
    ensure_timm_model,
    load_backbone,
    parse_timm_model_name,
    timm_model_name,
    write_demo_backbone,
)
from lib.model.vocab import SPECIAL_TOKENS, pretokenize
from tests.conftest import TINY_BACKBONE, params_section

# Nothing here may reach the network (the loader never asks; this makes the libraries agree).
os.environ["HF_HUB_OFFLINE"] = "1"

FINDINGS = [
    "moderate cardiomegaly",
    "small left pleural effusion",
    "right lower lobe consolidation",
    "mild pulmonary edema",
    "no pneumothorax",
    "bibasilar atelectasis",
]
TEXTS = [
    f"Findings: {a}. Impression: {b}, unchanged from prior."
    for i, a in enumerate(FINDINGS)
    for b in FINDINGS[i:]
] + ["The lungs are clear.", "Heart size is normal. No pleural effusion or pneumothorax."]

# The writer itself under test: conftest's tiny backbone, wider and at 64 px.
PARAMS = dataclasses.replace(
    TINY_BACKBONE, seed=7, image_size=64, vision_width=64, vision_depth=3, text_width=64,
    text_layers=2, context_length=32, embed_dim=48,
)  # fmt: skip


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("backbone") / "demo"
    write_demo_backbone(out, TEXTS, PARAMS)
    return out


@pytest.fixture(scope="module")
def backbone(demo_dir: Path):
    return load_backbone(f"local-dir:{demo_dir}")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(
        n, 3, PARAMS.image_size, PARAMS.image_size, generator=torch.Generator().manual_seed(0)
    )


def embeddings(bb, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    bb.clip.eval()  # BERT's dropout would make two runs differ
    with torch.no_grad():
        return bb.clip.encode_image(images()), bb.clip.encode_text(bb.tokenizer(texts))


# --- the folder --------------------------------------------------------------------------


def test_folder_is_an_open_clip_folder_shaped_like_biomedclip(demo_dir: Path):
    names = {p.name for p in demo_dir.iterdir()}
    assert {CLIP_CONFIG, WEIGHTS, "config.json", "vocab.txt", "tokenizer_config.json"} <= names
    config = json.loads((demo_dir / CLIP_CONFIG).read_text())
    vision, text = config["model_cfg"]["vision_cfg"], config["model_cfg"]["text_cfg"]
    assert vision == {
        "timm_model_name": "patchib_vit_p16_i64_w64_d3_h2",
        "timm_model_pretrained": False,
        "timm_pool": "avg",  # BackboneParams.vision_pool default (params.yaml: max)
        "timm_proj": "linear",
        "image_size": 64,
    }
    assert text["hf_proj_type"] == "mlp"
    assert text["hf_pooler_type"] == "mean_pooler"  # backbone.text_pool: mean
    assert text["context_length"] == 32
    assert config["model_cfg"]["embed_dim"] == 48
    assert len(config["preprocess_cfg"]["mean"]) == len(config["preprocess_cfg"]["std"]) == 3
    # No absolute path may leak into the folder: it is moved around by DVC.
    for path in demo_dir.iterdir():
        if path.suffix in (".json", ".txt"):
            assert str(demo_dir) not in path.read_text()
    bert = json.loads((demo_dir / "config.json").read_text())
    assert (bert["model_type"], bert["hidden_size"], bert["num_hidden_layers"]) == ("bert", 64, 2)
    vocab = (demo_dir / "vocab.txt").read_text().splitlines()
    assert tuple(vocab[:5]) == SPECIAL_TOKENS
    assert bert["vocab_size"] == len(vocab) <= PARAMS.vocab_size
    assert not list(demo_dir.parent.glob(".demo*"))  # the atomic write left no temporary


def test_second_write_is_byte_identical_and_seed_changes_only_weights(tmp_path, demo_dir):
    write_demo_backbone(tmp_path / "again", iter(TEXTS), PARAMS)
    write_demo_backbone(
        tmp_path / "seed", TEXTS, params_section(BackboneParams, **{**vars(PARAMS), "seed": 8})
    )
    for path in demo_dir.iterdir():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
        same = (tmp_path / "seed" / path.name).read_bytes() == path.read_bytes()
        assert same == (path.name != WEIGHTS), path.name


def test_writing_needs_texts(tmp_path):
    with pytest.raises(DataError, match="no report texts"):
        write_demo_backbone(tmp_path / "x", ["", "  "], PARAMS)
    assert not (tmp_path / "x").exists()


# --- loading -----------------------------------------------------------------------------


def test_backbone_fields(backbone):
    assert backbone.image_size == 64
    assert backbone.context_length == 32
    assert (backbone.vision_depth, backbone.text_depth) == (3, 2)
    assert len(backbone.clip.visual.trunk.blocks) == 3
    assert backbone.clip.visual.trunk.patch_embed.num_patches == 16
    assert len(backbone.mean) == len(backbone.std) == 3
    assert backbone.pad_id == 0
    assert backbone.special_ids == (0, 2, 3)  # [PAD], [CLS], [SEP]


def test_forward_gives_embeddings(backbone, demo_dir):
    image, text = embeddings(backbone, ["moderate cardiomegaly", "no pneumothorax"])
    assert image.shape == text.shape == (2, 48)
    assert torch.isfinite(image).all() and torch.isfinite(text).all()
    # Weights really came from the file: the same folder loads the same model.
    again = load_backbone(f"local-dir:{demo_dir}")
    image2, text2 = embeddings(again, ["moderate cardiomegaly", "no pneumothorax"])
    assert torch.equal(image, image2) and torch.equal(text, text2)


def test_loads_from_another_cwd_and_after_the_folder_moves(
    backbone, demo_dir, tmp_path, monkeypatch, no_network
):
    expected = embeddings(backbone, ["small left pleural effusion"])
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(demo_dir, moved)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for spec in (f"local-dir:{moved}", "local-dir:../elsewhere/moved"):
        got = embeddings(load_backbone(spec), ["small left pleural effusion"])
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), spec


def test_a_fresh_process_loads_the_folder(demo_dir, tmp_path):
    """The timm name is registered by the loader itself, not by whoever wrote the folder."""
    code = (
        "from lib.model.backbone import load_backbone; import timm, torch; "
        f"assert not timm.is_model({timm_model_name(PARAMS)!r}); "
        f"b = load_backbone('local-dir:{demo_dir}'); "
        "print(tuple(b.clip.encode_image(torch.zeros(1, 3, 64, 64)).shape))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(1, 48)")


def test_tokenizer_pads_with_zero_and_knows_the_report_words(backbone, demo_dir):
    vocab = set((demo_dir / "vocab.txt").read_text().splitlines())
    ids = backbone.tokenizer(["Moderate CARDIOMEGALY.", "no pneumothorax"])
    assert ids.dtype == torch.long and ids.shape == (2, 32)
    tok = backbone.tokenizer.tokenizer
    assert tok.convert_ids_to_tokens(ids[0, :5].tolist()) == [
        "[CLS]", "moderate", "cardiomegaly", ".", "[SEP]",
    ]  # fmt: skip
    assert (ids[0, 5:] == 0).all() and (ids[1, 4:] == 0).all()
    # Every word seen at least twice is in the vocabulary, as a whole word.
    frequent = [w for w, c in pretokenize(TEXTS).items() if c >= 2]
    assert set(frequent) <= vocab
    assert all(tok.tokenize(w) == [w] for w in frequent)
    # An unseen word still tokenizes (into pieces or [UNK]), and long texts are truncated.
    long = backbone.tokenizer([" ".join(["effusion"] * 100)])
    assert long.shape == (1, 32) and long[0, -1].item() == tok.sep_token_id
    assert (long != 0).all()


def test_timm_name_encodes_the_architecture_and_registers_on_demand():
    import timm

    name = timm_model_name(params_section(BackboneParams, patch_embed="linear"))
    assert name == "patchib_vit_p16_i96_w128_d4_h4"
    arch = parse_timm_model_name("patchib_vit_p8_i32_w24_d2_h3")
    assert arch == VitArch(patch_size=8, image_size=32, width=24, depth=2, heads=3)
    ensure_timm_model("patchib_vit_p8_i32_w24_d2_h3")
    ensure_timm_model("patchib_vit_p8_i32_w24_d2_h3")  # idempotent
    model = timm.create_model("patchib_vit_p8_i32_w24_d2_h3", num_classes=0)
    assert (len(model.blocks), model.embed_dim, model.patch_embed.num_patches) == (2, 24, 16)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 24)
    ensure_timm_model("vit_base_patch16_224")  # timm's own: nothing to do
    for bad in ("patchib_vit_p16_i90_w128_d4_h4", "patchib_vit_p16_i96_w130_d4_h4", "vit_tiny"):
        with pytest.raises(ValueError, match="timm model"):
            ensure_timm_model(bad)


def test_conv_stem_gives_the_same_patch_grid():
    """backbone.patch_embed: conv -> name suffix _cs, a stride-2 conv/BN/GELU stem down to the
    patch grid, and the same (B, N, D) tokens as the linear projection."""
    import timm

    params = params_section(BackboneParams, patch_embed="conv")
    assert timm_model_name(params) == "patchib_vit_p16_i96_w128_d4_h4_cs"
    arch = parse_timm_model_name("patchib_vit_p8_i32_w24_d2_h3_cs")
    assert arch == VitArch(8, 32, 24, 2, 3, conv_stem=True)
    ensure_timm_model("patchib_vit_p8_i32_w24_d2_h3_cs")
    conv = timm.create_model("patchib_vit_p8_i32_w24_d2_h3_cs", num_classes=0)
    linear = timm.create_model("patchib_vit_p8_i32_w24_d2_h3", num_classes=0)
    stem = conv.patch_embed.proj
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]  # 8 = 2**3, then 1x1
    assert [c.out_channels for c in convs] == [8, 12, 24, 24]  # doubling up to 24, >= 8
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in stem) == 3
    x = torch.randn(2, 3, 32, 32)
    assert conv.forward_features(x).shape == linear.forward_features(x).shape == (2, 17, 24)
    assert conv.patch_embed.grid_size == linear.patch_embed.grid_size == (4, 4)
    with pytest.raises(ValueError, match="power-of-two"):
        parse_timm_model_name("patchib_vit_p12_i36_w24_d2_h3_cs")


# --- hf-hub, from a local cache ------------------------------------------------------------


def put_in_hf_cache(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """Lay ``files`` out as huggingface_hub does: blobs, a snapshot of symlinks, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


@pytest.fixture
def hf_cache(tmp_path, demo_dir, monkeypatch) -> Path:
    """A cache holding a BiomedCLIP-like repo (config + .bin weights) that names a BERT repo
    (config.json + vocab.txt, as BiomedBERT), both made from the demo backbone."""
    from safetensors.torch import load_file

    cache = tmp_path / "hub"
    config = json.loads((demo_dir / CLIP_CONFIG).read_text())
    text_cfg = config["model_cfg"]["text_cfg"]
    text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = "patchib/tiny-bert"
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(load_file(demo_dir / WEIGHTS), weights)
    put_in_hf_cache(
        cache,
        "patchib/tiny-biomedclip",
        {CLIP_CONFIG: json.dumps(config).encode(), weights.name: weights.read_bytes()},
    )
    put_in_hf_cache(
        cache,
        "patchib/tiny-bert",
        {n: (demo_dir / n).read_bytes() for n in ("config.json", "vocab.txt")},
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hf_hub_loads_from_the_local_cache(hf_cache, backbone, no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub = load_backbone("hf-hub:patchib/tiny-biomedclip")
    texts = ["moderate cardiomegaly", "mild pulmonary edema. no pneumothorax"]
    assert torch.equal(hub.tokenizer(texts), backbone.tokenizer(texts))
    got, expected = embeddings(hub, texts), embeddings(backbone, texts)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert (hub.image_size, hub.context_length, hub.vision_depth) == (64, 32, 3)


def test_hf_hub_missing_repo_names_what_to_download(hf_cache, no_network):
    with pytest.raises(FileNotFoundError) as err:
        load_backbone(BIOMEDCLIP)
    message = str(err.value)
    assert "model.backbone" in message and str(hf_cache) in message
    assert f"hf download {BIOMEDCLIP.removeprefix('hf-hub:')}" in message
    assert f"hf download {BIOMEDCLIP_BERT}" in message


def test_hf_hub_missing_text_tower_names_the_bert_repo(hf_cache, no_network):
    shutil.rmtree(hf_cache / "models--patchib--tiny-bert")
    with pytest.raises(
        BackboneNotFoundError, match=r"patchib/tiny-bert.*hf download patchib/tiny-bert"
    ):
        load_backbone("hf-hub:patchib/tiny-biomedclip")


# --- errors ------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.backbone.*not found.*dvc repro") as err:
        load_backbone(f"local-dir:{tmp_path / 'nope'}")
    assert str(tmp_path / "nope") in str(err.value)
    assert isinstance(err.value, ParamsError)  # stage scripts print it without a traceback


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.backbone.*open_clip_config\.json"):
        load_backbone(f"local-dir:{tmp_path}")


def test_folder_without_weights(tmp_path, demo_dir):
    shutil.copytree(demo_dir, tmp_path / "d")
    (tmp_path / "d" / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights.*silently be random"):
        load_backbone(f"local-dir:{tmp_path / 'd'}")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot read"),
        ('{"embed_dim": 512}', "no 'model_cfg'"),
        ('{"model_cfg": {"vision_cfg": {}, "text_cfg": {}}}', "timm_model_name"),
    ],
)
def test_bad_config(tmp_path, content, match):
    (tmp_path / CLIP_CONFIG).write_text(content)
    with pytest.raises(BackboneConfigError, match=match) as err:
        load_backbone(f"local-dir:{tmp_path}")
    assert isinstance(err.value, ValueError) and "model.backbone" in str(err.value)


def test_text_tower_path_must_hold_a_bert_config(tmp_path, demo_dir):
    shutil.copytree(demo_dir, tmp_path / "d")
    (tmp_path / "d" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"hf_model_name = '\.'.*no Hugging Face config"):
        load_backbone(f"local-dir:{tmp_path / 'd'}")


# --- a folder that ships code ----------------------------------------------------------

# What a folder with custom code holds: a module transformers would import (and so run) when
# trusted; here it only leaves a marker file behind.
EVIL = """
import pathlib, os
pathlib.Path(os.environ["MARKER"]).write_text("ran")
from transformers import BertConfig, BertModel
class EvilConfig(BertConfig):
    model_type = "evilbert"
class EvilModel(BertModel):
    config_class = EvilConfig
"""


def _folder_with_code(tmp_path: Path, demo_dir: Path, json_file: str) -> Path:
    folder = tmp_path / "d"
    shutil.copytree(demo_dir, folder)
    (folder / "evil.py").write_text(EVIL)
    content = json.loads((folder / json_file).read_text())
    content["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    if json_file == "config.json":
        content["model_type"] = "evilbert"  # unknown to transformers: only the code knows it
    (folder / json_file).write_text(json.dumps(content))
    return folder


@pytest.mark.parametrize("json_file", ["config.json", "tokenizer_config.json", CLIP_CONFIG])
def test_folder_with_auto_map_is_refused_and_its_code_never_runs(
    tmp_path, demo_dir, monkeypatch, json_file
):
    folder = _folder_with_code(tmp_path, demo_dir, json_file)
    marker = tmp_path / "marker"
    monkeypatch.setenv("MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    with pytest.raises(BackboneConfigError, match=r"auto_map.*never runs") as err:
        load_backbone(f"local-dir:{folder}")
    assert str(folder / json_file) in str(err.value)
    assert not marker.exists()


def test_transformers_is_told_not_to_trust_remote_code(tmp_path, demo_dir):
    """Past the refusal (switched off here), transformers itself must refuse: a user answering
    "y" to its "run the custom code?" prompt ran the folder's code before."""
    folder = _folder_with_code(tmp_path, demo_dir, "config.json")
    marker = tmp_path / "marker"
    code = (
        "import lib.model.backbone as b; b.refuse_remote_code = lambda *a: None; "
        f"b.load_backbone('local-dir:{folder}')"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "MARKER": str(marker),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], input="y\n", env=env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "trust_remote_code" in done.stderr, done.stderr[-2000:]
    assert not marker.exists()


def test_unknown_scheme():
    with pytest.raises(ValueError, match=r"model\.backbone = 'ViT-B-16'.*local-dir"):
        load_backbone("ViT-B-16")


@pytest.mark.parametrize("pool", ["max", "avgmax"])
def test_vision_pool_is_the_loaded_towers_pooling(tmp_path: Path, pool: str):
    """backbone.vision_pool = max / avgmax: the folder says so, and the loaded image tower
    pools its patch tokens that way (the CLS token left out), as the written config asks."""
    out = tmp_path / "demo"
    write_demo_backbone(out, TEXTS, dataclasses.replace(PARAMS, vision_pool=pool))
    config = json.loads((out / CLIP_CONFIG).read_text())
    assert config["model_cfg"]["vision_cfg"]["timm_pool"] == pool
    visual = load_backbone(f"local-dir:{out}").clip.visual.eval()
    trunk = visual.trunk
    x = images(3)
    with torch.no_grad():
        patches = trunk.forward_features(x)[:, trunk.num_prefix_tokens :]  # (B, N, W)
        top, mean = patches.amax(dim=1), patches.mean(dim=1)
        pooled = top if pool == "max" else 0.5 * (top + mean)
        expected = visual.head(trunk.fc_norm(pooled))
        other = visual.head(trunk.fc_norm(mean))  # what avg pooling would give
        got = visual(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, other, atol=1e-3)


def test_pooling_params_select_biomedclips_cls_pooling():
    """backbone.vision_pool / text_pool = token / cls write BiomedCLIP's own pooling."""
    from lib.model.backbone import demo_open_clip_config

    cls = dataclasses.replace(PARAMS, vision_pool="token", text_pool="cls")
    cfg = demo_open_clip_config(cls)["model_cfg"]
    assert cfg["vision_cfg"]["timm_pool"] == ""  # timm's own: the CLS token
    assert cfg["text_cfg"]["hf_pooler_type"] == "cls_last_hidden_state_pooler"
