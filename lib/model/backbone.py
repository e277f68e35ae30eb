"""The vision-language backbone: BiomedCLIP, or BiomedCLIP in miniature for the demo.

BiomedCLIP (``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) is an open_clip
CustomTextCLIP: a timm ViT-B/16 trunk with token (CLS) pooling and a linear projection, and a
Hugging Face BiomedBERT text tower with CLS pooling and an MLP projection. The demo backbone has
the same structure at a size a laptop trains in minutes, with random weights and a WordPiece
vocabulary learned from the reports; the pipeline writes it as an open_clip ``local-dir:``
folder. Both load through one code path (:func:`load_backbone`), and nothing is ever
downloaded at run time: ``hf-hub:`` reads the local Hugging Face cache only.

Two open_clip traps shape the loader:
- open_clip's timm adapter passes neither image size nor depth to timm, so a small ViT only
  exists under its own registered name; names of the form ``patchib_vit_p16_i96_w128_d4_h4``
  encode the architecture and :func:`ensure_timm_model` registers them on demand.
- open_clip's HF text tower calls ``AutoConfig.from_pretrained(hf_model_name)`` even when the
  full CLIP weights follow, and fetches BERT's own weights unless told not to. The loader
  resolves ``hf_model_name`` to a local directory itself (the folder, or a cached snapshot)
  and always builds the tower from its config only (``pretrained_text=False``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Nothing leaves the machine: no hub requests, no telemetry (set before huggingface_hub,
# transformers or open_clip are imported, which read these once). A caller can still
# override them in the environment.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
from torch import nn

from lib.config.params import BackboneParams, ConvirtBackboneParams
from lib.errors import DataError, ParamsError
from lib.io import atomic_path
from lib.model.vocab import train_wordpiece_vocab

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
# The text tower BiomedCLIP's open_clip_config.json names; needed in the cache beside it.
BIOMEDCLIP_BERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
# OpenAI CLIP normalisation, which BiomedCLIP's preprocess_cfg also uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CLIP_CONFIG = "open_clip_config.json"
# A Hugging Face BERT folder's config and tokenizer files (those the demo backbone writes).
BERT_FILES = (
    "config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)
WEIGHTS = "open_clip_model.safetensors"
PARAMS_KEY = "model.backbone"

TIMM_NAME = re.compile(r"patchib_vit_p(\d+)_i(\d+)_w(\d+)_d(\d+)_h(\d+)(_cs)?")
# ConVIRT's demo image tower: a bottleneck ResNet of stage widths w·(1, 2, 4, 8), d blocks each.
RESNET_NAME = re.compile(r"patchib_resnet_w(\d+)_d(\d+)")
# Registered timm entrypoints live in a module of their own: timm's register_model appends the
# name to its module's __all__, which must not be lib.model.backbone's.
_TIMM_MODULE = "patchib_timm_models"


class BackboneNotFoundError(ParamsError, FileNotFoundError):
    """A folder, file or Hugging Face cache entry that model.backbone needs is absent."""


class BackboneConfigError(ParamsError, ValueError):
    """The backbone's config names something this loader cannot build."""


@dataclass(frozen=True)
class Backbone:
    """A loaded open_clip model and what the data pipeline needs to feed it."""

    clip: nn.Module  # open_clip CustomTextCLIP: .visual (TimmModel) and .text (HFTextEncoder)
    tokenizer: Callable[[list[str]], torch.Tensor]  # texts -> (B, context_length) long, pad 0
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    context_length: int
    vision_depth: int  # ViT blocks (a ResNet's stages)
    text_depth: int  # BERT layers
    pad_id: int
    special_ids: tuple[int, ...]  # [PAD], [CLS], [SEP]: positions that are not words


@dataclass(frozen=True)
class VitArch:
    patch_size: int
    image_size: int
    width: int
    depth: int
    heads: int
    conv_stem: bool = False  # name suffix _cs: ConvStemPatchEmbed instead of one projection


# --- timm: the small ViT under a name that encodes it -------------------------------------


