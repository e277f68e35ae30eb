"""The manifests of the optional input files (lib/config/inputs.py, stage inputs)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib.config.inputs import OPTIONAL_INPUTS, backbone_folders, input_manifest
from lib.config.loader import load_params
from lib.errors import DataError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo():
    return load_params(REPO / "params.yaml")


def test_unset_keys_and_the_demo_backbones_give_an_empty_manifest(demo):
    assert input_manifest(demo, "qc") == {
        "qc.image_listing": None,
        "data.holdout_patients_from": None,
    }
    assert input_manifest(demo, "grounding") == {"data.holdout_patients_from": None}
    assert input_manifest(demo, "resolve_config") == {}  # stages write the demo's folders


def test_a_set_key_carries_its_files_digest(demo, tmp_path):
    listing = tmp_path / "IMAGE_FILENAMES"
    listing.write_text("files/p10/p10000001/s50000001/a.jpg\n")
    params = dataclasses.replace(demo, qc=dataclasses.replace(demo.qc, image_listing=str(listing)))
    first = input_manifest(params, "qc")["qc.image_listing"]
    assert first["path"] == str(listing) and first["digest"].startswith("sha256:")
    listing.write_text("files/p10/p10000001/s50000001/b.jpg\n")
    assert input_manifest(params, "qc")["qc.image_listing"]["digest"] != first["digest"]
    listing.unlink()
    with pytest.raises(DataError, match=r"qc.image_listing = .* does not exist.*set it to null"):
        input_manifest(params, "qc")


def test_a_backbone_folder_of_ones_own_is_carried(demo, tmp_path):
    folder = tmp_path / "bb"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    models = {
        **demo.models,
        "B": {"backbone": f"local-dir:{folder}"},
        "C": {"backbone": "hf-hub:x"},
    }
    params = dataclasses.replace(demo, models=models)
    assert backbone_folders(params) == {"models.B.backbone": str(folder)}
    entry = input_manifest(params, "resolve_config")["models.B.backbone"]
    assert entry["path"] == str(folder)


def test_the_stage_writes_one_manifest_per_reader(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    holdout = tmp_path / "holdout.txt"
    holdout.write_text("10000001\n")
    raw["data"]["holdout_patients_from"] = str(holdout)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "inputs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.inputs",
            "--out",
            str(out),
            "--params",
            str(tmp_path / "params.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.json" for s in OPTIONAL_INPUTS)
    grounding = json.loads((out / "grounding.json").read_text())
    assert grounding["data.holdout_patients_from"]["path"] == str(holdout)
    assert json.loads((out / "qc.json").read_text())["qc.image_listing"] is None
