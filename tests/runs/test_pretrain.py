"""The demo backbone's pretraining (its corpus: tests/demo/test_pretrain_corpus.py): the
held-out split, the variant, and a tiny end-to-end pretraining that writes a loadable,
trained, reproducible folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lib.config.fixed import fixed_model, fixed_train
from lib.config.params import DataParams, DemoParams, Params, PretrainParams
from lib.data.master import read_master
from lib.demo.pretrain_corpus import build_corpus
from lib.errors import ParamsError
from lib.model.backbone import WEIGHTS, load_backbone
from lib.runs.pretrain import (
    RECORD,
    holdout,
    make_trainer,
    pretrain_backbone,
    pretrain_variant,
    skip_record,
    truncate_tokens,
)
from lib.train.loop import Data
from tests.conftest import TINY_BACKBONE, params_section, repo_params


def tiny_params(**pretrain: object) -> Params:
    return repo_params(
        model=fixed_model(),
        demo=params_section(DemoParams, image_size=64, workers=1, min_positive_rate=0.0),
        data=params_section(DataParams, image_size=TINY_BACKBONE.image_size),
        backbone=TINY_BACKBONE,
        pretrain=params_section(
            PretrainParams,
            **{"n_patients": 40, "epochs": 2, "batch_size": 8, "warmup_steps": 2},
            **{"caption_fraction": 0.0, "max_text_tokens": 0, **pretrain},
        ),
        train=fixed_train(device="cpu", eval_batch_size=16),
    )


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(tiny_params(), workers=1)


def test_holdout_is_patient_disjoint():
    split = build_corpus(tiny_params(), workers=1).split
    train, held = holdout(split, 0.2, 0)
    assert len(train) + len(held) == len(split)
    assert not set(split.subject[train]) & set(split.subject[held])
    assert len(held) > 0


def test_pretrain_variant_trains_everything_with_a_contrastive_loss_only():
    v = pretrain_variant(tiny_params(), "local-dir:x")
    assert not v.train.staged_training and v.train.llrd_factor == 1.0
    assert not v.model.use_masking and not v.model.use_local_alignment
    assert v.model.temperature == params_section(PretrainParams).temperature


def test_params_are_validated():
    with pytest.raises(ParamsError, match="pretrain.batch_size"):
        params_section(PretrainParams, batch_size=1).validate()
    with pytest.raises(ParamsError, match="pretrain.holdout_fraction"):
        params_section(PretrainParams, holdout_fraction=0.0).validate()


def _pretrain(tmp: Path, small_master) -> tuple[dict, Path]:
    params = tiny_params(caption_fraction=0.5, max_text_tokens=16)  # as the demo, in small
    demo = read_master(small_master[0])
    out = tmp / "backbone"

    def demo_val(spec: str) -> Data:
        backbone = load_backbone(spec)
        return Data.build(demo["val"], small_master[1], backbone, threads=2)

    metrics, _ = pretrain_backbone(
        params, demo, demo_val, out, tmp / "state", tmp / "live", workers=1
    )
    return metrics, out


def test_pretraining_writes_a_trained_loadable_backbone_reproducibly(tmp_path, small_master):
    metrics, out = _pretrain(tmp_path / "a", small_master)
    backbone = load_backbone(f"local-dir:{out}")
    assert backbone.image_size == 32
    trained = load_file(out / WEIGHTS)
    init = load_file(tmp_path / "a" / "state" / "init" / WEIGHTS)
    moved = [k for k in init if not torch.equal(init[k], trained[k])]
    assert any("visual.trunk.blocks" in k for k in moved)  # every tower trained, not only heads
    assert any("text.transformer" in k for k in moved)
    assert metrics["epochs"] == 2 and metrics["patients_shared_with_master"] == 0
    assert 0 <= metrics["demo_val_zero_shot_mean_auc"] <= 1
    assert json.loads((out / RECORD).read_text())["metrics"] == metrics
    assert (tmp_path / "a" / "live" / "metrics.json").is_file()  # DVCLive curve

    _, again = _pretrain(tmp_path / "b", small_master)
    assert (again / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()


def test_real_runs_skip_pretraining(tmp_path):
    metrics = skip_record(tmp_path / "out", "hf-hub:microsoft/BiomedCLIP")
    assert "BiomedCLIP" in metrics["skipped"]
    assert json.loads((tmp_path / "out" / RECORD).read_text()) == metrics


def test_fine_tuning_keys_do_not_change_the_pretraining():
    """Only pretrain: and the keys dvc.yaml lists for demo_backbone shape the pretraining:
    `dvc exp run -S model.use_masking=true` must not pretrain again."""
    from lib.config.params import AugmentParams

    base = tiny_params()
    other = dataclasses.replace(
        base,
        model=fixed_model(use_masking=True, use_local_alignment=True, keep_ratio=0.3),
        train=dataclasses.replace(
            base.train,
            lr=0.5,
            epochs=9,
            augment=params_section(AugmentParams, enabled=True),
            text_sampling="sentence",
        ),
    )
    assert pretrain_variant(other, "local-dir:x") == pretrain_variant(base, "local-dir:x")
    assert not pretrain_variant(base, "local-dir:x").train.augment.enabled


def test_truncate_tokens_cuts_long_rows_and_ends_them_with_sep():
    pad, cls, sep = 0, 2, 3
    tokens = torch.tensor(
        [
            [cls, 5, 6, 7, 8, sep, pad, pad],  # longer than 4: cut, [SEP] last
            [cls, 5, sep, pad, pad, pad, pad, pad],  # fits: unchanged
            [cls, 5, 6, sep, pad, pad, pad, pad],  # exactly 4: unchanged
        ]
    )
    out = truncate_tokens(tokens, 4, pad, sep)
    assert out.tolist() == [[cls, 5, 6, sep], [cls, 5, sep, pad], [cls, 5, 6, sep]]
    assert truncate_tokens(tokens, 8, pad, sep) is tokens
    assert tokens[0, 3] == 7  # the input is not modified


def test_max_text_tokens_is_checked():
    with pytest.raises(ParamsError, match="max_text_tokens"):
        params_section(PretrainParams, max_text_tokens=3).validate()
    params_section(PretrainParams, max_text_tokens=0).validate()


def test_max_text_tokens_cuts_the_training_texts_only(tmp_path, corpus):
    trainer = make_trainer(tiny_params(max_text_tokens=12), corpus, tmp_path / "i", tmp_path / "s")
    assert trainer.train_data.tokens.shape[1] == 12
    assert trainer.val_data.tokens.shape[1] > 12  # held-out texts stay whole


def test_sentence_sampling_in_pretraining_draws_from_the_training_texts_only(tmp_path, corpus):
    with pytest.raises(ParamsError, match="pretrain.text_sampling"):
        params_section(PretrainParams, text_sampling="words").validate()
    params = tiny_params(text_sampling="sentence", max_text_tokens=12)
    trainer = make_trainer(params, corpus, tmp_path / "i", tmp_path / "s")
    assert trainer.v.train.text_sampling == "sentence"
    train, val = trainer.train_data, trainer.val_data
    assert train.sentence_tokens is not None and val.sentence_tokens is None  # val: whole texts
    assert train.tokens.shape[1] == 12  # whole texts still cut for the record
    assert len(train.sentence_tokens) >= len(train.tokens)


# pretrain_variant(committed params.yaml, the demo backbone), as main (4ba7e5f) built it from
# the dataclass defaults: the demo backbone's pretraining must stay bit-identical.
PRETRAIN_VARIANT_ON_MAIN = {
    "backbone_digest": None,
    "model": {
        "architecture": "patch_ib",
        "backbone": "local-dir:data/backbone/demo",
        "cons_weight": 0.5,
        "contrastive_weight_i2t": 0.5,
        "contrastive_weight_t2i": 0.5,
        "drop_layer": 2,
        "frozen_text_layers": 0,
        "head_dim": 512,
        "keep_ratio": 0.5,
        "learn_temperature": True,
        "local_dim": 128,
        "local_mode": "all_pairs",
        "local_temperature": 0.1,
        "local_weight": 1.0,
        "mask_guide_weight": 0.0,
        "mask_mode": "soft",
        "mask_noise": False,
        "sparse_weight": 1.0,
        "temperature": 0.07,
        "text_pool": "max",
        "topk_temperature": 0.1,
        "use_local_alignment": False,
        "use_masking": False,
    },
    "name": "pretrain",
    "train": {
        "augment": {
            "blur_sigma": [0.0, 0.0],
            "brightness": 0.1,
            "contrast": 0.1,
            "crop_ratio": [0.9, 1.1],
            "crop_scale": [0.8, 1.0],
            "enabled": False,
            "hflip": 0.0,
            "rotation_deg": 5.0,
            "scale": [0.95, 1.05],
        },
        "batch_size": 64,
        "compile": False,
        "device": "auto",
        "epochs": 5,
        "eval_batch_size": 128,
        "gradient_accumulation_steps": 1,
        "llrd_factor": 1.0,
        "lr": 0.001,
        "nproc_per_node": 1,
        "num_workers": 4,
        "patience": 5,
        "recall_weight": 0.7,
        "seed": 4321,
        "staged_training": False,
        "text_sampling": "report",
        "use_amp": True,
        "val_negative_prompt_template": "A chest x-ray showing no {}",
        "val_no_finding_prompts": [
            "A chest x-ray showing no acute cardiopulmonary process",
            "A chest x-ray showing an acute cardiopulmonary process",
        ],
        "val_prompt_template": "A chest x-ray showing {}",
        "warmup_epochs": 3,
        "warmup_lr": 0.0001,
        "warmup_steps": 100,
        "weight_decay": 0.05,
    },
}


def test_pretrain_variant_is_exactly_the_recipe_it_was():
    from lib.config.loader import load_params
    from lib.config.params import DEMO_BACKBONE
    from tests.conftest import REPO_PARAMS

    variant = pretrain_variant(load_params(REPO_PARAMS), DEMO_BACKBONE).to_dict()
    assert json.dumps(variant, sort_keys=True) == json.dumps(
        PRETRAIN_VARIANT_ON_MAIN, sort_keys=True
    )
