import pytest
import yaml

from lib.config.loader import load_params, parse_params
from lib.config.params import AugmentParams, DataParams, Params
from lib.config.variants import resolve_all
from lib.errors import ParamsError


def test_repo_params_yaml_is_valid():
    params = load_params("params.yaml")
    assert isinstance(params, Params)
    assert params.data.views == ("PA", "AP")
    assert params.data.label_policy == "positive_only"


def test_defaults_when_sections_absent():
    assert parse_params({}) == Params()


def test_unknown_key_is_rejected_with_valid_keys():
    with pytest.raises(ParamsError, match=r"data\.view'\].*valid keys"):
        parse_params({"data": {"view": ["PA"]}})


def test_unknown_section_is_rejected():
    with pytest.raises(ParamsError, match="unknown section"):
        parse_params({"dataa": {}})


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("data", "label_policy", "u_twos", "not one of"),
        ("data", "views", "PA", "not a valid list of str"),
        ("data", "min_report_chars", "30", "not a valid int"),
        ("data", "min_report_chars", True, "not a valid int"),
        ("data", "sections", ["findings", "history"], "not one of"),
        ("data", "views", [], "data.views is empty"),
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
        parse_params({section: {key: value}})
    assert f"{section}." in str(err.value)


def test_mask_guide_is_ignored_by_a_mask_without_local_alignment():
    """`dvc exp run -S model.use_masking=true` gives A and B a mask without local alignment:
    they train without the guide (it is the local alignment's attention), not fail."""
    raw = {"model": {"mask_guide_weight": 3.0}, "models": {"M": {"use_masking": True}}}
    assert resolve_all(parse_params(raw))["M"].model.mask_guide_weight == 0.0


def test_int_is_accepted_for_float_and_null_for_optional():
    p = parse_params({"qc": {"max_missing_image_fraction": 0, "image_listing": None}})
    assert p.qc.max_missing_image_fraction == 0.0 and p.qc.image_listing is None


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_load_roundtrip(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"views": ["PA"], "label_policy": "u_ignore"}}))
    p = load_params(path)
    assert p.data == DataParams(views=("PA",), label_policy="u_ignore")


def test_eval_section_defaults_and_single_prompt():
    p = parse_params({"eval": {"negative_prompt_template": "", "probe_fractions": [1]}})
    assert p.eval.negative_prompt_template == "" and p.eval.probe_fractions == (1.0,)
    assert load_params("params.yaml").eval.recall_ks == (1, 5, 10)


def test_demo_backbone_and_pack_sizes_must_agree():
    with pytest.raises(ParamsError, match="set both to the same size"):
        parse_params({"data": {"image_size": 224}})
    p = parse_params({"data": {"image_size": 224}, "backbone": {"image_size": 224}})
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
    p = parse_params({"train": {"augment": {"enabled": True, "rotation_deg": 5}}})
    assert p.train.augment.enabled and p.train.augment.rotation_deg == 5.0
    assert p.train.augment.scale == AugmentParams().scale  # keys not given: defaults


def test_replicate_seeds_default_to_none_and_are_checked():
    assert parse_params({}).replicates.seeds == ()
    models = {"A": {}, "B": {"train": {"seed": 3}}}
    p = parse_params({"models": models, "replicates": {"seeds": [1, 2]}})
    assert p.replicates.seeds == (1, 2)
    with pytest.raises(ParamsError, match=r"replicates.seeds = \[2, 2\]"):
        parse_params({"replicates": {"seeds": [2, 2]}})
    with pytest.raises(ParamsError, match="-1"):
        parse_params({"replicates": {"seeds": [-1]}})
    # A variant's own train.seed is its train@ run already.
    with pytest.raises(ParamsError, match="train.seed of model B"):
        parse_params({"models": models, "replicates": {"seeds": [1, 3]}})
