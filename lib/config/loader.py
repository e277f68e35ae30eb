"""The one way in to params.yaml: parse every section, resolve the variants, cross-check.

``lib.config.params`` (the section dataclasses) and ``lib.config.variants`` (A–E built from
them) are leaves; checks that need both, or more than one section, live here above them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lib.config.params import DEMO_BACKBONE, Params, parse_sections
from lib.config.variants import resolve_all
from lib.errors import ParamsError


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (every section, so typos anywhere fail early)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; run from the repository root")
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, source=str(path))


def parse_params(raw: Mapping[str, Any], source: str = "params.yaml") -> Params:
    """Parse the sections, resolve every variant (so a bad override fails here), then check
    the combinations that span sections."""
    params = parse_sections(raw, source)
    variants = resolve_all(params, source)
    cross_check(params, source)
    for name, variant in variants.items():
        if variant.train.seed in params.replicates.seeds:
            raise ParamsError(
                f"{source}: replicates.seeds = {list(params.replicates.seeds)} holds "
                f"{variant.train.seed}, the train.seed of model {name}, whose run is "
                f"train@{name} already; list only the other seeds"
            )
    return params


def cross_check(params: Params, source: str = "params.yaml") -> None:
    if params.model.backbone == DEMO_BACKBONE and (
        params.backbone.image_size != params.data.image_size
    ):
        raise ParamsError(
            f"{source}: backbone.image_size = {params.backbone.image_size} but data.image_size "
            f"= {params.data.image_size}; the demo backbone takes the packed images as they "
            "are, so set both to the same size"
        )
