"""configs/mimic-cxr.yaml and its one command (lib/config/profile.py, stages/profile.py):
the specification's values, merged into params.yaml with its comments kept, validated, and
a MIMIC-layout copy built into the master file with no dvc.yaml edit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lib.config.loader import load_params
from lib.config.params import DemoParams
from lib.config.profile import apply_profile, parse_sets
from lib.config.variants import resolve_all
from lib.errors import ParamsError
from tests.conftest import params_section

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "configs/mimic-cxr.yaml"
BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": ""}


@pytest.fixture
def params_copy(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_profile_holds_the_specification(params_copy):
    apply_profile(params_copy, PROFILE)
    p = load_params(params_copy)
    assert p.data.demo is False and p.data.image_size == 224
    assert p.data.grounding.endswith("MS-CXR/MS_CXR_Local_Alignment_v1.1.0.csv")
    assert p.data.root == "/datasets/MIMIC-CXR" and p.data.reports.startswith(p.data.root)
    assert p.model.backbone == BIOMEDCLIP
    t = p.train
    assert (t.epochs, t.batch_size, t.gradient_accumulation_steps) == (40, 64, 2)
    assert (t.staged_training, t.warmup_epochs, t.warmup_lr) == (True, 3, 1.0e-4)
    assert (t.lr, t.llrd_factor, t.use_amp, t.warmup_steps) == (5.0e-6, 0.85, True, 1000)
    variants = resolve_all(p)
    stopping = {n: (v.train.recall_weight, v.train.patience) for n, v in variants.items()}
    assert stopping["A"] == (0.6, 10)
    assert all(stopping[n] == (0.7, 7) for n in "BCDE")
    assert all(variants[n].model.backbone == BIOMEDCLIP for n in "ABCDE")
    convirt = variants["ConVIRT"].model.backbone
    assert convirt == "local-dir:configs/backbones/convirt-resnet50-bioclinicalbert"
    assert (REPO / convirt.removeprefix("local-dir:")).is_dir()


def test_only_the_changed_values_change_and_comments_stay(params_copy):
    before = params_copy.read_text(encoding="utf-8").splitlines()
    changes = apply_profile(params_copy, PROFILE)
    after = params_copy.read_text(encoding="utf-8").splitlines()
    assert len(after) == len(before)
    differ = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(differ) == len(changes)
    for old, new in differ:  # same key, same comment, another value
        assert old.split(":")[0] == new.split(":")[0]
        assert old.partition(" #")[2] == new.partition(" #")[2]
    assert str(changes[0]) == "data.demo: true -> false"


def test_an_unchanged_profile_writes_nothing(params_copy, tmp_path):
    apply_profile(params_copy, PROFILE)
    text = params_copy.read_text(encoding="utf-8")
    assert apply_profile(params_copy, PROFILE) == []
    same = write(tmp_path / "same.yaml", "train: {llrd_factor: 0.85}\ndata: {views: [PA, AP]}\n")
    assert apply_profile(params_copy, same) == []
    assert params_copy.read_text(encoding="utf-8") == text


def test_set_goes_on_top_of_the_profile(params_copy):
    changes = apply_profile(
        params_copy, PROFILE, ["data.root=/mnt/mimic", "train.epochs=5", "qc.image_listing="]
    )
    p = load_params(params_copy)
    assert (p.data.root, p.train.epochs, p.qc.image_listing) == ("/mnt/mimic", 5, None)
    assert "data.root: /datasets/MIMIC-CXR -> /mnt/mimic" in map(str, changes)


def test_parse_sets_reads_yaml_values():
    assert parse_sets(["a.b=1", "a.c=[1, 2]", "d=true", "e=x=y"]) == {
        "a": {"b": 1, "c": [1, 2]},
        "d": True,
        "e": "x=y",
    }
    for bad in ("noequals", "=1", "a..b=1"):
        with pytest.raises(ParamsError, match="give key=value"):
            parse_sets([bad])


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("train:\n  epoch: 3\n", r"unknown key 'train.epoch'.*valid keys of 'train'.*'epochs'"),
        ("trian:\n  epochs: 3\n", r"unknown key 'trian'.*valid keys of params.yaml"),
        ("models:\n  Z:\n    backbone: x\n", r"unknown key 'models.Z'"),
        ("train: 3\n", r"train is a section of params.yaml; give its keys"),
        ("train:\n  epochs: {a: 1}\n", r"train.epochs is a value in params.yaml \(2\)"),
        ("train:\n  epochs: 0\n", r"applied: .*train.epochs = 0 must be > 0"),
        ("train:\n  epochs: forty\n", r"train.epochs = 'forty' is not a valid int"),
    ],
)
def test_bad_profiles_are_refused_and_nothing_is_written(params_copy, tmp_path, profile, message):
    text = params_copy.read_text(encoding="utf-8")
    bad = write(tmp_path / "bad.yaml", profile)
    with pytest.raises(ParamsError, match=message) as err:
        apply_profile(params_copy, bad)
    assert str(bad) in str(err.value) or "params.yaml" in str(err.value)
    assert params_copy.read_text(encoding="utf-8") == text


def test_the_command_lists_the_changes_and_reports_errors_cleanly(params_copy):
    def profile(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "stages.profile", str(PROFILE), "--params", str(params_copy)]
        return subprocess.run(
            [*cmd, *args], cwd=REPO, capture_output=True, text=True, env={**ENV, "PYTHONPATH": "."}
        )

    text = params_copy.read_text(encoding="utf-8")
    dry = profile("--dry-run")
    assert dry.returncode == 0 and "  train.epochs: 2 -> 40" in dry.stdout
    assert "would change" in dry.stdout and params_copy.read_text(encoding="utf-8") == text
    bad = profile("--set", "train.epoch=3")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: --set: unknown key 'train.epoch'")
    done = profile()
    assert done.returncode == 0 and f"changed {dry.stdout.count('->')} key(s)" in done.stdout
    assert load_params(params_copy).model.backbone == BIOMEDCLIP


# ------------------------------------------------------------------ acceptance (issue 30)


def sh(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def git_copy(dest: Path) -> Path:
    """A git copy of the working tree (tracked and untracked-not-ignored files)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    sh(["git", "init", "-q"], dest)
    sh([*git, "add", "-A"], dest)
    sh([*git, "commit", "-qm", "copy"], dest)
    return dest


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_the_profile_builds_the_master_file_of_a_mimic_copy_with_no_dvc_yaml_edit(tmp_path):
    """The issue's check: a MIMIC-CXR-JPG-layout copy outside the repository (a small corpus
    in the layout, an IMAGE_FILENAMES listing and a hold-out file), the profile applied with
    its one command, `dvc repro qc` builds the master file: no demo corpus, no backbone, no
    dvc.yaml edit; editing the hold-out file reruns qc."""
    from lib.demo.corpus import write_corpus

    mimic = tmp_path / "MIMIC-CXR"
    write_corpus(params_section(DemoParams, n_patients=40, seed=5, image_size=48, workers=1), mimic)
    images = sorted(p.relative_to(mimic).as_posix() for p in mimic.rglob("*.jpg"))
    write(mimic / "IMAGE_FILENAMES", "\n".join(images) + "\n")
    subjects = sorted({path.split("/")[2].removeprefix("p") for path in images})  # files/pXX/p…
    holdout = write(tmp_path / "holdout.txt", "\n".join(subjects[:20]) + "\n")
    repo = git_copy(tmp_path / "repo")
    dvc_yaml = (repo / "dvc.yaml").read_text(encoding="utf-8")
    sets = {
        "data.root": mimic,
        "data.reports": mimic / "mimic-cxr-reports.zip",
        "qc.image_listing": mimic / "IMAGE_FILENAMES",
        "data.holdout_patients_from": holdout,
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    sh([sys.executable, "-m", "stages.profile", "configs/mimic-cxr.yaml", *args], repo)

    stages = ran(sh(["dvc", "repro", "qc"], repo))
    data = {"filter_views", "extract_reports", "inject_labels", "split", "qc"}
    assert stages == {"code_manifest", "inputs"} | data
    master = repo / "data/processed/mimic_master_official_split.jsonl"
    records = [json.loads(line) for line in master.read_text(encoding="utf-8").splitlines()]
    assert records and all((mimic / r["image"]).is_file() for r in records)
    qc = json.loads((repo / "metrics/qc.json").read_text(encoding="utf-8"))
    assert qc["dropped"].get("holdout_patient", 0) > 0
    manifest = json.loads((repo / "data/inputs/qc.json").read_text(encoding="utf-8"))
    assert manifest["qc.image_listing"]["path"] == str(mimic / "IMAGE_FILENAMES")
    assert not (repo / "data/demo/mimic-cxr-jpg").exists()
    assert not (repo / "data/backbone/demo").exists()
    assert (repo / "dvc.yaml").read_text(encoding="utf-8") == dvc_yaml

    assert ran(sh(["dvc", "repro", "qc"], repo)) == {"inputs"}  # nothing else changed
    write(holdout, subjects[0] + "\n")  # another hold-out: qc alone reruns
    assert ran(sh(["dvc", "repro", "qc"], repo)) == {"inputs", "qc"}
