"""Which project files a stage's code is made of, and a manifest of their digests.

DVC reruns a stage only when a declared dependency changes. A stage's code is its script and
every ``lib`` (and ``stages``) module the script imports, transitively, lazy imports inside
functions included, with their parent packages. Stage ``code_manifest`` writes one manifest
per stage script (``data/code/<script>.json``: each of those files with its sha256), and
every stage depends on its own manifest: editing a module reruns exactly the stages that
import it, and ``dvc.lock`` holds one entry per stage for its code instead of 20–35, which
DVC parses and rewrites after every stage (benchmarks/README.md).

The import graph is read with ``ast``, never by importing: for ``from a.b import c`` both
``a.b`` and ``a.b.c`` count (``c`` may be a submodule). An import the code builds at run time
(``importlib.import_module(name)``) is not seen; the project has none, and
``tests/test_code_deps.py`` keeps it so.
"""

from __future__ import annotations

import ast
import hashlib
import shlex
from collections.abc import Iterator
from pathlib import Path

CODE_ROOTS = ("lib", "stages")
STAGES = "stages"


def module_file(module: str, root: Path) -> Path | None:
    """The file that defines ``module`` under ``root`` (a package's ``__init__.py``), or None
    for a module outside the project (the standard library, installed packages)."""
    if module.split(".")[0] not in CODE_ROOTS:
        return None
    base = root.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_modules(path: Path, module: str) -> Iterator[str]:
    """Every module an ``import`` anywhere in ``path`` may load (function bodies included):
    for ``from a.b import c``, both ``a.b`` and ``a.b.c``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def code_files(module: str, root: Path) -> set[Path]:
    """The project files that importing ``module`` executes: its own, its parent packages'
    ``__init__.py`` and, transitively, those of every project module it imports."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imported_modules(path, name))
    return seen


def script_module(cmd: str) -> str:
    """``python -m stages.train --config ...`` -> ``stages.train``."""
    args = shlex.split(cmd)
    if "-m" not in args or args.index("-m") + 1 >= len(args):
        raise ValueError(f"command {cmd!r} does not run a module with python -m")
    return args[args.index("-m") + 1]


def stage_scripts(root: Path) -> list[str]:
    """The stage modules under ``root/stages`` (``stages.train``, ...), sorted."""
    return sorted(
        f"{STAGES}.{p.stem}" for p in (root / STAGES).glob("*.py") if p.name != "__init__.py"
    )


def manifest_name(module: str) -> str:
    """``stages.train`` -> ``train.json``: the manifest's file name in ``data/code``."""
    if not module.startswith(f"{STAGES}.") or module.count(".") != 1:
        raise ValueError(f"{module!r} is not a stage script (stages.<name>)")
    return f"{module.partition('.')[2]}.json"


def manifest(module: str, root: Path) -> dict[str, object]:
    """``{"module": ..., "files": {relative path: sha256}}`` for the code of ``module``, in
    sorted order, so equal code gives byte-equal manifests."""
    files = sorted(p.relative_to(root).as_posix() for p in code_files(module, root))
    if not files:
        raise ValueError(f"module {module!r} has no file under {root}")
    digests = {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in files}
    return {"module": module, "files": digests}
