"""lib/code_deps.py: the files a stage's code is made of, and their manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib.code_deps import (
    code_files,
    manifest,
    manifest_name,
    script_module,
    stage_scripts,
)

REPO = Path(__file__).resolve().parents[1]

PROJECT = {
    "lib/__init__.py": '"""doc"""\n',
    "lib/pkg/__init__.py": "",
    "lib/pkg/a.py": "import os\n\ndef f():\n    from lib.pkg import b  # lazy\n    return b\n",
    "lib/pkg/b.py": "from .c import x\nfrom . import d\n",
    "lib/pkg/c.py": "x = 1\n",
    "lib/pkg/d.py": "",
    "lib/unused.py": "",
    "stages/__init__.py": "",
    "stages/s.py": "from lib.pkg.a import f\n",
    "stages/other.py": "import lib.unused\n",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for rel, text in PROJECT.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


def _rel(files: set[Path], root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in files}


def test_closure_follows_lazy_relative_and_submodule_imports(project):
    assert _rel(code_files("stages.s", project), project) == {
        "stages/__init__.py",
        "stages/s.py",
        "lib/__init__.py",
        "lib/pkg/__init__.py",
        "lib/pkg/a.py",
        "lib/pkg/b.py",  # imported inside a function
        "lib/pkg/c.py",  # from .c import x
        "lib/pkg/d.py",  # from . import d: a submodule
    }
    assert "lib/unused.py" not in _rel(code_files("stages.s", project), project)
    assert code_files("os", project) == set()


def test_manifest_changes_with_any_file_of_the_closure_and_no_other(project):
    before = manifest("stages.s", project)
    assert before["module"] == "stages.s"
    assert list(before["files"]) == sorted(before["files"])
    (project / "lib/unused.py").write_text("y = 2\n", encoding="utf-8")
    assert manifest("stages.s", project) == before
    (project / "lib/pkg/c.py").write_text("x = 2\n", encoding="utf-8")
    after = manifest("stages.s", project)
    changed = [f for f in before["files"] if before["files"][f] != after["files"][f]]
    assert changed == ["lib/pkg/c.py"]
    (project / "lib/pkg/c.py").write_text("import lib.unused\nx = 1\n", encoding="utf-8")
    assert "lib/unused.py" in manifest("stages.s", project)["files"]


def test_names_and_scripts(project):
    assert stage_scripts(project) == ["stages.other", "stages.s"]
    assert manifest_name("stages.train") == "train.json"
    with pytest.raises(ValueError, match="not a stage script"):
        manifest_name("lib.io")
    assert script_module("python -m stages.train --config x") == "stages.train"
    with pytest.raises(ValueError, match="python -m"):
        script_module("python stages/train.py")
    with pytest.raises(ValueError, match="no file"):
        manifest("stages.gone", project)


def test_the_real_train_manifest_holds_the_model_and_not_the_comparison():
    files = manifest("stages.train", REPO)["files"]
    assert {"stages/train.py", "lib/model/patch_ib.py", "lib/train/loop.py"} <= set(files)
    assert "lib/eval/compare.py" not in files


def test_no_import_is_built_at_run_time():
    """The closure is read from import statements: a module loaded by name at run time
    (importlib, __import__) would be missed."""
    offenders = [
        p.relative_to(REPO).as_posix()
        for root in ("lib", "stages")
        for p in (REPO / root).rglob("*.py")
        if p.name != "code_deps.py"
        and any(s in p.read_text(encoding="utf-8") for s in ("importlib", "__import__("))
    ]
    assert offenders == []


def test_the_stage_writes_one_manifest_per_script(project, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "code"
    subprocess.run(
        [sys.executable, "-m", "stages.code_manifest", "--out", str(out), "--root", str(project)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in out.iterdir()) == ["other.json", "s.json"]
    written = json.loads((out / "s.json").read_text(encoding="utf-8"))
    assert written == manifest("stages.s", project)