def timm_model_name(params: BackboneParams) -> str:
    """The timm name of the demo ViT, e.g. ``patchib_vit_p16_i96_w128_d4_h4`` (``_cs``
    appended with a convolutional stem)."""
    return (
        f"patchib_vit_p{params.patch_size}_i{params.image_size}_w{params.vision_width}"
        f"_d{params.vision_depth}_h{params.vision_heads}"
        + ("_cs" if params.patch_embed == "conv" else "")
    )


def parse_timm_model_name(name: str) -> VitArch:
    match = TIMM_NAME.fullmatch(name)
    if match is None:
        raise BackboneConfigError(
            f"timm model {name!r} is neither a timm model nor of the form "
            "patchib_vit_p<patch>_i<image size>_w<width>_d<depth>_h<heads>[_cs]; fix "
            f"vision_cfg.timm_model_name in the {CLIP_CONFIG} that {PARAMS_KEY} points at"
        )
    patch, image, width, depth, heads = (int(g) for g in match.groups()[:5])
    conv_stem = match.group(6) is not None
    if min(patch, image, width, depth, heads) < 1 or image % patch or width % heads:
        raise BackboneConfigError(
            f"timm model {name!r}: image size must be a multiple of the patch size and width a "
            "multiple of the heads, all > 0; rewrite the backbone with valid backbone.* params"
        )
    if conv_stem and patch & (patch - 1):
        raise BackboneConfigError(
            f"timm model {name!r}: a convolutional stem (_cs) needs a power-of-two patch size; "
            "set backbone.patch_size to 8, 16 or 32, or backbone.patch_embed: linear"
        )
    return VitArch(patch, image, width, depth, heads, conv_stem)


def ensure_timm_model(name: str) -> None:
    """Make ``timm.create_model(name)`` work in this process (idempotent).

    timm's own names (``vit_base_patch16_224``) need nothing; ``patchib_vit_*`` names are
    registered as a ViT-B-style VisionTransformer (pre-norm, CLS token, qkv bias, MLP ratio 4,
    token pooling) of the encoded size; with ``_cs``, its patch embedding is
    :class:`ConvStemPatchEmbed`.
    """
    import timm
    from timm.models import build_model_with_cfg, register_model
    from timm.models.vision_transformer import VisionTransformer

    if timm.is_model(name):
        return
    if RESNET_NAME.fullmatch(name):
        _register_resnet(name)
        return
    arch = parse_timm_model_name(name)
    model_args = dict(
        img_size=arch.image_size,
        patch_size=arch.patch_size,
        embed_dim=arch.width,
        depth=arch.depth,
        num_heads=arch.heads,
    )
    if arch.conv_stem:
        model_args["embed_layer"] = _conv_stem_patch_embed()
    default_cfg = {
        "num_classes": 0,
        "input_size": (3, arch.image_size, arch.image_size),
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }

    def entrypoint(
        pretrained: bool = False, pretrained_cfg: Any = None, **kwargs: Any
    ) -> VisionTransformer:
        if pretrained:
            raise BackboneConfigError(
                f"timm model {name!r} has no pretrained weights; its weights come from the "
                f"backbone folder's {WEIGHTS}"
            )
        return build_model_with_cfg(
            VisionTransformer,
            name,
            pretrained=False,
            pretrained_cfg=pretrained_cfg or default_cfg,
            feature_cfg=dict(out_indices=arch.depth - 1, feature_cls="getter"),
            **{**model_args, **kwargs},
        )

    module = sys.modules.setdefault(_TIMM_MODULE, types.ModuleType(_TIMM_MODULE))
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module.__name__
    register_model(entrypoint)


def resnet_model_name(params: ConvirtBackboneParams) -> str:
    """The timm name of ConVIRT's demo ResNet, e.g. ``patchib_resnet_w16_d1``."""
    return f"patchib_resnet_w{params.width}_d{params.depth}"


