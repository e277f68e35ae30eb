"""The variants under ``models:`` in params.yaml, in its order (the first is the baseline):
each variant's effective config = the shared ``model:`` / ``train:`` sections plus its
differences under ``models.<name>``, and its ``description`` (the results table's text).

The ``resolve_config`` stage writes one JSON file per variant; ``train@<name>`` depends on
that file, not on whole params sections, so a change retrains exactly the variants whose
effective config changed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lib.config.fixed import FIXED_MODEL, fixed_model, fixed_train
from lib.config.params import ModelParams, Params, TrainParams, as_dict, build_section
from lib.errors import DataError, ParamsError

# The reference rows' names (stage pretrained's models/pretrained, stage pixel_probe's
# metrics/eval/pixels.json): a variant of either name would write over their folders.
PRETRAINED = "pretrained"
RESERVED: tuple[str, ...] = (PRETRAINED, "pixels")
# models.<X>.description: the variant's line in the results table (stage compare). Not part
# of its config, so editing it reruns compare only, never train@X.
DESCRIPTION = "description"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    model: ModelParams
    train: TrainParams
    # tree_digest of the model.backbone folder (local-dir:) when the config was resolved:
    # train@X depends on its config file, which so changes whenever the folder does.
    backbone_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": as_dict(self.model),
            "train": as_dict(self.train),
            "backbone_digest": self.backbone_digest,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str) -> Variant:
        digest = raw.get("backbone_digest")
        return cls(
            name=str(raw["name"]),
            model=build_section(ModelParams, raw["model"], "model", source),
            train=build_section(TrainParams, raw["train"], "train", source),
            backbone_digest=str(digest) if digest is not None else None,
        )


def resolve_variant(params: Params, name: str, source: str = "params.yaml") -> Variant:
    if name not in params.models:
        raise ParamsError(
            f"{source}: no variant '{name}' under 'models'; defined: {sorted(params.models)}"
        )
    overrides = params.models[name] or {}
    if not isinstance(overrides, Mapping):
        raise ParamsError(f"{source}: models.{name} must be a mapping of overrides")
    overrides = dict(overrides)
    overrides.pop(DESCRIPTION, None)
    train_over = overrides.pop("train", None) or {}
    if not isinstance(train_over, Mapping):
        raise ParamsError(f"{source}: models.{name}.train must be a mapping of overrides")
    model = build_section(
        ModelParams, {**as_dict(params.model), **overrides}, f"models.{name}", source
    )
    train = build_section(
        TrainParams, merge(as_dict(params.train), train_over), f"models.{name}.train", source
    )
    return Variant(name=name, model=without_inert_settings(model), train=train)


def without_inert_settings(model: ModelParams) -> ModelParams:
    """``model`` with the settings its variant never reads put back to their fixed values
    (``lib.config.fixed.FIXED_MODEL``).

    So a variant's config (and its train@ stage) changes only when something it uses
    changes: ``-S model.keep_ratio=0.3`` retrains C–E, not A and B; ``-S
    model.local_temperature=0.2`` retrains B–E, not A.
    """
    unused: list[str] = []
    if model.architecture != "convirt":
        unused += ["head_dim", "frozen_text_layers", "text_pool"]
    if not model.use_local_alignment:
        unused += ["local_mode", "local_weight", "local_temperature"]
        if not model.use_masking:
            unused.append("local_dim")  # the patch projection serves masking too
    if not model.use_masking:
        unused += [
            "mask_mode",
            "keep_ratio",
            "sparse_weight",
            "cons_weight",
            "mask_noise",
        ]
    if not (model.use_masking and model.use_local_alignment):
        unused.append("mask_guide_weight")  # the guide is the local alignment's attention
    if not (model.use_masking and model.mask_mode == "topk"):
        unused.append("topk_temperature")
    if not (model.use_masking and model.mask_mode == "drop"):
        unused.append("drop_layer")
    return dataclasses.replace(model, **{key: FIXED_MODEL[key] for key in unused})


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top, nested mappings merged key by key: an override of
    ``train.augment.rotation_deg`` keeps the shared section's other ``augment`` keys."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_all(params: Params, source: str = "params.yaml") -> dict[str, Variant]:
    reserved = sorted(set(params.models) & set(RESERVED))
    if reserved:
        raise ParamsError(
            f"{source}: models.{reserved[0]}: {list(RESERVED)} name the reference rows "
            "(models/pretrained, metrics/eval/pixels.json); rename the variant"
        )
    descriptions(params, source)  # a bad one stops every stage, not only compare
    return {name: resolve_variant(params, name, source) for name in params.models}


def baseline(params: Params) -> str:
    """The variant the others are tested against: the first entry of ``models:``."""
    if not params.models:
        raise ParamsError("params.yaml: 'models' is empty; define at least one variant")
    return next(iter(params.models))


def descriptions(params: Params, source: str = "params.yaml") -> dict[str, str]:
    """{variant: its ``models.<X>.description``} in the order of ``models:``; "" if none."""
    out = {}
    for name, raw in params.models.items():
        text = (raw or {}).get(DESCRIPTION, "") if isinstance(raw, Mapping) else ""
        if not isinstance(text, str):
            raise ParamsError(
                f"{source}: models.{name}.{DESCRIPTION} must be a string, got {text!r}; quote it"
            )
        out[name] = text
    return out


def settings(params: Params) -> dict[str, Any]:
    """``models:`` without the descriptions, in its order: what the stages that build
    variants read (stage check_params writes it to data/params/models.json), so that editing
    a description reruns stage compare alone."""
    return {
        name: {k: v for k, v in dict(raw or {}).items() if k != DESCRIPTION}
        for name, raw in params.models.items()
    }


def with_settings(params: Params, path: Path) -> Params:
    """``params`` with ``models`` read from ``path`` (stage check_params' data/params/models.json),
    the variants' settings without their descriptions."""
    if not path.is_file():
        raise DataError(f"{path}: not found; run `dvc repro check_params`, which writes it")
    models = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(models, dict) or not models:
        raise DataError(
            f"{path}: expected the variants of models: as a non-empty mapping, got "
            f"{type(models).__name__}; rerun `dvc repro -f check_params`"
        )
    return dataclasses.replace(params, models=models)


def pretrained_variant(backbone: str, use_amp: bool) -> Variant:
    """The "pretrained backbone, no fine-tuning" reference's config (stage pretrained):
    model A's architecture on ``backbone``; ``use_amp`` sets its inference precision on CUDA.
    Nothing else of ``model:`` / ``train:`` enters it."""
    model = fixed_model(backbone=backbone, use_local_alignment=False, use_masking=False)
    return Variant(name=PRETRAINED, model=model, train=fixed_train(use_amp=use_amp))


def with_backbone_digest(variant: Variant) -> Variant:
    """``variant`` with the digest of its ``local-dir:`` backbone folder (lib.io.tree_digest),
    so that its resolved config, and the stages that depend on it, change with the folder.
    An ``hf-hub:`` backbone lives in the Hugging Face cache, outside the pipeline: no digest.
    A local folder that is missing is an error naming the stage that writes it."""
    from lib.io import tree_digest  # pandas: only for the stage that resolves configs

    spec = variant.model.backbone
    if not spec.startswith("local-dir:"):
        return variant
    folder = Path(spec.removeprefix("local-dir:")).expanduser()
    if not folder.exists():
        key = "model.backbone" if variant.name == PRETRAINED else f"models.{variant.name}"
        fix = "" if variant.name == PRETRAINED else f" / models.{variant.name}.backbone"
        raise DataError(
            f"{key}: backbone folder {folder} ({spec}) not found; run `dvc repro` (stages "
            f"demo_backbone / convirt_backbone write the demo's), or fix model.backbone{fix}"
        )
    return dataclasses.replace(variant, backbone_digest=tree_digest(folder))


def variant_name(model_dir: Path) -> str:
    """The variant name in ``model_dir``/config.json, as train@X writes it (no model loaded)."""
    config = model_dir / "config.json"
    if not config.is_file():
        raise DataError(f"{config}: not found; run `dvc repro train@{model_dir.name}` first")
    name = json.loads(config.read_text(encoding="utf-8")).get("name")
    if not isinstance(name, str) or not name:
        raise DataError(
            f"{config}: no variant 'name'; it was not written by train@X, rerun "
            f"`dvc repro -f train@{model_dir.name}`"
        )
    return name
