"""The deps of every stage in dvc.yaml, held against what the stage really reads.

DVC reruns a stage only when a declared dependency changes, so a dependency missing from
dvc.yaml serves stale results without a word. This test derives the dependencies from the
code instead of trusting a hand-kept list:

- **code**: the files of the ``lib`` (and ``stages``) modules that the stage's script
  imports, transitively, read with ``ast``; imports inside functions count. Every one must
  be a dependency, and no other ``.py`` file may be one (an unused dependency reruns the
  stage for nothing and hides which module matters). Package ``__init__.py`` files must
  hold no code (checked here), so they are not dependencies.
- **data**: every path in the stage's command that is, holds or lies inside an output of
  another stage must be covered by a dependency; so must a file named by a params key that
  the stage reads (``qc.image_listing``, ``data.holdout_patients_from``). The raw data
  root (``data.root``, by default the demo corpus) is exempt: stages depend on its
  metadata files, never on the image tree (CONTRIBUTING.md).
"""

from __future__ import annotations

import ast
import dataclasses
import posixpath
import shlex
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CODE_ROOTS = ("lib", "stages")


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One resolved stage of dvc.yaml (``train@A`` etc. after ``foreach``)."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots


# ----------------------------------------------------------------------------- code


def module_file(module: str, root: Path) -> Path | None:
    """The file that defines ``module`` under ``root`` (a package's ``__init__.py``)."""
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
    for ``from a.b import c``, both ``a.b`` and ``a.b.c`` (c may be a submodule)."""
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
    """The project files that importing ``module`` executes (its parent packages too)."""
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
    if "-m" not in args:
        raise ValueError(f"command {cmd!r} does not run a module with python -m")
    return args[args.index("-m") + 1]


def code_problems(stage: StageSpec, root: Path) -> list[str]:
    files = code_files(script_module(stage.cmd), root)
    if not files:
        return [f"{stage.name}: its module {script_module(stage.cmd)} is not under {root}"]
    needed = {p.relative_to(root).as_posix() for p in files if p.name != "__init__.py"}
    declared = {d for d in stage.deps if d.endswith(".py")}
    problems = [f"{stage.name}: missing code dep {d}" for d in sorted(needed - declared)]
    problems += [f"{stage.name}: unused code dep {d}" for d in sorted(declared - needed)]
    return problems


def init_code(root: Path) -> list[str]:
    """``__init__.py`` files that hold more than a docstring."""
    bad = []
    for path in sorted(p for r in CODE_ROOTS for p in (root / r).rglob("__init__.py")):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        if body:
            bad.append(path.relative_to(root).as_posix())
    return bad


# ----------------------------------------------------------------------------- data


def _norm(path: str) -> str:
    return posixpath.normpath(path)


def _within(inner: str, outer: str) -> bool:
    """``inner`` is ``outer`` or lies below it."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def cmd_paths(cmd: str) -> Iterator[str]:
    """The path-like arguments of a stage command (options, the interpreter and the module
    name left out)."""
    args = shlex.split(cmd)
    skip = {"python", "-m", script_module(cmd)}
    for arg in args:
        if not arg.startswith("-") and arg not in skip:
            yield _norm(arg)