def _register_resnet(name: str) -> None:
    """Register ``patchib_resnet_w<w>_d<d>``: timm's ResNet with ResNet-50's bottleneck blocks
    (expansion 4, so 32·w pooled features), stage widths w·(1, 2, 4, 8) and d blocks per
    stage, a stem of width w; output stride 32 as ResNet-50."""
    from timm.models import build_model_with_cfg, register_model
    from timm.models.resnet import Bottleneck, ResNet

    match = RESNET_NAME.fullmatch(name)
    assert match is not None
    width, depth = (int(g) for g in match.groups())
    if min(width, depth) < 1:
        raise BackboneConfigError(
            f"timm model {name!r}: width and depth must be > 0; rewrite the backbone with "
            "valid convirt_backbone.* params"
        )
    default_cfg = {
        "num_classes": 0,
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "first_conv": "conv1",
        "classifier": "fc",
    }

    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, **kwargs: Any) -> ResNet:
        if pretrained:
            raise BackboneConfigError(
                f"timm model {name!r} has no pretrained weights; its weights come from the "
                f"backbone folder's {WEIGHTS}"
            )
        args = dict(
            block=Bottleneck,
            layers=(depth,) * 4,
            channels=tuple(width * 2**i for i in range(4)),
            stem_width=width,
        )
        return build_model_with_cfg(
            ResNet,
            name,
            pretrained=False,
            pretrained_cfg=pretrained_cfg or default_cfg,
            **{**args, **kwargs},
        )

    module = sys.modules.setdefault(_TIMM_MODULE, types.ModuleType(_TIMM_MODULE))
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module.__name__
    register_model(entrypoint)


def _conv_stem_patch_embed() -> type[nn.Module]:
    """:class:`ConvStemPatchEmbed`, built on first use (timm is imported lazily)."""
    global _CONV_STEM
    if _CONV_STEM is None:
        from timm.layers import PatchEmbed

        class ConvStemPatchEmbed(PatchEmbed):
            """timm's PatchEmbed with a convolutional stem instead of one patch projection.

            log2(patch) stride-2 3x3 convolutions, each followed by BatchNorm and GELU, their
            widths doubling up to the embedding width (at least 8), then a 1x1 projection:
            the same (B, N, D) patch tokens on the same grid, so Patch-IB's masks and the
            local alignment see the same patches. Early convolutions make a small ViT learn
            faster from few images (Xiao et al., 2021, "Early convolutions help transformers
            see better"). BatchNorm, not a per-image norm: GroupNorm and LayerNorm2d remove
            each image's overall intensity, which carries findings such as edema (measured,
            benchmarks/README.md). PatchIBModel keeps the running statistics fixed while the
            trunk is frozen.
            """

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                steps = self.patch_size[0].bit_length() - 1
                embed, chans = self.proj.out_channels, [self.proj.in_channels]
                chans += [max(8, embed >> (steps - 1 - i)) for i in range(steps)]
                layers: list[nn.Module] = []
                for i in range(steps):
                    layers += [
                        nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1, bias=False),
                        nn.BatchNorm2d(chans[i + 1]),
                        nn.GELU(),
                    ]
                layers.append(nn.Conv2d(chans[-1], embed, 1, bias=self.proj.bias is not None))
                self.proj = nn.Sequential(*layers)

        ConvStemPatchEmbed.__module__ = __name__
        _CONV_STEM = ConvStemPatchEmbed
    return _CONV_STEM


_CONV_STEM: type[nn.Module] | None = None


# --- writing the demo backbone ------------------------------------------------------------


def demo_open_clip_config(params: BackboneParams) -> dict[str, Any]:
    """open_clip_config.json of the demo backbone, shaped like BiomedCLIP's.

    ``hf_model_name`` / ``hf_tokenizer_name`` are ``"."``: the BERT config and tokenizer lie in
    the folder itself, and the loader resolves the name against the folder, not the cwd.
    """
    return {
        "model_cfg": {
            "embed_dim": params.embed_dim,
            "vision_cfg": {
                "timm_model_name": timm_model_name(params),
                "timm_model_pretrained": False,
                # "" keeps timm's own pooling (the CLS token, as BiomedCLIP); otherwise
                # timm's pooling of the patch tokens ("avg", "max", "avgmax").
                "timm_pool": "" if params.vision_pool == "token" else params.vision_pool,
                "timm_proj": "linear",
                "image_size": params.image_size,
            },
            "text_cfg": {
                "hf_model_name": ".",
                "hf_tokenizer_name": ".",
                "hf_proj_type": "mlp",
                "hf_pooler_type": (
                    "cls_last_hidden_state_pooler" if params.text_pool == "cls" else "mean_pooler"
                ),
                "context_length": params.context_length,
            },
        },
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }


