import copy
import dataclasses
import math
import typing
from typing import Any

import pytest
import yaml

from lib.config.loader import load_params, parse_params
from lib.config.params import (
    _SECTION_TYPES,
    AugmentParams,
    DataParams,
    Params,
    Positive,
    TrainParams,
    field_checks,
)
from lib.config.variants import resolve_all
from lib.errors import ParamsError
from tests.conftest import REPO_PARAMS, repo_raw


def without(raw: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def test_repo_params_yaml_is_valid():
    params = load_params("params.yaml")
    assert isinstance(params, Params)
    assert params.data.views == ("PA", "AP")
    assert params.data.label_policy == "positive_only"


def test_the_schema_holds_no_values():
    """params.yaml is the one source of values: no section field has a code default."""
    for cls in (*_SECTION_TYPES.values(), AugmentParams, Params):
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING, f"{cls.__name__}.{f.name}"
            assert f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize(
    "path", [("train", "lr"), ("eval", "probe_c"), ("train", "augment", "hflip"), ("demo", "seed")]
)
def test_a_missing_key_is_an_error_naming_it(path):
    with pytest.raises(ParamsError, match="missing key") as err:
        parse_params(without(repo_raw(), *path), source="params.yaml")
    message = str(err.value)
    assert message.startswith("params.yaml: ") and f"'{'.'.join(path)}'" in message
    assert "add it under" in message


def test_a_missing_section_is_an_error_naming_it():
    for name in ("eval", "models"):
        with pytest.raises(ParamsError, match=rf"missing section\(s\) \['{name}'\]"):
            parse_params(without(repo_raw(), name))


def test_a_key_deleted_from_the_file_stops_load_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(without(repo_raw(), "model", "local_dim")))
    with pytest.raises(ParamsError, match=rf"{path}: missing key\(s\) \['model.local_dim'\]"):
        load_params(path)


