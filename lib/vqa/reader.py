"""Reading a MIMIC-Ext-CXR-QBA-format directory (qa/ or qa.zip, scene_data/ or
scene_data.zip, metadata/image_metadata.csv) into flat records, every dropped question
counted by reason; above ``max_malformed_fraction`` an error names the first bad file."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lib.errors import DataError
from lib.vqa import schema as S


@dataclass
class QbaData:
    """What the reader found: questions (one dict per question, tags raw), scene
    observations, the image metadata, and the counts of what was dropped and why."""

    questions: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    images: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: int = 0
    scene_files: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    first_bad: dict[str, str] = field(default_factory=dict)
    qa_source: str = ""


def check_layout(root: Path) -> list[str]:
    """Missing parts of the layout (empty = all there): the folder, qa source, metadata."""
    if not root.is_dir():
        return [f"{root}: the QBA directory does not exist"]
    missing = []
    if not (root / S.QA_DIR).is_dir() and not (root / S.QA_ZIP).is_file():
        missing.append(f"{root}: neither {S.QA_DIR}/ nor {S.QA_ZIP}")
    if not (root / S.IMAGE_METADATA).is_file():
        missing.append(f"{root}: no {S.IMAGE_METADATA}")
    return missing


def _json_files(root: Path, folder: str, zipname: str, suffix: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every ``*<suffix>`` in ``root/folder`` or ``root/zipname``, sorted."""
    if (root / folder).is_dir():
        for p in sorted((root / folder).rglob(f"*{suffix}")):
            yield str(p.relative_to(root)), p.read_bytes()
    elif (root / zipname).is_file():
        with zipfile.ZipFile(root / zipname) as z:
            for name in sorted(n for n in z.namelist() if n.endswith(suffix)):
                yield f"{zipname}:{name}", z.read(name)


def read_images(root: Path) -> pd.DataFrame:
    """metadata/image_metadata.csv, its columns checked."""
    path = root / S.IMAGE_METADATA
    df = pd.read_csv(path, dtype={"dicom_id": str, "split": str, "view": str})
    missing = [c for c in S.IMAGE_METADATA_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; it needs {S.IMAGE_METADATA_COLUMNS}")
    return df


def read_qba(root: Path, max_malformed_fraction: float) -> QbaData:
    """Read every question and scene graph under ``root`` (docs/vqa.md).

    A question lacking a field we read, with empty answers, without a main answer, or
    localised on an image id the metadata does not list is dropped and counted by reason; a
    file that is not JSON counts one ``bad_json``. Raises DataError naming the first bad
    file when the malformed share of questions exceeds ``max_malformed_fraction``.
    """
    root = Path(root)
    missing = check_layout(root)
    if missing:
        raise DataError("; ".join(missing) + "; point data.vqa at a MIMIC-Ext-CXR-QBA copy")
    out = QbaData(images=read_images(root))
    out.qa_source = S.QA_DIR if (root / S.QA_DIR).is_dir() else S.QA_ZIP
    known = set(out.images["dicom_id"])
    seen = 0

    def bad(reason: str, name: str) -> None:
        out.malformed[reason] += 1
        out.first_bad.setdefault(reason, name)

    for name, raw in _json_files(root, S.QA_DIR, S.QA_ZIP, S.QA_SUFFIX):
        out.files += 1
        try:
            doc = json.loads(raw)
            study_id = int(str(doc["study_id"]).lstrip("s"))
            subject_id = int(str(doc["patient_id"]).lstrip("p"))
            questions = doc["questions"]
            if not isinstance(questions, list):
                raise TypeError("questions is not a list")
        except (ValueError, KeyError, TypeError):
            seen += 1
            bad("bad_json", name)
            continue
        for q in questions:
            seen += 1
            try:
                S.check_question(q)
                answer = S.main_answer(q)
                grade = S.grade_of(q)
                loc = answer.get("localization") or {}
                unknown = [i for i in loc if i not in known]
                if unknown:
                    raise S.SchemaError("unknown_image_id", f"image ids {unknown[:2]}")
            except S.SchemaError as e:
                bad(e.reason, name)
                continue
            out.questions.append(
                {
                    "file": name,
                    "question_id": str(q["question_id"]),
                    "question_type": str(q["question_type"]),
                    "question": str(q["question"]),
                    "grade": grade,
                    "study_id": study_id,
                    "subject_id": subject_id,
                    "answer_text": answer["text"].strip(),
                    "positive": S.binary_of(answer),
                    "entity": S.first_tag(answer, "obs_entities"),
                    "region": S.first_tag(answer, "regions"),
                    "severity": S.severity_of(answer),
                    "localization": {
                        i: [list(map(float, b)) for b in (v or {}).get("bboxes", [])]
                        for i, v in loc.items()
                    },
                }
            )
    n_bad = sum(out.malformed.values())
    if seen and n_bad / seen > max_malformed_fraction:
        worst = out.malformed.most_common(1)[0][0]
        raise DataError(
            f"{root / out.first_bad[worst]}: {n_bad} of {seen} questions are malformed "
            f"({dict(out.malformed)}), above vqa_data.max_malformed_fraction = "
            f"{max_malformed_fraction}; first {worst!r} in this file (docs/vqa.md lists the "
            f"fields we read)"
        )
    for name, raw in _json_files(root, S.SCENE_DIR, S.SCENE_ZIP, S.SCENE_SUFFIX):
        out.scene_files += 1
        try:
            doc = json.loads(raw)
            study_id = int(str(doc["study_id"]).lstrip("s"))
            for obs in doc["observations"]:
                boxes = [b for v in (obs.get("localization") or {}).values() for b in v["bboxes"]]
                out.observations.append(
                    {
                        "study_id": study_id,
                        "entity": S.first_tag(obs, "obs_entities"),
                        "region": S.first_tag(obs, "regions"),
                        "positive": S.binary_of(obs),
                        "image_id": next(iter(obs.get("localization") or {}), None),
                        "box": boxes[0] if boxes else None,
                    }
                )
        except (ValueError, KeyError, TypeError):
            out.malformed["bad_scene_graph"] += 1
            out.first_bad.setdefault("bad_scene_graph", name)
    return out