def data_problems(
    stages: Iterable[StageSpec],
    exempt: Iterable[str] = (),
    named: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """Paths a stage's command names that are, hold or lie inside another stage's output
    without a dependency that covers them; and files named by params (``named[stage]``)
    that are not dependencies at all."""
    stages = list(stages)
    exempt = {_norm(e) for e in exempt}
    named = named or {}
    problems = []
    for stage in stages:
        deps = [_norm(d) for d in stage.deps]

        def covered(path: str, deps: list[str] = deps) -> bool:
            return any(_within(path, d) for d in deps)

        for path in map(_norm, named.get(stage.name, ())):
            if not covered(path):
                problems.append(f"{stage.name}: reads {path} (named by params), not a dep")
        own = [_norm(o) for o in stage.outs]
        for path in cmd_paths(stage.cmd):
            if path in exempt or covered(path) or any(_within(path, o) for o in own):
                continue
            for other in (s for s in stages if s is not stage):
                for out in map(_norm, other.outs):
                    if _within(out, path) and not covered(out):
                        problems.append(
                            f"{stage.name}: reads {path}, which holds {out} (from "
                            f"{other.name}), and no dep covers it"
                        )
                    elif _within(path, out) and out != path:
                        problems.append(
                            f"{stage.name}: reads {path}, inside {out} (from {other.name}), "
                            "and no dep covers it"
                        )
    return problems


def dangling_deps(stages: Iterable[StageSpec], root: Path, exempt: Iterable[str] = ()) -> list[str]:
    """Deps that no stage writes and that do not exist under ``root``: a typo, or a path
    pasted with stray characters, which DVC only reports when it runs the stage."""
    stages = list(stages)
    outs = [_norm(o) for s in stages for o in s.outs]
    exempt = [_norm(e) for e in exempt]
    return [
        f"{stage.name}: dep {dep} exists nowhere and no stage writes it"
        for stage in stages
        for dep in map(_norm, stage.deps)
        if not (root / dep).exists()
        and not any(_within(dep, o) or _within(o, dep) for o in outs)
        and not any(_within(dep, e) for e in exempt)
    ]


# ----------------------------------------------------------------------------- the repo


def repo_stages(root: Path) -> list[StageSpec]:
    """dvc.yaml's stages as DVC resolves them (``vars``, ``foreach``, interpolation)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [
            StageSpec(
                name=stage.name,
                cmd=stage.cmd,
                deps=tuple(d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)),
                outs=tuple(o.def_path for o in stage.outs),
            )
            for stage in repo.index.stages
            if stage.cmd
        ]


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> list[StageSpec]:
    """Every stage, the matrix ones included: dvc.yaml resolved against params.yaml with one
    replicate seed, since the default (``replicates.seeds: []``) makes no replicate stage."""
    from dvc.repo import Repo

    root = tmp_path_factory.mktemp("resolved")
    Repo.init(str(root), no_scm=True).close()
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["replicates"] = {"seeds": [1]}
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    resolved = repo_stages(root)
    assert any(s.name.startswith("replicate@") for s in resolved), "no replicate stage"
    return resolved


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def test_every_stage_declares_exactly_the_code_it_imports(stages):
    assert stages, "dvc.yaml has no stages"
    problems = [p for s in stages for p in code_problems(s, REPO)]
    assert not problems, "dvc.yaml deps disagree with the imports:\n" + "\n".join(problems)


def test_package_inits_hold_no_code():
    assert not init_code(REPO), "an __init__.py with code must become a dependency"


def test_every_dep_exists_or_is_written_by_a_stage(stages, params):
    problems = dangling_deps(stages, REPO, exempt=[params["data"]["root"]])
    assert not problems, "\n".join(problems)


def test_dangling_deps_are_found(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.py").write_text("")
    stage = StageSpec("s", "python -m x", ("lib/a.py", "lib/a.py', ...]", "out/x"), ())
    writer = StageSpec("w", "python -m w", (), ("out",))
    assert dangling_deps([stage, writer], tmp_path) == [
        "s: dep lib/a.py', ...] exists nowhere and no stage writes it"
    ]


def test_every_stage_declares_the_files_other_stages_write(stages, params):
    named_by_qc = [params["qc"].get("image_listing"), params["data"].get("holdout_patients_from")]
    named = {"qc": [p for p in named_by_qc if p]}
    if params["data"].get("holdout_patients_from"):
        named["grounding"] = [params["data"]["holdout_patients_from"]]
    problems = data_problems(stages, exempt=[params["data"]["root"]], named=named)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- the checker


def _project(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


def test_checker_finds_a_missing_lazy_import_and_an_unused_dep(tmp_path):
    root = _project(
        tmp_path,
        {
            "lib/__init__.py": '"""doc"""\n',
            "lib/pkg/__init__.py": "",
            "lib/pkg/a.py": "def f():\n    from lib.pkg import b  # lazy\n    return b\n",
            "lib/pkg/b.py": "from .c import x\n",
            "lib/pkg/c.py": "x = 1\n",
            "lib/unused.py": "",
            "stages/s.py": "from lib.pkg.a import f\n",
        },
    )
    stage = StageSpec(
        name="s",
        cmd="python -m stages.s --out o",
        deps=("stages/s.py", "lib/pkg/a.py", "lib/unused.py"),
        outs=("o",),
    )
    assert code_problems(stage, root) == [
        "s: missing code dep lib/pkg/b.py",
        "s: missing code dep lib/pkg/c.py",
        "s: unused code dep lib/unused.py",
    ]
    full = dataclasses.replace(
        stage, deps=("stages/s.py", "lib/pkg/a.py", "lib/pkg/b.py", "lib/pkg/c.py")
    )
    assert code_problems(full, root) == []
    (root / "lib/pkg/__init__.py").write_text("import os\n", encoding="utf-8")
    assert init_code(root) == ["lib/pkg/__init__.py"]


def test_checker_finds_an_undeclared_data_file():
    make = StageSpec(
        "make", "python -m stages.make --out d/x.json d/dir", (), ("d/x.json", "d/dir")
    )
    read = StageSpec("read", "python -m stages.read --in d --root raw", ("d/dir",), ("r",))
    problems = data_problems([make, read], exempt=["raw"])
    assert problems == ["read: reads d, which holds d/x.json (from make), and no dep covers it"]
    inside = StageSpec("inside", "python -m stages.inside --in d/dir/f.npz", (), ("i",))
    assert data_problems([make, inside]) == [
        "inside: reads d/dir/f.npz, inside d/dir (from make), and no dep covers it"
    ]
    covered = dataclasses.replace(read, deps=("d",))
    assert data_problems([make, covered], exempt=["raw"]) == []
    qc = StageSpec("qc", "python -m stages.qc --out m", (), ("m",))
    assert data_problems([qc], named={"qc": ["lists/images.txt"]}) == [
        "qc: reads lists/images.txt (named by params), not a dep"
    ]
    declared = dataclasses.replace(qc, deps=("lists/images.txt",))
    assert data_problems([declared], named={"qc": ["lists/images.txt"]}) == []


def test_the_demo_backbone_path_is_one():
    """dvc.yaml's paths.backbone (where demo_backbone writes) is params' DEMO_BACKBONE."""
    from lib.config.params import DEMO_BACKBONE

    dvc_vars = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["vars"]
    paths = next(v["paths"] for v in dvc_vars if isinstance(v, dict) and "paths" in v)
    assert f"local-dir:{paths['backbone']}" == DEMO_BACKBONE