def _float_fields(cls: type, prefix: str) -> list[tuple[str, ...]]:
    """Every float (or list-of-float) key of ``cls``, as a path into params.yaml."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out += [(prefix, *p) for p in _float_fields(tp, name)]
        elif tp is float or typing.get_args(tp)[:1] == (float,):
            out.append((prefix, name))
    return out


FLOAT_KEYS = [p for name, cls in _SECTION_TYPES.items() for p in _float_fields(cls, name)]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("path", FLOAT_KEYS, ids=".".join)
def test_every_float_key_refuses_nan_and_infinity(path, bad):
    raw = repo_raw()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = [bad, bad] if isinstance(node[path[-1]], list) else bad
    with pytest.raises(ParamsError, match="is not a finite number") as err:
        parse_params(raw)
    assert ".".join(path) in str(err.value)


def test_yaml_nan_is_refused_with_the_file_and_key(tmp_path):
    """Issue 27: `train.lr: .nan` passed every check."""
    text = REPO_PARAMS.read_text(encoding="utf-8").replace("  lr: 1.0e-4", "  lr: .nan", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=rf"{path}: train.lr = nan is not a finite number"):
        load_params(path)


def test_single_field_constraints_are_declared_beside_the_field():
    assert Positive in field_checks(TrainParams)["lr"]
    with pytest.raises(ParamsError, match=r"params.yaml: train.lr = 0.0 must be > 0"):
        parse_params(repo_raw(train={"lr": 0}))
    # A variant's override names its own key.
    with pytest.raises(ParamsError, match=r"models.B.keep_ratio = 0.0 must be in \(0, 1\]"):
        parse_params(repo_raw(models={"B": {"keep_ratio": 0.0}}))


def test_unknown_key_is_rejected_with_valid_keys():
    with pytest.raises(ParamsError, match=r"data\.view'\].*valid keys"):
        parse_params(repo_raw(data={"view": ["PA"]}))


def test_unknown_section_is_rejected():
    with pytest.raises(ParamsError, match="unknown section"):
        parse_params(repo_raw(dataa={}))


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("data", "label_policy", "u_twos", "not one of"),
        ("data", "views", "PA", "not a valid list of str"),
        ("data", "min_report_chars", "30", "not a valid int"),
        ("data", "min_report_chars", True, "not a valid int"),
        ("data", "sections", ["findings", "history"], "not one of"),
        ("data", "views", [], r"data\.views = \[\] is empty"),
        ("data", "sections", ["findings", "findings"], "repeats"),
        ("qc", "max_missing_image_fraction", 1.5, "fraction"),
        ("qc", "image_check", "decode", "not one of"),
        ("demo", "image_size", 8, "too small"),
        ("demo", "n_patients", 0, "must be > 0"),
        ("demo", "test_fraction", 0.95, "must be < 1"),
        ("demo", "min_positive_rate", 0.5, r"in \[0, 0\.3\]"),
        ("backbone", "patch_embed", "conv3", "not one of"),
        ("eval", "prompt_template", "A chest x-ray", "needs a"),
        ("eval", "negative_prompt_template", "no finding", "needs a"),
        ("eval", "probe_fractions", [0.01, 1.5], r"in \(0, 1\]"),
        ("eval", "probe_fractions", [0.1, 0.1], "repeats"),
        ("eval", "recall_ks", [0, 5], "K >= 1"),
        ("eval", "recall_curve_max_k", 5, "recall_curve_max_k"),
        ("eval", "bootstrap", 0, "must be > 0"),
        ("eval", "ci_level", 95, r"in \(0, 1\)"),
        ("eval", "device", "gpu", "use auto"),
        ("eval", "pixel_pca_dim", 0, "must be > 0"),
        ("eval", "pixel_pca_max_images", 100, "must be >= eval.pixel_pca_dim"),
        ("eval", "no_finding_prompts", ["normal"], r"\[positive prompt, negative prompt\]"),
        ("train", "val_no_finding_prompts", ["a", " "], "both non-empty"),
        ("train", "nproc_per_node", 3, "divide"),
        ("model", "mask_guide_weight", -1.0, "must be >= 0"),
        ("eval", "finetune_fractions", [0.1, 0.1], r"distinct fractions in \(0, 1\]"),
        ("eval", "finetune_fractions", [1.5], r"distinct fractions in \(0, 1\]"),
        ("eval", "finetune_epochs", 0, "must be > 0"),
        ("train", "text_sampling", "word", "use report .* or sentence"),
        ("eval", "finetune_lr", 0.0, "must be > 0"),
        ("pack", "workers", -1, "0 = every core"),
        ("pack", "max_failed_fraction", 2.0, "fraction"),
        ("pack", "decoder", "cuda", "'pillow'.*'nvjpeg'"),
        ("pack", "gpu_batch_size", 0, "must be > 0"),
        ("data", "image_size", 8, "too small"),
        ("train", "augment", 5, r"'train\.augment' must be a mapping"),
        ("train", "augment", {"blur": [1, 2]}, r"train\.augment\.blur'\].*valid keys"),
        ("train", "augment", {"hflip": 2}, r"train\.augment\.hflip = 2"),
    ],
)
def test_bad_values_name_key_and_value(section, key, value, match):
    with pytest.raises(ParamsError, match=match) as err:
        parse_params(repo_raw(**{section: {key: value}}))
    assert f"{section}." in str(err.value)


def test_mask_guide_is_ignored_by_a_mask_without_local_alignment():
    """`dvc exp run -S model.use_masking=true` gives A and B a mask without local alignment:
    they train without the guide (it is the local alignment's attention), not fail."""
    raw = repo_raw(model={"mask_guide_weight": 3.0}, models={"M": {"use_masking": True}})
    assert resolve_all(parse_params(raw))["M"].model.mask_guide_weight == 0.0


def test_int_is_accepted_for_float_and_null_for_optional():
    p = parse_params(repo_raw(qc={"max_missing_image_fraction": 0, "image_listing": None}))
    assert p.qc.max_missing_image_fraction == 0.0 and p.qc.image_listing is None


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_load_roundtrip(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(repo_raw(data={"views": ["PA"], "label_policy": "u_ignore"})))
    p = load_params(path)
    committed = load_params(REPO_PARAMS).data
    assert p.data == dataclasses.replace(committed, views=("PA",), label_policy="u_ignore")
    assert isinstance(p.data, DataParams)


def test_eval_single_prompt():
    p = parse_params(repo_raw(eval={"negative_prompt_template": "", "probe_fractions": [1]}))
    assert p.eval.negative_prompt_template == "" and p.eval.probe_fractions == (1.0,)
    assert load_params("params.yaml").eval.recall_ks == (1, 5, 10)


def test_demo_backbone_and_pack_sizes_must_agree():
    with pytest.raises(ParamsError, match="set both to the same size"):
        parse_params(repo_raw(data={"image_size": 224}))
    p = parse_params(repo_raw(data={"image_size": 224}, backbone={"image_size": 224}))
    assert p.data.image_size == 224


def test_augment_is_a_nested_section_off_in_the_repo():
    aug = load_params("params.yaml").train.augment
    # Off, so the committed results stay; demo magnitudes ready; no flip (laterality).
    assert aug == AugmentParams(
        enabled=False,
        crop_scale=(0.8, 1.0),
        crop_ratio=(0.9, 1.1),
        rotation_deg=5.0,
        scale=(0.95, 1.05),
        brightness=0.1,
        contrast=0.1,
        hflip=0.0,
        blur_sigma=(0.0, 0.0),
    )
    p = parse_params(repo_raw(train={"augment": {"enabled": True, "rotation_deg": 5}}))
    assert p.train.augment.enabled and p.train.augment.rotation_deg == 5.0


def test_replicate_seeds_are_none_in_the_repo_and_are_checked():
    assert load_params(REPO_PARAMS).replicates.seeds == ()
    models = {"A": {}, "B": {"train": {"seed": 3}}}
    p = parse_params(repo_raw(models=models, replicates={"seeds": [1, 2]}))
    assert p.replicates.seeds == (1, 2)
    with pytest.raises(ParamsError, match=r"replicates.seeds = \[2, 2\]"):
        parse_params(repo_raw(replicates={"seeds": [2, 2]}))
    with pytest.raises(ParamsError, match="-1"):
        parse_params(repo_raw(replicates={"seeds": [-1]}))
    # A variant's own train.seed is its train@ run already.
    with pytest.raises(ParamsError, match="train.seed of model B"):
        parse_params(repo_raw(models=models, replicates={"seeds": [1, 3]}))
