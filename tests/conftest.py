"""Shared fixtures: a small demo corpus run through the data stages, and a tiny backbone."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from lib.config.params import BackboneParams

# The tests' backbone: 32-px images, 16-px patches (N = 4), a 1-layer BERT.
TINY_BACKBONE = BackboneParams(
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
    write_corpus(DemoParams(n_patients=120, seed=11, image_size=64), root)
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
    kept, _ = run_qc(split, reports, root, 30, QCParams())
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
