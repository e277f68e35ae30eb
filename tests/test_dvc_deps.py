"""The deps of every stage in dvc.yaml, held against what the stage really reads.

DVC reruns a stage only when a declared dependency changes, so a dependency missing from
dvc.yaml serves stale results without a word. This test derives the dependencies from the
code instead of trusting a hand-kept list:

- **code**: each stage depends on its script's manifest, ``data/code/<script>.json``, which
  stage ``code_manifest`` writes from the imports (``lib/code_deps.py``, tested in
  ``tests/test_code_deps.py``), and on no ``.py`` file; ``code_manifest`` depends on the
  ``lib`` and ``stages`` folders whole and writes a manifest for every stage script.
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

from lib.code_deps import CODE_ROOTS, manifest_name, module_file, script_module, stage_scripts

REPO = Path(__file__).resolve().parents[1]
CODE_STAGE = "code_manifest"  # writes data/code/<script>.json for every stage script
CODE_DIR = "data/code"
INPUTS_STAGE = "inputs"  # writes data/inputs/<stage>.json (lib/config/inputs.py)
INPUTS_DIR = "data/inputs"


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One resolved stage of dvc.yaml (``train@A`` etc. after ``foreach``)."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots


# ----------------------------------------------------------------------------- code


def code_problems(stage: StageSpec, root: Path) -> list[str]:
    """A stage's code is declared through its manifest: ``data/code/<script>.json``, written
    by stage code_manifest, and no ``.py`` file. code_manifest itself depends on the code
    folders whole."""
    module = script_module(stage.cmd)
    if module_file(module, root) is None:
        return [f"{stage.name}: its module {module} is not under {root}"]
    py = [d for d in stage.deps if d.endswith(".py")]
    problems = [f"{stage.name}: code dep {d}: depend on its manifest instead" for d in py]
    if stage.name == CODE_STAGE:
        missing = [r for r in CODE_ROOTS if r not in stage.deps]
        return problems + [f"{stage.name}: missing dep on the folder {r}" for r in missing]
    own = f"{CODE_DIR}/{manifest_name(module)}"
    if own not in stage.deps:
        problems.append(f"{stage.name}: missing code dep {own} (the manifest of {module})")
    others = [d for d in stage.deps if _within(d, CODE_DIR) and d != own]
    problems += [f"{stage.name}: another script's manifest {d} is a dep" for d in others]
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


def test_every_stage_declares_its_code_manifest(stages):
    assert stages, "dvc.yaml has no stages"
    problems = [p for s in stages for p in code_problems(s, REPO)]
    assert not problems, "dvc.yaml's code deps are wrong:\n" + "\n".join(problems)


def test_the_code_stage_writes_every_manifest_a_stage_reads(stages):
    (code,) = [s for s in stages if s.name == CODE_STAGE]
    assert code.outs == (CODE_DIR,)
    assert shlex.split(code.cmd)[-2:] == ["--out", CODE_DIR]
    scripts = {script_module(s.cmd) for s in stages}
    assert scripts <= set(stage_scripts(REPO)), "a stage runs a module outside stages/"


def test_package_inits_hold_no_code():
    assert not init_code(REPO), "an __init__.py holds code (CONTRIBUTING: imports run downwards)"


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
    problems = data_problems(stages, exempt=[params["data"]["root"]], named=named_files(params))
    assert not problems, "\n".join(problems)


def named_files(params: Mapping) -> dict[str, list[str]]:
    """The files named by params that a stage must depend on directly: those no manifest of
    stage inputs carries (the demo's backbone folders, which stages write)."""
    from lib.config.inputs import named_paths
    from lib.config.loader import parse_params

    parsed = parse_params(params)
    named_by_qc = [params["qc"].get("image_listing"), params["data"].get("holdout_patients_from")]
    named = {"qc": [p for p in named_by_qc if p]}
    if params["data"].get("holdout_patients_from"):
        named["grounding"] = [params["data"]["holdout_patients_from"]]
    named["resolve_config"] = backbone_folders(params)  # digested into each variant's config
    for stage, files in named.items():
        carried = set(named_paths(parsed, stage).values())
        named[stage] = [f for f in files if f not in carried]
    return named


def test_optional_inputs_reach_their_stages_through_manifests(stages):
    """Each stage script of lib/config/inputs.py's OPTIONAL_INPUTS depends on its manifest, which
    stage inputs writes (always_changed: DVC cannot know when an optional file changed)."""
    from lib.config.inputs import OPTIONAL_INPUTS

    (inputs,) = [s for s in stages if s.name == INPUTS_STAGE]
    manifests = {f"{INPUTS_DIR}/{name}.json" for name in OPTIONAL_INPUTS}
    assert set(inputs.outs) == manifests
    assert shlex.split(inputs.cmd)[-2:] == ["--out", INPUTS_DIR]

    # A manifest is named after the stage script that reads it (stages/<name>.py): every
    # stage running that script depends on it (vqa@X and the VQA floors all run stages.vqa).
    def script(stage: StageSpec) -> str:
        return shlex.split(stage.cmd)[2].removeprefix("stages.")

    for name in OPTIONAL_INPUTS:
        runs = [s for s in stages if script(s) == name]
        assert runs, name
        for s in runs:
            assert f"{INPUTS_DIR}/{name}.json" in s.deps, (name, s.name)
    readers = {script(s) for s in stages if any(_within(d, INPUTS_DIR) for d in s.deps)}
    assert readers == set(OPTIONAL_INPUTS)
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    assert raw["stages"][INPUTS_STAGE].get("always_changed") is True


def test_the_mimic_profile_needs_no_dep_edit(tmp_path):
    """With configs/mimic-cxr.yaml applied (and the optional files set), the deps still hold:
    its backbone folder and the optional files reach their stages through the manifests."""
    from dvc.repo import Repo

    from lib.config.profile import apply_profile

    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    sets = ["qc.image_listing=/data/IMAGE_FILENAMES", "data.holdout_patients_from=/data/ms.csv"]
    apply_profile(tmp_path / "params.yaml", REPO / "configs/mimic-cxr.yaml", sets)
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    params = yaml.safe_load((tmp_path / "params.yaml").read_text(encoding="utf-8"))
    named = named_files(params)
    assert named == {"qc": [], "grounding": [], "resolve_config": []}
    problems = data_problems(repo_stages(tmp_path), exempt=[params["data"]["root"]], named=named)
    assert not problems, "\n".join(problems)


def backbone_folders(params: Mapping) -> list[str]:
    """The repository's ``local-dir:`` backbone folders that params name (``model.backbone``
    and each ``models.<X>.backbone``); absolute paths lie outside the repository."""
    specs = [params["model"]["backbone"]]
    specs += [(v or {}).get("backbone") for v in params["models"].values()]
    folders = {s.removeprefix("local-dir:") for s in specs if s and s.startswith("local-dir:")}
    return sorted(f for f in folders if not posixpath.isabs(f))


def test_backbone_folders_are_read_from_params():
    params = {
        "model": {"backbone": "local-dir:data/backbone/demo"},
        "models": {
            "A": None,
            "B": {"backbone": "local-dir:configs/backbones/x"},
            "C": {"backbone": "hf-hub:org/repo"},
            "D": {"backbone": "local-dir:/abs/folder"},
        },
    }
    assert backbone_folders(params) == ["configs/backbones/x", "data/backbone/demo"]


# ----------------------------------------------------------------------------- the checker


def _project(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


def test_checker_finds_py_deps_and_a_wrong_manifest(tmp_path):
    root = _project(tmp_path, {"stages/__init__.py": "", "stages/s.py": "", "stages/t.py": ""})
    good = StageSpec("s", "python -m stages.s --out o", ("data/code/s.json", "in"), ("o",))
    assert code_problems(good, root) == []
    bad = dataclasses.replace(good, deps=("stages/s.py", "data/code/t.json"))
    assert code_problems(bad, root) == [
        "s: code dep stages/s.py: depend on its manifest instead",
        "s: missing code dep data/code/s.json (the manifest of stages.s)",
        "s: another script's manifest data/code/t.json is a dep",
    ]
    lost = StageSpec("x", "python -m stages.gone --out o", ("data/code/gone.json",), ())
    assert code_problems(lost, root) == [f"x: its module stages.gone is not under {root}"]
    code = StageSpec(CODE_STAGE, "python -m stages.s --out data/code", ("lib",), ())
    assert code_problems(code, root) == [f"{CODE_STAGE}: missing dep on the folder stages"]


def test_checker_finds_an_init_with_code(tmp_path):
    root = _project(tmp_path, {"lib/__init__.py": '"""doc"""\n', "lib/pkg/__init__.py": ""})
    assert init_code(root) == []
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


# ------------------------------------------------------------- a variant is one entry


def _resolved_repo(root: Path, models: Mapping) -> None:
    """dvc.yaml beside params.yaml with ``models`` in place of its variants."""
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=True).close()
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    (root / "params.yaml").write_text(yaml.safe_dump({**raw, "models": dict(models)}))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def test_a_variant_added_as_one_models_entry_is_trained_evaluated_and_compared(tmp_path, params):
    """Issue 30: variant F, a copy of C under another name, is one entry under models: and
    nothing else; its stages are planned upstream of compare and declare their metrics and
    plots (no top-level list of variants in dvc.yaml)."""
    import networkx as nx
    from dvc.repo import Repo

    entry = {**params["models"]["C"], "description": "C under another name"}
    _resolved_repo(tmp_path, {**params["models"], "F": entry})
    with Repo(str(tmp_path)) as repo:
        graph = repo.index.graph
        by_name = {s.name: s for s in graph.nodes}
        upstream = {s.name for s in nx.descendants(graph, by_name["compare"])}
        assert {"train@F", "embed@F", "eval@F", "train@C"} <= upstream
        assert "models/F" in {o.def_path for o in by_name["train@F"].outs}
        assert "models" in {d.def_path for d in by_name["grounding"].deps}  # scores F too
        metrics = {o.def_path for s in graph.nodes for o in s.outs if o.metric}
        plots = {o.def_path for s in graph.nodes for o in s.outs if o.plot}
    assert {"metrics/headline/eval/F.json", "metrics/headline/eval/C.json"} <= metrics
    assert {"plots/eval/F/recall_at_k.csv", "plots/train/F/plots/metrics"} <= plots
    top = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    listed = yaml.safe_dump({k: top.get(k) for k in ("metrics", "plots")})
    for name in params["models"]:
        assert f"/{name}/" not in listed and f"/{name}." not in listed, name


def test_only_compare_reads_the_models_section():
    """A description lives in models:, so editing it reruns the stages that read that
    section whole: compare alone, which renders it. resolve_config and convirt_backbone read
    the variants' settings less descriptions that check_params writes (data/params/models.json,
    whose bytes a description edit leaves as they are); train@X, embed@X and eval@X read
    their config file, never models:."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        readers = {
            s.name
            for s in repo.index.stages
            for d in s.deps
            if isinstance(d, ParamsDependency) and "models" in (d.params or [])
        }
        settings = {
            s.name
            for s in repo.index.stages
            if "data/params/models.json" in {getattr(d, "def_path", "") for d in s.deps}
        }
    assert readers == {"compare"}
    assert settings == {"resolve_config", "convirt_backbone"}