def write_demo_backbone(out_dir: Path, texts: Iterable[str], params: BackboneParams) -> None:
    """Write the demo backbone as an open_clip ``local-dir:`` folder, byte-reproducibly.

    Files: open_clip_config.json, open_clip_model.safetensors (random init from
    ``params.seed``), the BERT config.json, and the tokenizer (vocab.txt, tokenizer.json,
    tokenizer_config.json) with a WordPiece vocabulary learned from ``texts``.
    """
    from safetensors.torch import save_file
    from transformers import BertConfig, BertTokenizer

    params.validate()
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise DataError(
            "write_demo_backbone: no report texts to learn the vocabulary from; "
            "check that the train split of the master file has non-empty 'text'"
        )
    vocab = train_wordpiece_vocab(texts, params.vocab_size)
    bert = BertConfig(
        vocab_size=len(vocab),
        hidden_size=params.text_width,
        num_hidden_layers=params.text_layers,
        num_attention_heads=params.text_heads,
        intermediate_size=4 * params.text_width,
        max_position_embeddings=params.context_length,
        pad_token_id=vocab["[PAD]"],
        # No dropout: a model this small, trained from scratch for a few epochs, underfits
        # rather than overfits, and on a CPU dropout's random masks cost ~40 % of the text
        # tower's forward time. (BiomedCLIP's own BERT keeps its 0.1.)
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        ordered = sorted(vocab, key=vocab.__getitem__)
        (tmp / "vocab.txt").write_text("".join(f"{t}\n" for t in ordered), encoding="utf-8")
        # transformers 5 takes the vocabulary as `vocab=`; `vocab_file=` is silently ignored.
        tokenizer = BertTokenizer(
            vocab=vocab, do_lower_case=True, model_max_length=params.context_length
        )
        tokenizer.save_pretrained(tmp)
        bert.save_pretrained(tmp)
        config = demo_open_clip_config(params)
        (tmp / CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        # The random init is the weights file; fork_rng keeps the caller's RNG untouched.
        state = random_init_state(tmp, config, f"local-dir:{out_dir}", params.seed)
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})


class _DropRandomInitWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "weights" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warnings() -> Iterator[None]:
    """Silence open_clip's "no weights found / initialized randomly" while writing the demo:
    a random init is the point there (open_clip logs on the root logger)."""
    root = logging.getLogger()
    quiet = _DropRandomInitWarnings()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


# --- loading ------------------------------------------------------------------------------


def random_init_state(
    folder: Path, config: dict[str, Any], spec: str, seed: int
) -> dict[str, torch.Tensor]:
    """The state dict of the open_clip model of ``folder``'s config at random from ``seed``
    (what the demo backbones' writers save); the caller's RNG is left untouched."""
    with torch.random.fork_rng(devices=[]), _quiet_random_init_warnings():
        torch.manual_seed(seed)
        clip = _create_clip(folder, config, spec=spec, load_weights=False)
    return {k: v.detach().contiguous() for k, v in clip.state_dict().items()}


