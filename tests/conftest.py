"""Shared fixtures: a small demo corpus run through the data stages, and a tiny backbone;
``params_section`` / ``repo_params``, the committed params.yaml's values with overrides."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from lib.config.params import _SECTION_TYPES, AugmentParams, BackboneParams, Params, build_section

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@functools.cache
def _committed() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


def params_section(cls: type, **over: Any) -> Any:
    """Section ``cls`` as the committed params.yaml sets it, with ``over`` on top, built and
    checked as ``load_params`` does (a nested dataclass in ``over`` may be given as one)."""
    path = ("train", "augment") if cls is AugmentParams else (_section_name(cls),)
    raw: Any = _committed()
    for key in path:
        raw = raw[key]
    values = {
        k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in over.items()
    }
    return build_section(cls, {**raw, **values}, ".".join(path), str(REPO_PARAMS))


def repo_raw(**sections: Any) -> dict[str, Any]:
    """The committed params.yaml's raw mapping with ``sections`` merged in key by key (a
    nested mapping into its own, anything else replacing); ``models`` replaces the file's
    variants whole."""

    def merge(base: Any, over: Any) -> Any:
        if not (isinstance(base, dict) and isinstance(over, dict)):
            return over
        return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}

    raw = copy.deepcopy(_committed())
    return {
        **merge(raw, {k: v for k, v in sections.items() if k != "models"}),
        **({"models": sections["models"]} if "models" in sections else {}),
    }


def repo_params(**sections: Any) -> Params:
    """The committed params.yaml's ``Params`` with some sections replaced."""
    from lib.config.loader import load_params

    return dataclasses.replace(load_params(REPO_PARAMS), **sections)


def _section_name(cls: type) -> str:
    return next(name for name, c in _SECTION_TYPES.items() if c is cls)


# The tests' backbone: 32-px images, 16-px patches (N = 4), a 1-layer BERT, timm's default
# pooling and linear patches (the tests were written for them; params.yaml's: max, conv).
TINY_BACKBONE = params_section(
    BackboneParams,
    seed=0,
    vision_pool="avg",
    text_pool="mean",
    patch_embed="linear",
    image_size=32,
    patch_size=16,
    vision_width=32,
    vision_depth=2,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
    vocab_size=400,
    context_length=48,
    embed_dim=32,
)


@pytest.fixture(scope="session")
def small_master(tmp_path_factory) -> tuple[Path, Path]:
    """(master JSONL, data root) of a ~120-patient demo corpus, built by the lib functions
    the data stages call."""
    from lib.config.params import DemoParams, QCParams
    from lib.data.labels import inject_labels
    from lib.data.qc import master_lines, run_qc, write_jsonl
    from lib.data.reports import ReportSource, extract_reports
    from lib.data.splits import apply_split
    from lib.data.views import filter_views
    from lib.demo.corpus import write_corpus

    base = tmp_path_factory.mktemp("small")
    root = base / "mimic"
    write_corpus(
        params_section(DemoParams, n_patients=120, seed=11, image_size=64, min_positive_rate=0.0),
        root,
    )
    images, _ = filter_views(
        pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", dtype={"dicom_id": str}), ("PA", "AP")
    )
    source = ReportSource(root / "mimic-cxr-reports.zip")
    reports, _ = extract_reports(images, source, ("findings", "impression"))
    labeled, _ = inject_labels(
        images, pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz"), "positive_only"
    )
    split, _ = apply_split(
        labeled, pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz", dtype={"dicom_id": str})
    )
    kept, _ = run_qc(split, reports, root, 30, params_section(QCParams))
    master = base / "master.jsonl"
    write_jsonl(master_lines(kept), master)
    return master, root


@pytest.fixture(scope="session")
def tiny_backbone(small_master, tmp_path_factory) -> Path:
    """A tiny demo backbone folder (vocabulary from the small corpus' train reports)."""
    from lib.data.master import read_master
    from lib.model.backbone import write_demo_backbone

    out = tmp_path_factory.mktemp("backbone") / "tiny"
    texts = read_master(small_master[0])["train"].texts
    write_demo_backbone(out, texts, TINY_BACKBONE)
    return out
