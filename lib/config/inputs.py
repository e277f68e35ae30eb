"""The input files that params name and no stage writes (an image listing, a hold-out file,
a backbone folder of one's own), as one small manifest per stage that reads them.

DVC cannot depend on a file that a params key may or may not name, so stage ``inputs``
(``always_changed``) writes ``data/inputs/<stage>.json``: each key's path and the digest of
its content, or null when the key is unset; the stage depends on that manifest instead of
the files. DVC reruns it only when the manifest's bytes change: a key set, unset, pointed
elsewhere, or its file edited. The demo's own folders (``DEMO_BACKBONE``,
``CONVIRT_DEMO_BACKBONE``) are stage outputs, which ``resolve_config`` depends on directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib.config.params import CONVIRT_DEMO_BACKBONE, DEMO_BACKBONE, Params
from lib.errors import DataError
from lib.io import tree_digest

LOCAL_DIR = "local-dir:"
# Stage script (stages/<name>.py) -> the params keys naming the files it reads
# ("backbones": every local-dir backbone folder that params name, the demo's own left out).
# tests/test_dvc_deps.py holds dvc.yaml to it.
OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {
    "qc": ("qc.image_listing", "data.holdout_patients_from"),
    "grounding": ("data.holdout_patients_from",),
    "resolve_config": ("backbones",),
    # A MIMIC-Ext-CXR-QBA-format folder of one's own (the demo's is demo_qba's output).
    "vqa_readiness": ("data.vqa",),
    # BERTScore's text tower, a folder of one's own (the demo backbone's is a stage output).
    "vqa": ("vqa.bertscore_model",),
}
# The demo's QBA-format folder (stage demo_qba), which vqa_readiness depends on directly.
DEMO_QBA = "data/demo/mimic-ext-cxr-qba"
# Folders that stages write, which the stages reading them depend on directly.
_STAGE_OUTPUTS = (Path(DEMO_QBA), Path(DEMO_BACKBONE.removeprefix(LOCAL_DIR)))


def named_paths(params: Params, stage: str) -> dict[str, str | None]:
    """Params key -> the path it names (None when unset), for the keys of ``stage``."""
    out: dict[str, str | None] = {}
    for key in OPTIONAL_INPUTS[stage]:
        if key == "backbones":
            out.update(backbone_folders(params))
        else:
            section, name = key.split(".")
            out[key] = getattr(getattr(params, section), name)
            if out[key] is not None and Path(out[key]) in _STAGE_OUTPUTS:
                out[key] = None
    return out


def backbone_folders(params: Params) -> dict[str, str]:
    """``model.backbone`` and each ``models.<X>.backbone`` that name a local-dir folder other
    than the demo's two (which stages write), as key -> folder."""
    specs = {"model.backbone": params.model.backbone}
    for name, override in params.models.items():
        spec = (override or {}).get("backbone")
        if spec:
            specs[f"models.{name}.backbone"] = spec
    return {
        key: spec.removeprefix(LOCAL_DIR)
        for key, spec in specs.items()
        if spec.startswith(LOCAL_DIR) and spec not in (DEMO_BACKBONE, CONVIRT_DEMO_BACKBONE)
    }


def input_manifest(params: Params, stage: str, source: str = "params.yaml") -> dict[str, Any]:
    """Key -> {path, digest} of each file or folder ``stage`` reads, or None where unset."""
    manifest: dict[str, Any] = {}
    for key, path in named_paths(params, stage).items():
        if path is None:
            manifest[key] = None
            continue
        if not Path(path).exists():
            raise DataError(
                f"{source}: {key} = {path!r} does not exist; point it at the file (or "
                f"folder), or set it to null"
            )
        manifest[key] = {"path": path, "digest": tree_digest(path)}
    return manifest
