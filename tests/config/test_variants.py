import pytest

from lib.config.loader import load_params, parse_params
from lib.config.params import CONVIRT_DEMO_BACKBONE
from lib.config.variants import (
    DESCRIPTION,
    PRETRAINED,
    Variant,
    baseline,
    descriptions,
    pretrained_variant,
    resolve_all,
    resolve_variant,
    with_backbone_digest,
)
from lib.errors import DataError, ParamsError
from tests.conftest import repo_raw


def test_repo_variants_follow_the_seed_table():
    params = load_params("params.yaml")
    v = resolve_all(params)
    # the seed's variants, in params.yaml's order, A the baseline; more may follow
    assert tuple(v)[:6] == ("A", "B", "C", "D", "E", "ConVIRT") and baseline(params) == "A"
    assert all(descriptions(params).values()), "every variant of params.yaml has a description"
    assert not v["A"].model.use_local_alignment and not v["A"].model.use_masking
    assert v["B"].model.use_local_alignment and not v["B"].model.use_masking
    assert v["C"].model.use_masking and v["C"].model.mask_mode == "soft"
    assert v["D"].model.mask_mode == "topk" and v["E"].model.mask_mode == "drop"
    # Model A's early stopping (seed: 0.6 recall + 0.4 AUC, patience 10); others 0.7 / 7
    assert (v["A"].train.recall_weight, v["A"].train.patience) == (0.6, 10)
    assert (v["C"].train.recall_weight, v["C"].train.patience) == (0.7, 7)
    # ConVIRT (issue 12): its own architecture, loss weighting and fixed temperature
    c = v["ConVIRT"].model
    assert c.architecture == "convirt" and c.backbone == CONVIRT_DEMO_BACKBONE
    assert (c.contrastive_weight_i2t, c.contrastive_weight_t2i) == (0.75, 0.25)
    assert (c.temperature, c.learn_temperature, c.text_pool) == (0.1, False, "max")
    assert not v["ConVIRT"].train.staged_training
    assert {v[n].model.architecture for n in "ABCDE"} == {"patch_ib"}


def test_convirt_is_untouched_by_the_shared_model_settings_of_a_to_e():
    """`dvc exp run -S model.use_masking=true` (or any shared model key ConVIRT sets itself)
    retrains A–E's affected variants, never ConVIRT; a ConVIRT key reaches ConVIRT alone."""
    params = load_params("params.yaml")
    raw = {"models": params.models}
    before = resolve_all(parse_params(repo_raw(**raw)))
    for change in ({"use_masking": True}, {"temperature": 0.2}, {"backbone": "hf-hub:x/y"}):
        after = resolve_all(parse_params(repo_raw(**{**raw, "model": change})))
        assert before["ConVIRT"] == after["ConVIRT"], change
    models = {**params.models, "ConVIRT": {**params.models["ConVIRT"], "head_dim": 256}}
    after = resolve_all(parse_params(repo_raw(models=models)))
    assert [n for n in before if before[n] != after[n]] == ["ConVIRT"]


def test_backbone_digest_follows_the_folder_and_only_local_folders(tmp_path):
    folder = tmp_path / "bb"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    raw = {"model": {"backbone": f"local-dir:{folder}"}, "models": {"A": {}}}
    v = resolve_all(parse_params(repo_raw(**raw)))["A"]
    first = with_backbone_digest(v)
    assert first.backbone_digest.startswith("sha256:") and v.backbone_digest is None
    assert with_backbone_digest(v) == first  # deterministic
    (folder / "a.json").write_text('{"x": 1}')
    assert with_backbone_digest(v).backbone_digest != first.backbone_digest
    assert Variant.from_dict(first.to_dict(), "A.json") == first
    hub = resolve_all(parse_params(repo_raw(model={"backbone": "hf-hub:a/b"}, models={"A": {}})))
    assert with_backbone_digest(hub["A"]).backbone_digest is None
    (folder / "a.json").unlink()
    folder.rmdir()
    with pytest.raises(DataError, match="backbone folder .* not found.*dvc repro"):
        with_backbone_digest(v)


def test_shared_change_reaches_only_variants_that_do_not_override_it():
    base = {"models": {"A": {}, "C": {"use_masking": True}}}
    before = resolve_all(parse_params(repo_raw(**base)))
    after = resolve_all(parse_params(repo_raw(**{**base, "model": {"use_masking": True}})))
    assert before["A"] != after["A"]
    assert before["C"] == after["C"]


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        ({"keep_ratio": 0.3}, "CDE"),
        ({"mask_noise": True}, "CDE"),
        ({"mask_guide_weight": 1.0}, "CDE"),
        ({"local_temperature": 0.2}, "BCDE"),
        ({"local_mode": "within_pair"}, "BCDE"),
        ({"local_dim": 32}, "BCDE"),
        ({"topk_temperature": 0.05}, "D"),
        ({"drop_layer": 1}, "E"),
        ({"temperature": 0.2}, "ABCDE"),
    ],
)
def test_a_setting_reaches_only_the_variants_that_use_it(change, changed):
    """`dvc exp run -S model.<key>=...` retrains exactly the variants that read the key."""
    raw = {"models": {
        "A": {}, "B": {"use_local_alignment": True},
        "C": {"use_local_alignment": True, "use_masking": True},
        "D": {"use_local_alignment": True, "use_masking": True, "mask_mode": "topk"},
        "E": {"use_local_alignment": True, "use_masking": True, "mask_mode": "drop"},
    }}  # fmt: skip
    before = resolve_all(parse_params(repo_raw(**raw)))
    after = resolve_all(parse_params(repo_raw(**{**raw, "model": change})))
    assert "".join(v for v in before if before[v] != after[v]) == changed


