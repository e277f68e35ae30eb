"""The model and training settings of the configs built in code, not read from params.yaml.

Three configs are deliberately not ``model:`` / ``train:``: the demo backbone's CLIP
pretraining (``lib.runs.pretrain.pretrain_variant``, so that ``-S model.<key>`` does not
rerun the pretraining), the "pretrained backbone, no fine-tuning" reference
(``lib.config.variants.pretrained_variant``), and the settings a variant never reads
(``lib.config.variants.without_inert_settings``, so that they leave its config, and its
train@ stage, as they are). Their values live here, once, each one a documented part of
those recipes; changing one changes the demo backbone, or the reference's config, or every
variant's config file. (They were the dataclass defaults until params.yaml became the one
source of values; tests/config/test_fixed.py pins them.)
"""

from __future__ import annotations

from typing import Any

from lib.config.params import (
    DEMO_BACKBONE,
    NO_FINDING_PROMPTS,
    AugmentParams,
    ModelParams,
    TrainParams,
    as_dict,
    build_section,
)

SOURCE = "lib/config/fixed.py"

# Model A's architecture and loss: no mask, no local alignment, a learnable temperature.
FIXED_MODEL: dict[str, Any] = {
    "backbone": DEMO_BACKBONE,
    "use_local_alignment": False,
    "use_masking": False,
    "mask_mode": "soft",
    "keep_ratio": 0.5,
    "topk_temperature": 0.1,
    "drop_layer": 2,
    "temperature": 0.1,
    "contrastive_weight_i2t": 0.5,
    "contrastive_weight_t2i": 0.5,
    "local_mode": "all_pairs",
    "local_weight": 1.0,
    "local_temperature": 0.1,
    "local_dim": 128,
    "sparse_weight": 1.0,
    "cons_weight": 0.5,
    "mask_noise": False,
    "mask_guide_weight": 0.0,
    "architecture": "patch_ib",
    "learn_temperature": True,
    "head_dim": 512,
    "frozen_text_layers": 0,
    "text_pool": "max",
}

# Augmentation: off (the magnitudes are the demo's, read only when enabled).
FIXED_AUGMENT: dict[str, Any] = {
    "enabled": False,
    "crop_scale": [0.8, 1.0],
    "crop_ratio": [0.9, 1.1],
    "rotation_deg": 5.0,
    "scale": [0.95, 1.05],
    "brightness": 0.1,
    "contrast": 0.1,
    "hflip": 0.0,
    "blur_sigma": [0.0, 0.0],
}

# The specification's schedule for BiomedCLIP on MIMIC-CXR (the pretraining overrides the
# schedule's keys from params.yaml's pretrain:; the reference trains nothing).
FIXED_TRAIN: dict[str, Any] = {
    "seed": 0,
    "epochs": 40,
    "batch_size": 64,
    "gradient_accumulation_steps": 2,
    "staged_training": True,
    "warmup_epochs": 3,
    "warmup_lr": 1.0e-4,
    "lr": 5.0e-6,
    "llrd_factor": 0.85,
    "weight_decay": 0.05,
    "warmup_steps": 1000,
    "recall_weight": 0.7,
    "patience": 7,
    "use_amp": True,
    "compile": False,
    "num_workers": 4,
    "eval_batch_size": 128,
    "val_prompt_template": "A chest x-ray showing {}",
    "val_negative_prompt_template": "A chest x-ray showing no {}",
    "val_no_finding_prompts": list(NO_FINDING_PROMPTS),
    "device": "auto",
    "nproc_per_node": 1,
    "text_sampling": "report",
    "augment": FIXED_AUGMENT,
}


def fixed_model(**over: Any) -> ModelParams:
    """``FIXED_MODEL`` with ``over`` on top, validated."""
    return build_section(ModelParams, {**FIXED_MODEL, **over}, "model", SOURCE)


def fixed_train(**over: Any) -> TrainParams:
    """``FIXED_TRAIN`` with ``over`` on top (``augment`` an ``AugmentParams`` or a mapping),
    validated."""
    if isinstance(over.get("augment"), AugmentParams):
        over = {**over, "augment": as_dict(over["augment"])}
    return build_section(TrainParams, {**FIXED_TRAIN, **over}, "train", SOURCE)