def load_backbone(spec: str, device: str | torch.device = "cpu") -> Backbone:
    """Load ``local-dir:<folder>`` or ``hf-hub:<repo>`` (local Hugging Face cache only)."""
    if spec.startswith("local-dir:"):
        folder = Path(spec.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise BackboneNotFoundError(
                f"{PARAMS_KEY} = {spec!r}: folder {folder.resolve()} not found; run the stage "
                f"that writes it (`dvc repro`), or point {PARAMS_KEY} at an existing folder"
            )
        if not (folder / CLIP_CONFIG).is_file():
            raise BackboneNotFoundError(
                f"{PARAMS_KEY} = {spec!r}: {folder.resolve() / CLIP_CONFIG} not found; the "
                "folder is not an open_clip model folder (it needs open_clip_config.json and "
                f"the weights); rewrite it with `dvc repro`, or fix {PARAMS_KEY}"
            )
    elif spec.startswith("hf-hub:"):
        repo = spec.removeprefix("hf-hub:")
        # BiomedCLIP's config names its BERT repo; say so now rather than on a second try.
        also = BIOMEDCLIP_BERT if spec == BIOMEDCLIP else None
        folder = _cached_snapshot(repo, CLIP_CONFIG, spec, also_fetch=also)
    else:
        raise BackboneConfigError(
            f"{PARAMS_KEY} = {spec!r}: use 'local-dir:<path>' or 'hf-hub:<org>/<repo>'"
        )
    return _load_from_dir(folder.resolve(), spec, device)


def _load_from_dir(folder: Path, spec: str, device: str | torch.device) -> Backbone:
    config = _read_config(folder, spec)
    towers = towers_pretrained(config)
    has_weights = bool(_weight_files(folder))
    if not has_weights and not towers:
        fix = (
            f"run `hf download {spec.removeprefix('hf-hub:')}` on a machine with network"
            if spec.startswith("hf-hub:")
            else "rewrite the folder with `dvc repro`"
        )
        raise BackboneNotFoundError(
            f"{PARAMS_KEY} = {spec!r}: no weights (*.safetensors, *.bin, *.pth) in {folder}; "
            f"without them the model would silently be random; {fix} (a folder of two "
            "separately pretrained towers says so: vision_cfg.timm_model_pretrained and "
            "text_cfg.hf_model_pretrained true)"
        )
    if has_weights:
        clip = _create_clip(folder, config, spec=spec, load_weights=True, device=device)
    else:
        clip = _create_clip(
            folder, config, spec=spec, load_weights=False, device=device, towers=True
        )

    from open_clip.tokenizer import HFTokenizer

    text_cfg = config["model_cfg"]["text_cfg"]
    context_length = int(text_cfg.get("context_length", 77))
    tokenizer_name = text_cfg.get("hf_tokenizer_name") or text_cfg["hf_model_name"]
    tokenizer_dir = _resolve_hf_dir(tokenizer_name, folder, spec, "text_cfg.hf_tokenizer_name")
    tokenizer = HFTokenizer(
        str(tokenizer_dir), context_length=context_length, trust_remote_code=False
    )
    hf_tok = tokenizer.tokenizer
    pad_id = int(hf_tok.pad_token_id)
    if pad_id != clip.text.config.pad_token_id:
        raise BackboneConfigError(
            f"{PARAMS_KEY} = {spec!r}: the tokenizer pads with id {pad_id} but the BERT config "
            f"says pad_token_id = {clip.text.config.pad_token_id}; fix config.json of "
            f"{tokenizer_dir} so both agree"
        )
    special_ids = tuple(sorted({pad_id, int(hf_tok.cls_token_id), int(hf_tok.sep_token_id)}))
    pp = clip.visual.preprocess_cfg
    size = pp["size"]
    return Backbone(
        clip=clip,
        tokenizer=tokenizer,
        image_size=int(size if isinstance(size, int) else size[0]),
        mean=tuple(float(m) for m in pp["mean"]),
        std=tuple(float(s) for s in pp["std"]),
        context_length=context_length,
        vision_depth=_vision_depth(clip.visual.trunk),
        text_depth=int(clip.text.config.num_hidden_layers),
        pad_id=pad_id,
        special_ids=special_ids,
    )


def towers_pretrained(config: dict[str, Any]) -> bool:
    """Whether an open_clip config builds both towers from their own pretrained weights (a
    timm model and a Hugging Face model, read from the local cache) rather than from a CLIP
    checkpoint: ConVIRT's ImageNet ResNet-50 and ClinicalBERT."""
    model_cfg = config["model_cfg"]
    return bool(model_cfg["vision_cfg"].get("timm_model_pretrained")) and bool(
        model_cfg["text_cfg"].get("hf_model_pretrained")
    )


def _vision_depth(trunk: nn.Module) -> int:
    """A ViT's blocks, or a ResNet's stages (layer1..layer4)."""
    if hasattr(trunk, "blocks"):
        return len(trunk.blocks)
    return sum(1 for i in range(1, 5) if hasattr(trunk, f"layer{i}"))


def refuse_remote_code(folder: Path, spec: str) -> None:
    """Raise if a json file of ``folder`` (open_clip_config.json, config.json,
    tokenizer_config.json, ...) carries ``auto_map``: a pointer to Python code in the folder
    that transformers would import and run (after asking "run the custom code? [y/N]" on a
    terminal). This loader builds BERT and open_clip towers only, which need no such code."""
    for path in sorted(folder.glob("*.json")):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue  # not a config; the reader that needs it reports it
        if _has_key(content, "auto_map"):
            raise BackboneConfigError(
                f"{PARAMS_KEY} = {spec!r}: {path} has an 'auto_map' entry, which points "
                "transformers at Python code shipped in the folder; this loader never runs a "
                "model folder's code (trust_remote_code=False). Remove 'auto_map' if the model "
                "is a standard architecture (BERT), or use a backbone that needs no custom code"
            )


def _has_key(obj: Any, key: str) -> bool:
    if isinstance(obj, dict):
        return key in obj or any(_has_key(v, key) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_key(v, key) for v in obj)
    return False


@contextlib.contextmanager
def _no_remote_code() -> Iterator[None]:
    """open_clip's HF text tower calls ``AutoConfig.from_pretrained`` and ``AutoModel`` without
    ``trust_remote_code``, which leaves transformers free to prompt for, and run, a folder's
    code; within this block those calls get ``trust_remote_code=False``."""
    import open_clip.hf_model as hf_model

    saved = hf_model.AutoConfig, hf_model.AutoModel

    def forced(method: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: method(*args, **{**kwargs, "trust_remote_code": False})

    hf_model.AutoConfig = types.SimpleNamespace(from_pretrained=forced(saved[0].from_pretrained))
    hf_model.AutoModel = types.SimpleNamespace(
        from_pretrained=forced(saved[1].from_pretrained),
        from_config=forced(saved[1].from_config),
    )
    try:
        yield
    finally:
        hf_model.AutoConfig, hf_model.AutoModel = saved


def _read_config(folder: Path, spec: str) -> dict[str, Any]:
    refuse_remote_code(folder, spec)
    path = folder / CLIP_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BackboneConfigError(
            f"{PARAMS_KEY} = {spec!r}: cannot read {path} ({e}); rewrite the folder"
        ) from e
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict):
        raise BackboneConfigError(
            f"{PARAMS_KEY} = {spec!r}: {path} has no 'model_cfg' mapping; an open_clip "
            "config holds {'model_cfg': {...}, 'preprocess_cfg': {...}}; rewrite the folder"
        )
    vision = model_cfg.get("vision_cfg") or {}
    text = model_cfg.get("text_cfg") or {}
    if not vision.get("timm_model_name") or not text.get("hf_model_name"):
        raise BackboneConfigError(
            f"{PARAMS_KEY} = {spec!r}: {path} must name a timm vision tower "
            "(vision_cfg.timm_model_name) and a Hugging Face text tower (text_cfg.hf_model_name), "
            "as BiomedCLIP does; got "
            f"{vision.get('timm_model_name')!r} / {text.get('hf_model_name')!r}"
        )
    return config


def _create_clip(
    folder: Path,
    config: dict[str, Any],
    spec: str,
    load_weights: bool,
    device: str | torch.device = "cpu",
    towers: bool = False,
) -> nn.Module:
    """Build the open_clip model of ``folder`` (with its weights if ``load_weights``; with
    ``towers``, each tower with its own pretrained weights from the local caches)."""
    import open_clip

    model_cfg = config["model_cfg"]
    timm_name = model_cfg["vision_cfg"]["timm_model_name"]
    ensure_timm_model(timm_name)
    text_cfg = copy.deepcopy(model_cfg["text_cfg"])
    text_cfg["hf_model_name"] = str(
        _resolve_hf_dir(text_cfg["hf_model_name"], folder, spec, "text_cfg.hf_model_name")
    )
    # BERT is built from its config; its weights are part of the CLIP checkpoint, or (towers)
    # its own, from the folder resolved above.
    text_cfg["hf_model_pretrained"] = towers
    with _no_remote_code():
        clip = open_clip.create_model(
            f"local-dir:{folder}",
            load_weights=load_weights,
            device=device,
            pretrained_image=False,  # (towers) loaded below, from the cache this loader reads
            pretrained_text=towers,
            text_cfg=text_cfg,  # overrides the file's text_cfg: names resolved to local dirs
        )
    if towers:
        _load_timm_weights(clip.visual.trunk, timm_name, spec)
    return clip


def _load_timm_weights(trunk: nn.Module, timm_name: str, spec: str) -> None:
    """The timm model's own pretrained weights (``timm/<name>`` in the local Hugging Face
    cache) into ``trunk``, its classifier left out (open_clip builds the trunk without one)."""
    from safetensors.torch import load_file
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        raise BackboneConfigError(
            f"{PARAMS_KEY} = {spec!r}: timm model {timm_name!r} has no pretrained weights on "
            "the Hugging Face hub (timm's pretrained_cfg.hf_hub_id); name a tagged model such "
            "as resnet50.a1_in1k"
        )
    path = next(
        (
            p
            for f in ("model.safetensors", "pytorch_model.bin")
            if isinstance(p := _try_cache(repo, f), str)
        ),
        None,
    )
    if path is None:
        cache = _hf_cache_dir()
        raise BackboneNotFoundError(
            f"{PARAMS_KEY} = {spec!r}: the pretrained weights of timm model {timm_name!r} "
            f"(Hugging Face repo {repo!r}) are not in the local cache {cache}, and nothing is "
            f"downloaded at run time. On a machine with network run `hf download {repo}` with "
            f"HF_HUB_CACHE={cache}, or copy such a cache here"
        )
    if path.endswith(".safetensors"):
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    classifier = getattr(cfg, "classifier", None) or "fc"
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BackboneConfigError(
            f"{PARAMS_KEY} = {spec!r}: {path} does not fit timm model {timm_name!r} ({e}); "
            f"download {repo} again"
        ) from e


def _resolve_hf_dir(name: str, folder: Path, spec: str, key: str) -> Path:
    """A local directory for a Hugging Face model/tokenizer name of a backbone config.

    ``.``/``./x``/``../x`` are relative to the backbone folder (which DVC may move), absolute
    paths are used as they are, anything else is a Hub repo id read from the local cache.
    """
    if name == "." or name.startswith(("./", "../")):
        path = (folder / name).resolve()
    elif Path(name).is_absolute():
        path = Path(name)
    else:
        filename = "config.json" if key.endswith("hf_model_name") else _tokenizer_file(name)
        path = _cached_snapshot(name, filename, spec)
        refuse_remote_code(path, spec)
        return path
    if not (path / "config.json").is_file():
        raise BackboneNotFoundError(
            f"{PARAMS_KEY} = {spec!r}: {key} = {name!r} in {folder / CLIP_CONFIG} points at "
            f"{path}, which has no Hugging Face config.json; rewrite the backbone folder"
        )
    refuse_remote_code(path, spec)
    return path


def _tokenizer_file(repo: str) -> str:
    """The first tokenizer file of ``repo`` present in the cache (vocab.txt by default)."""
    for filename in ("tokenizer.json", "vocab.txt"):
        if isinstance(_try_cache(repo, filename), str):
            return filename
    return "vocab.txt"


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _try_cache(repo: str, filename: str) -> Any:
    from huggingface_hub import try_to_load_from_cache

    try:
        return try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir())
    except ValueError:  # not a valid repo id
        return None


def _cached_snapshot(repo: str, filename: str, spec: str, also_fetch: str | None = None) -> Path:
    """The cached snapshot directory of ``repo`` holding ``filename``; never a network call."""
    path = _try_cache(repo, filename)
    if not isinstance(path, str):
        cache = _hf_cache_dir()
        fetch = f"`hf download {repo}`" + (f" and `hf download {also_fetch}`" if also_fetch else "")
        raise BackboneNotFoundError(
            f"{PARAMS_KEY} = {spec!r}: {filename} of Hugging Face repo {repo!r} is not in the "
            f"local cache {cache}, and nothing is downloaded at run time. On a machine with "
            f"network run {fetch} (older huggingface_hub: `huggingface-cli download <repo>`) "
            f"with HF_HUB_CACHE={cache}, or copy such a cache here; or set {PARAMS_KEY} to a "
            "'local-dir:' folder"
        )
    return Path(path).parent


def _weight_files(folder: Path) -> Sequence[Path]:
    return [p for ext in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(ext)]
