"""The fields of MIMIC-Ext-CXR-QBA v1.0.0 we read (docs/vqa.md): our own subset of its schema.

A ``*.qa.json`` holds ``questions[]``; each question has ``question_id``, ``question_type``
(``D02_has_finding`` or, as the project page's example writes it, ``has_finding``),
``question``, a quality grade and ``answers[]``; the ``main_answer`` carries the tags the
heads train on (``positiveness``, ``obs_entities``, ``regions``, ``modifiers``) and
``localization[image_id].bboxes`` in pixels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

QA_DIR, QA_ZIP = "qa", "qa.zip"
SCENE_DIR, SCENE_ZIP = "scene_data", "scene_data.zip"
IMAGE_METADATA = "metadata/image_metadata.csv"
IMAGE_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "split", "view", "width", "height")
QA_SUFFIX, SCENE_SUFFIX = ".qa.json", ".scene_graph.json"

GRADES = ("D", "C", "B", "A", "A+", "A++")  # worst to best
HEADS = ("binary", "category", "region", "severity")
SEVERITY_ORDER = ("minimal", "mild", "moderate", "severe")
MAIN_ANSWER = "main_answer"
QUESTION_FIELDS = ("question_id", "question_type", "question", "answers")
POSITIVENESS = {"pos": 1, "positive": 1, "neg": 0, "negative": 0}

# "D02_has_finding" -> ("D02", "has_finding"); "A_indication" -> ("A", "indication").
_PREFIX = re.compile(r"^([A-Z]\d{0,2})_(.+)$")


class SchemaError(ValueError):
    """One question or file lacks a field we read; ``reason`` is the count's key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def type_name(question_type: str) -> str:
    """The question type without its prefix: ``D02_has_finding`` -> ``has_finding``."""
    m = _PREFIX.match(question_type)
    return m.group(2) if m else question_type


def head_of_types(types_by_head: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, str]]:
    """Type name (no prefix) -> (head, canonical identifier) from the params' type lists."""
    out: dict[str, tuple[str, str]] = {}
    for head, types in types_by_head.items():
        for t in types:
            out[type_name(t)] = (head, t)
    return out


def grade_of(question: Mapping[str, Any]) -> str:
    """The question's quality grade: ``quality.grade`` (or ``grade``)."""
    quality = question.get("quality")
    grade = quality.get("grade") if isinstance(quality, Mapping) else question.get("grade")
    if grade not in GRADES:
        raise SchemaError("missing_grade", f"grade {grade!r} is not one of {list(GRADES)}")
    return str(grade)


def main_answer(question: Mapping[str, Any]) -> Mapping[str, Any]:
    """The question's ``main_answer`` (the first, if several)."""
    answers = question.get("answers")
    if not isinstance(answers, list) or not answers:
        raise SchemaError("empty_answers", "answers[] is missing or empty")
    for a in answers:
        if isinstance(a, Mapping) and a.get("answer_type") == MAIN_ANSWER:
            if not isinstance(a.get("text"), str) or not a["text"].strip():
                raise SchemaError("empty_answers", "the main answer has no text")
            return a
    raise SchemaError("no_main_answer", "no answer has answer_type main_answer")


def check_question(question: Any) -> None:
    """Raise SchemaError unless the question has every field we read."""
    if not isinstance(question, Mapping):
        raise SchemaError("missing_field", "a question is not an object")
    missing = [f for f in QUESTION_FIELDS if f not in question]
    if missing:
        raise SchemaError("missing_field", f"question lacks {missing}")


def severity_of(answer: Mapping[str, Any]) -> str | None:
    """The severity modifier: ``modifiers.severity`` or the first modifier naming one."""
    mods = answer.get("modifiers")
    if isinstance(mods, Mapping):
        sev = mods.get("severity")
        return str(sev) if sev else None
    if isinstance(mods, list):
        for m in mods:
            if isinstance(m, str) and m.lower() in SEVERITY_ORDER:
                return m.lower()
    return None


def first_tag(answer: Mapping[str, Any], key: str) -> str | None:
    """The first string of tag list ``key`` (``obs_entities``, ``regions``), or None."""
    values = answer.get(key)
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None


def binary_of(answer: Mapping[str, Any]) -> int | None:
    """1 / 0 from ``positiveness`` (pos / neg), None where absent or uncertain."""
    return POSITIVENESS.get(str(answer.get("positiveness", "")).lower())


def study_relpath(subject_id: int, study_id: int, suffix: str) -> str:
    """``pXX/pXXXXXXXX/sXXXXXXXX<suffix>``."""
    return f"p{str(subject_id)[:2]}/p{subject_id}/s{study_id}{suffix}"
