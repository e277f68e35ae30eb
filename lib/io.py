"""Atomic output writing: a stage interrupted half-way never leaves a partial file
where DVC (or the next stage) would take it for a finished one."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Where a DVC project keeps its temporaries: DVC's own scratch folder, git-ignored by
# .dvc/.gitignore and never part of any stage's dependency. A temporary beside the output
# (the old scheme) sat inside the output's parent, and a parent can be a dependency of
# another stage (models/ is grounding's): a write killed with -9 left models/.A.<rand>.tmp
# there and changed that folder's hash.
SCRATCH = Path(".dvc") / "tmp" / "atomic"


def _absolute(path: Path) -> Path:
    # not resolve(): an output DVC linked from its cache would resolve into .dvc/cache
    return Path(os.path.abspath(path))


def scratch_dir(path: Path) -> Path:
    """The folder ``path``'s temporary is made in: ``<project>/.dvc/tmp/atomic`` for a path
    inside a DVC project on the same file system (so the final rename stays a rename),
    else ``path``'s own parent (no stage can depend on a folder outside a project)."""
    parent = _absolute(path).parent
    for root in (parent, *parent.parents):
        if (root / ".dvc").is_dir():
            scratch = root / SCRATCH
            scratch.mkdir(parents=True, exist_ok=True)
            if os.stat(scratch).st_dev == os.stat(parent).st_dev:
                return scratch
            break
    return parent


def _temp_prefix(path: Path, scratch: Path) -> str:
    """Names a temporary after its output: the name, plus the digest of the full path when
    the temporary is not beside the output (models/A and data/eval/A share a scratch)."""
    if scratch == _absolute(path).parent:
        return f".{path.name}."
    digest = hashlib.sha256(str(_absolute(path)).encode()).hexdigest()[:12]
    return f".{path.name}.{digest}."


def remove_stale_temps(path: Path, scratch: Path) -> list[Path]:
    """Delete what an earlier write of ``path`` left when it was killed before cleaning up
    (``kill -9``, power loss): its temporaries in the scratch folder, and those the old scheme
    left beside the output (``.<name>.<rand>.tmp``). Returns the folders removed."""
    stale = [*scratch.glob(f"{glob.escape(_temp_prefix(path, scratch))}*.tmp")]
    stale += _absolute(path).parent.glob(f".{glob.escape(path.name)}.*.tmp")
    removed = []
    for tmp in dict.fromkeys(stale):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it onto ``path``.

    Works for files and directories. The temporary lives in the project's scratch folder
    (:func:`scratch_dir`), on the same file system, so no dependency folder ever holds one
    and the final ``os.replace`` is a rename; stale temporaries of the same output are
    removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_dir(path)
    remove_stale_temps(path, scratch)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path, scratch), suffix=".tmp", dir=scratch))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tree_digest(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (their relative paths and bytes, in sorted
    order): what identifies a backbone folder in a variant's resolved config."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        if f != root:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False) + "\n", encoding="utf-8")


def write_npy(path: str | Path, array: Any) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_figure(path: str | Path, fig: Any) -> None:
    """Save a matplotlib figure atomically (PNG, fixed metadata so bytes are reproducible)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