def test_nested_train_override_keeps_the_shared_keys():
    """models.X.train.augment changes only the keys it names (what `-S` on the shared
    section and a per-variant recipe both need)."""
    raw = {
        "train": {"augment": {"rotation_deg": 7, "brightness": 0.2}},
        "models": {"A": {}, "B": {"train": {"augment": {"enabled": True, "rotation_deg": 20}}}},
    }
    v = resolve_all(parse_params(repo_raw(**raw)))
    assert not v["A"].train.augment.enabled and v["A"].train.augment.rotation_deg == 7.0
    b = v["B"].train.augment
    assert b.enabled and b.rotation_deg == 20.0 and b.brightness == 0.2
    assert Variant.from_dict(v["B"].to_dict(), "B.json") == v["B"]


def test_roundtrip_through_json_dict():
    v = resolve_variant(load_params("params.yaml"), "D")
    assert Variant.from_dict(v.to_dict(), "x.json") == v


@pytest.mark.parametrize(
    ("models", "match"),
    [
        ({"B": {"use_local_alignmnt": True}}, r"models\.B\.use_local_alignmnt"),
        ({"B": {"train": {"lr": "fast"}}}, r"models\.B\.train\.lr"),
        ({"B": {"mask_mode": "drop"}}, "needs model.use_masking"),
        ({"B": ["x"]}, "mapping"),
        ({"B": {"train": {"augment": {"rotaton_deg": 5}}}}, r"models\.B\.train\.augment"),
        ({"B": {"train": {"augment": []}}}, r"models\.B\.train\.augment' must be a mapping"),
    ],
)
def test_bad_overrides_are_reported(models, match):
    with pytest.raises(ParamsError, match=match):
        parse_params(repo_raw(models=models))


def test_variant_name_reads_the_model_folder_without_loading_it(tmp_path):
    from lib.config.variants import variant_name
    from lib.errors import DataError

    d = tmp_path / "C"
    with pytest.raises(DataError, match=r"config.json: not found; run `dvc repro train@C`"):
        variant_name(d)
    d.mkdir()
    (d / "config.json").write_text('{"best_epoch": 1}')
    with pytest.raises(DataError, match="no variant 'name'"):
        variant_name(d)
    (d / "config.json").write_text('{"name": "C", "best_epoch": 1}')
    assert variant_name(d) == "C"


@pytest.mark.parametrize("name", ["pretrained", "pixels"])
def test_a_variant_may_not_take_a_reference_rows_name(name):
    with pytest.raises(ParamsError, match=f"models.{name}: .*rename the variant"):
        resolve_all(parse_params(repo_raw(models={"A": {}, name: {}})))


def test_pretrained_reference_is_the_global_model_and_names_its_key(tmp_path):
    # That no other shared setting reaches it through resolve_config: tests/test_stages.py.
    ref = pretrained_variant("local-dir:x", use_amp=True)
    assert ref.name == PRETRAINED and ref.train.use_amp
    assert not ref.model.use_masking and not ref.model.use_local_alignment
    folder = tmp_path / "bb"
    with pytest.raises(DataError, match="^model.backbone: backbone folder"):
        with_backbone_digest(pretrained_variant(f"local-dir:{folder}", False))


def test_a_variant_is_its_entry_with_its_description_outside_its_config():
    """models.<X>.description names the variant in the report and nowhere else: not in the
    config resolve_config writes (train@X's dep), so editing it retrains nothing."""
    raw = {"models": {"A": {DESCRIPTION: "base"}, "F": {DESCRIPTION: "copy", "use_masking": True}}}
    params = parse_params(repo_raw(models=raw["models"]))
    assert descriptions(params) == {"A": "base", "F": "copy"} and baseline(params) == "A"
    before = {n: v.to_dict() for n, v in resolve_all(params).items()}
    assert all(DESCRIPTION not in d for d in before.values())
    edited = {
        n: {**e, DESCRIPTION: f"{e[DESCRIPTION]}, reworded"} for n, e in raw["models"].items()
    }
    after = {n: v.to_dict() for n, v in resolve_all(parse_params(repo_raw(models=edited))).items()}
    assert after == before
    assert resolve_all(parse_params(repo_raw(models={"A": {}})))["A"].to_dict() == before["A"]
    assert descriptions(parse_params(repo_raw(models={"A": {}, "B": None}))) == {"A": "", "B": ""}


def test_a_copy_of_c_under_another_name_is_c_but_for_its_name():
    params = load_params("params.yaml")
    raw = {**params.models, "F": {**params.models["C"], DESCRIPTION: "C again"}}
    v = resolve_all(parse_params(repo_raw(models=raw)))
    assert list(v)[-1] == "F" and v["F"].model == v["C"].model and v["F"].train == v["C"].train
    assert descriptions(parse_params(repo_raw(models=raw)))["F"] == "C again"


def test_a_description_that_is_not_text_is_reported():
    with pytest.raises(ParamsError, match=r"models\.B\.description must be a string.*quote"):
        resolve_all(parse_params(repo_raw(models={"A": {}, "B": {DESCRIPTION: 3}})))
    with pytest.raises(ParamsError, match="'models' is empty"):
        baseline(parse_params(repo_raw(models={})))
