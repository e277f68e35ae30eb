"""lib/io.py: atomic writes leave no temporary inside a folder a stage depends on, and a
write killed with -9 leaves nothing that the next write of the same output does not remove."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.io import SCRATCH, atomic_path, write_json

REPO = Path(__file__).resolve().parents[1]

# A stage writing models/A, killed with -9 half-way through (after config.json, before the rename).
KILLED_WRITE = """
import os, signal, sys
from lib.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "config.json").write_text("{}")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "models").mkdir()
    return tmp_path


def _kill_mid_write(out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out)], env=env, check=False)
    assert proc.returncode == -9


def test_killed_write_leaves_nothing_in_the_output_parent(project: Path):
    _kill_mid_write(project / "models" / "A")
    # models/ is stage grounding's dependency: its hash must not see the dead write
    assert list((project / "models").iterdir()) == []
    assert len(list((project / SCRATCH).glob(".A.*.tmp"))) == 1  # where the temporary went


def test_next_write_removes_the_stale_temporary(project: Path):
    out = project / "models" / "A"
    _kill_mid_write(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text('{"ok": true}')
    assert json.loads((out / "config.json").read_text()) == {"ok": True}
    assert list((project / SCRATCH).iterdir()) == []
    assert [p.name for p in (project / "models").iterdir()] == ["A"]


def test_next_write_removes_a_temporary_the_old_scheme_left_beside_the_output(project: Path):
    legacy = project / "models" / ".A.k3j9x_1.tmp" / "A"
    legacy.mkdir(parents=True)
    (legacy / "config.json").write_text("{}")
    other = project / "models" / ".B.zz.tmp"  # another output's: not this write's to remove
    other.mkdir()
    write_json(project / "models" / "A", {"x": 1})
    assert sorted(p.name for p in (project / "models").iterdir()) == [".B.zz.tmp", "A"]


def test_outputs_of_the_same_name_do_not_share_temporaries(project: Path):
    (project / "data" / "eval").mkdir(parents=True)
    _kill_mid_write(project / "models" / "A")
    write_json(project / "data" / "eval" / "A", {"x": 1})  # another A: leaves models/A's
    assert len(list((project / SCRATCH).glob(".A.*.tmp"))) == 1


def test_outside_a_project_the_temporary_is_a_sibling_and_is_cleaned(tmp_path: Path):
    _kill_mid_write(tmp_path / "A")
    assert len(list(tmp_path.glob(".A.*.tmp"))) == 1
    write_json(tmp_path / "A", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["A"]


def test_failed_write_keeps_the_old_output_and_no_temporary(project: Path):
    out = project / "models" / "A.json"
    write_json(out, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert json.loads(out.read_text()) == {"v": 1}
    assert list((project / SCRATCH).iterdir()) == []
