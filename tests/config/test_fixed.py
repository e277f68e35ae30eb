"""lib.config.fixed: the values of the configs built in code are exactly what they were
when they were the dataclass defaults (main at 4ba7e5f), so that no resolved config, and so
no trained model, changes."""

import hashlib
import json

from lib.config.fixed import FIXED_MODEL, FIXED_TRAIN, fixed_model, fixed_train
from lib.config.loader import load_params
from lib.config.params import DEMO_BACKBONE, as_dict
from lib.config.variants import pretrained_variant, resolve_all
from tests.conftest import REPO_PARAMS

# pretrained_variant(model.backbone, train.use_amp) of the committed params.yaml on main.
PRETRAINED_ON_MAIN = {
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
        "temperature": 0.1,
        "text_pool": "max",
        "topk_temperature": 0.1,
        "use_local_alignment": False,
        "use_masking": False,
    },
    "name": "pretrained",
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
        "epochs": 40,
        "eval_batch_size": 128,
        "gradient_accumulation_steps": 2,
        "llrd_factor": 0.85,
        "lr": 5e-06,
        "nproc_per_node": 1,
        "num_workers": 4,
        "patience": 7,
        "recall_weight": 0.7,
        "seed": 0,
        "staged_training": True,
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
        "warmup_steps": 1000,
        "weight_decay": 0.05,
    },
}

# sha256 of json.dumps({name: Variant.to_dict()}, sort_keys=True) for every variant of the
# committed params.yaml on main (at 4ba7e5f, less "description", which no longer reaches the
# configs, and "backbone_digest", which depends on the demo backbone folder on disk): the
# inert settings (lib.config.variants.without_inert_settings)
# are FIXED_MODEL's, as they were ModelParams()'s.
VARIANTS_ON_MAIN = "410a81d9b80191693c46f7757b28446bd6619e279e6c7b367c9ac44bb625e71e"


def _text(x: object) -> str:
    return json.dumps(x, sort_keys=True)


def test_the_pretrained_reference_is_unchanged():
    params = load_params(REPO_PARAMS)
    ref = pretrained_variant(params.model.backbone, params.train.use_amp).to_dict()
    assert _text(ref) == _text(PRETRAINED_ON_MAIN)


def test_every_resolved_variant_config_is_unchanged():
    variants = {n: v.to_dict() for n, v in resolve_all(load_params(REPO_PARAMS)).items()}
    for config in variants.values():
        config.pop("backbone_digest")
    assert hashlib.sha256(_text(variants).encode()).hexdigest() == VARIANTS_ON_MAIN


def test_the_tables_are_complete_and_build_valid_sections():
    assert _text(as_dict(fixed_model())) == _text(FIXED_MODEL)
    assert _text(as_dict(fixed_train())) == _text(FIXED_TRAIN)
    assert fixed_model().backbone == DEMO_BACKBONE
    assert fixed_train(augment={**FIXED_TRAIN["augment"], "enabled": True}).augment.enabled
