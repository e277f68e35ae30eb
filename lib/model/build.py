"""The model of a variant: Patch-IB (A–E) or ConVIRT, by ``model.architecture``."""

from __future__ import annotations

from lib.config.params import ModelParams
from lib.model.backbone import Backbone
from lib.model.convirt import ConVIRTModel
from lib.model.patch_ib import PatchIBModel

Model = PatchIBModel | ConVIRTModel


def build_model(backbone: Backbone, params: ModelParams) -> Model:
    """The variant's model on ``backbone`` (which it takes ownership of)."""
    if params.architecture == "convirt":
        return ConVIRTModel(backbone, params)
    return PatchIBModel(backbone, params)
