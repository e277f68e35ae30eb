"""Stage scripts on bad input: a one-line error naming the file/key and the fix, exit 1,
no traceback."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_stage(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def run_filter_views(metadata: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_stage(
        "filter_views",
        "--metadata",
        str(metadata),
        "--out",
        str(tmp_path / "o.parquet"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--plots",
        str(tmp_path / "p"),
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_filter_views_writes_its_headline_beside_its_full_metrics(tmp_path):
    """Issue 30.6: the DVC metric is kept / dropped; the per-view counts stay in --metrics."""
    import json

    from lib.data.mimic import METADATA_COLUMNS

    path = tmp_path / "meta.csv.gz"
    rows = [
        (f"{c * 8}-{c * 8}-{c * 8}-{c * 8}-{c * 8}", v)
        for c, v in zip("abc", ("PA", "LATERAL", "AP"), strict=True)
    ]
    with gzip.open(path, "wt") as fh:
        fh.write(",".join(METADATA_COLUMNS) + "\n")
        for i, (dicom, view) in enumerate(rows):
            cells = {"dicom_id": dicom, "subject_id": "10000001", "study_id": f"5000000{i}"}
            cells["ViewPosition"] = view
            fh.write(",".join(cells.get(c, "1") for c in METADATA_COLUMNS) + "\n")
    proc = run_stage(
        "filter_views", "--metadata", str(path), "--out", str(tmp_path / "o.parquet"),
        "--metrics", str(tmp_path / "m.json"), "--headline", str(tmp_path / "h.json"),
        "--plots", str(tmp_path / "p"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "h.json").read_text()) == {"h": {"kept": 2, "dropped": 1}}
    assert "views" in json.loads((tmp_path / "m.json").read_text())


def test_missing_metadata_names_file_and_params_key(tmp_path):
    proc = run_filter_views(tmp_path / "m.csv.gz", tmp_path)
    assert_clean_error(proc, "m.csv.gz", "not found", "data.root")
    assert not (tmp_path / "o.parquet").exists()


def test_wrong_columns_are_named(tmp_path):
    path = tmp_path / "meta.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("dicom_id,subject_id,study_id,View\nx,10000001,50000001,PA\n")
    proc = run_filter_views(path, tmp_path)
    assert_clean_error(proc, "meta.csv.gz", "missing column(s)", "ViewPosition")


def test_missing_reports_names_params_key(tmp_path):
    import pandas as pd

    images = tmp_path / "images.parquet"
    pd.DataFrame({"subject_id": [10000001], "study_id": [50000001]}).to_parquet(images)
    proc = run_stage(
        "extract_reports",
        "--images",
        str(images),
        "--reports",
        str(tmp_path / "none.zip"),
        "--out",
        str(tmp_path / "r.parquet"),
        "--metrics",
        str(tmp_path / "m.json"),
    )
    assert_clean_error(proc, "none.zip", "data.reports")


def test_bad_params_key_is_reported(tmp_path):
    params = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    params.write_text(text.replace("  label_policy: ", "  label_polcy: ", 1))
    proc = run_stage(
        "filter_views",
        "--metadata",
        "x",
        "--out",
        "y",
        "--metrics",
        "z",
        "--plots",
        "p",
        "--params",
        str(params),
    )
    assert_clean_error(proc, "data.label_polcy", "valid keys")


@pytest.mark.parametrize(
    "stage", ["demo_data", "filter_views", "extract_reports", "inject_labels", "split", "qc"]
)
def test_every_stage_has_help(stage):
    proc = run_stage(stage, "--help")
    assert proc.returncode == 0 and "--out" in proc.stdout


def _convirt_backbone(tmp_path: Path, params: dict) -> subprocess.CompletedProcess:
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in params.items():
        raw[section] = {**raw[section], **values}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return run_stage(
        "convirt_backbone",
        "--text-from",
        str(tmp_path / "demo"),
        "--out",
        str(tmp_path / "out"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--params",
        str(tmp_path / "params.yaml"),
    )


def test_convirt_backbone_is_skipped_when_no_variant_uses_it(tmp_path):
    import json

    elsewhere = {"backbone": "local-dir:configs/backbones/convirt-resnet50-bioclinicalbert"}
    proc = _convirt_backbone(tmp_path, {"models": {"ConVIRT": elsewhere}})
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "m.json").read_text())
    assert "no variant's backbone is" in record["skipped"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["skipped.json"]


def test_convirt_demo_backbone_needs_the_demo_bert(tmp_path):
    proc = _convirt_backbone(tmp_path, {"model": {"backbone": "hf-hub:org/real-clip"}})
    assert_clean_error(proc, "models.ConVIRT.backbone", "convirt-resnet50-bioclinicalbert")


def test_resolve_config_writes_the_pretrained_reference_with_its_folder_digest(tmp_path):
    """Stage pretrained follows whichever folder model.backbone names through
    data/configs/pretrained.json: its digest changes with the folder's files."""
    import json

    import yaml

    folder = tmp_path / "my_backbone"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["backbone"] = f"local-dir:{folder}"
    # Shared settings other than model.backbone and train.use_amp never reach the reference.
    raw["model"]["use_masking"] = raw["model"]["use_local_alignment"] = True
    raw["train"]["use_amp"] = False
    raw["models"] = {"A": raw["models"]["A"]}  # ConVIRT's demo folder is not built here
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))

    def digest() -> str:
        out = tmp_path / "configs"
        proc = run_stage(
            "resolve_config", "--out-dir", str(out), "--params", str(tmp_path / "params.yaml")
        )
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out.iterdir()) == ["A.json", "pretrained.json"]
        ref = json.loads((out / "pretrained.json").read_text())
        assert ref["name"] == "pretrained" and ref["model"]["backbone"] == f"local-dir:{folder}"
        assert not ref["model"]["use_masking"] and not ref["model"]["use_local_alignment"]
        assert ref["train"]["use_amp"] is False
        return ref["backbone_digest"]

    first = digest()
    (folder / "open_clip_config.json").write_text('{"changed": 1}')
    assert digest() != first


def test_demo_data_draws_no_corpus_on_real_data(tmp_path):
    """data.demo: false (configs/mimic-cxr.yaml): the stage writes only a record of why and
    an empty boxes file, the outputs DVC needs."""
    import json

    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["demo"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run_stage(
        "demo_data",
        "--out",
        str(tmp_path / "corpus"),
        "--grounding",
        str(tmp_path / "ms-cxr/boxes.csv"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--params",
        str(tmp_path / "params.yaml"),
    )
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "corpus").iterdir()] == ["skipped.json"]
    assert (tmp_path / "ms-cxr/boxes.csv").read_text() == ""
    assert "data.demo is false" in json.loads((tmp_path / "m.json").read_text())["skipped"]


# The committed params.yaml with one line edited: (old, new, what the error must name).
BAD_PARAMS = [
    ("  lr: 1.0e-4 ", "  lr: .nan ", ("train.lr = nan", "not a finite number")),
    ("  label_policy: ", "  label_polcy: ", ("data.label_polcy", "valid keys")),
    ("  probe_c: 0.01", "", ("missing key", "eval.probe_c", "add it under 'eval'")),
]


def edited_params(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_check_params_accepts_the_committed_file():
    proc = run_stage("check_params", "--params", str(REPO / "params.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "params.yaml is valid" in proc.stdout


def test_check_params_settings_keep_their_bytes_when_a_description_changes(tmp_path):
    """Issue 30: editing a description reruns compare alone. resolve_config and
    convirt_backbone read check_params' settings file, not models:, and that file is
    byte-identical after the edit (and changes when a setting does)."""
    import json

    def settings(old: str, new: str) -> bytes:
        path = edited_params(tmp_path, old, new)
        out = tmp_path / f"models-{len(new)}.json"
        proc = run_stage("check_params", "--params", str(path), "--settings", str(out))
        assert proc.returncode == 0, proc.stderr
        return out.read_bytes()

    same = settings("description: Global CLIP baseline", "description: Global CLIP")
    edited = settings("description: Global CLIP baseline", "description: A, renamed in the table")
    assert same == edited
    assert list(json.loads(same)) == list(
        yaml.safe_load((REPO / "params.yaml").read_text())["models"]
    )
    assert "description" not in same.decode()
    changed = settings("train: {recall_weight: 0.6, patience: 10}", "train: {recall_weight: 0.5}")
    assert changed != same


@pytest.mark.parametrize(("old", "new", "needles"), BAD_PARAMS)
def test_check_params_stops_on_a_bad_file_naming_the_key(tmp_path, old, new, needles):
    path = edited_params(tmp_path, old, new)
    assert_clean_error(run_stage("check_params", "--params", str(path)), str(path), *needles)


@pytest.mark.slow  # dvc init + two small stages: about 15 s
def test_check_params_fails_dvc_repro_when_every_stage_is_cached(tmp_path):
    """Issue 27: a NaN or a typo in params.yaml stopped no `dvc repro` whose stages were
    cached. dvc.yaml's own check_params stage, in a copy of the repository with just it and
    code_manifest: cached after a first run, it reruns on the bad edit and fails the repro.
    Its one output, the variants' settings, keeps its bytes under an edit elsewhere."""
    import shutil

    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    check = dvc_yaml["stages"]["check_params"]
    assert check["outs"] == ["${paths.settings}"] and "params.yaml" in check["deps"]
    stages = {name: dvc_yaml["stages"][name] for name in ("code_manifest", "check_params")}
    for part in ("lib", "stages"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    top = {"vars": dvc_yaml["vars"], "stages": stages}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(top), encoding="utf-8")

    def sh(*cmd: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "DVC_NO_ANALYTICS": "1"}
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)

    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert sh(*cmd).returncode == 0
    first = sh("dvc", "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "params.yaml is valid" in first.stdout
    assert "Running stage" not in sh("dvc", "repro").stdout  # cached
    for old, new, needles in BAD_PARAMS[:2]:
        good = (tmp_path / "params.yaml").read_text(encoding="utf-8")
        edited_params(tmp_path, old, new)  # the copy's params.yaml
        proc = sh("dvc", "repro")
        assert proc.returncode != 0, proc.stdout
        for needle in needles:
            assert needle in proc.stderr + proc.stdout
        (tmp_path / "params.yaml").write_text(good, encoding="utf-8")
