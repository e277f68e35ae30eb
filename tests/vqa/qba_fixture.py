"""A hand-made MIMIC-Ext-CXR-QBA-format folder and its master file, for the reader and
readiness tests (and the pipeline's second-directory test): a few studies, written as the
tests need them, in qa/ or qa.zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd

from lib.vqa import schema as S

W, H = 200, 240


def answer(text: str, **tags: Any) -> dict[str, Any]:
    return {
        "answer_type": "main_answer",
        "text": text,
        "regions": tags.get("regions", []),
        "obs_entities": tags.get("obs_entities", []),
        "positiveness": tags.get("positiveness"),
        "modifiers": tags.get("modifiers", {}),
        "localization": tags.get("localization", {}),
    }


def question(qid: str, qtype: str, text: str, ans: dict[str, Any], grade: str = "A") -> dict:
    return {
        "question_id": qid,
        "question_type": qtype,
        "question": text,
        "quality": {"grade": grade},
        "answers": [ans],
    }


def study_questions(dicom: str, finding: str, region: str, yes: bool) -> list[dict[str, Any]]:
    """Five questions of one study: is-abnormal, has-finding, where, how severe, which."""
    box = {dicom: {"bboxes": [[20.0, 30.0, 90.0, 120.0]]}}
    tags = {"obs_entities": [finding], "regions": [region], "localization": box}
    return [
        question(
            "q1",
            "D01_is_abnormal",
            "Is the chest X-ray abnormal?",
            answer(
                "Yes, the chest X-ray is abnormal." if yes else "No, the chest X-ray is normal.",
                positiveness="pos" if yes else "neg",
            ),
        ),
        question(
            "q2",
            # the project page's example writes the type without its prefix
            "has_finding",
            f"Is there {finding}?",
            answer(
                f"Yes, there is {finding}." if yes else f"No, there is no {finding}.",
                positiveness="pos" if yes else "neg",
                **(tags if yes else {"obs_entities": [finding]}),
            ),
        ),
        question(
            "q3",
            "D03_where_is_finding",
            f"Where is the {finding}?",
            answer(f"The {finding} is in the {region}.", positiveness="pos", **tags),
        ),
        question(
            "q4",
            "D05_how_severe",
            f"How severe is the {finding}?",
            answer(f"The {finding} is mild.", modifiers={"severity": "mild"}, **tags),
        ),
        question(
            "q5",
            "D06_which_finding",
            "What is the most prominent finding?",
            answer(f"The most prominent finding is {finding}.", **tags),
        ),
    ]


def write_study(
    root: Path,
    subject: int,
    study: int,
    questions: list[dict[str, Any]],
    observations: list[dict[str, Any]] | None = None,
    raw: str | None = None,
) -> Path:
    """qa/ (and scene_data/) files of one study; ``raw`` writes those bytes instead."""
    path = root / S.QA_DIR / S.study_relpath(subject, study, S.QA_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"patient_id": f"p{subject}", "study_id": f"s{study}", "questions": questions}
    path.write_text(raw if raw is not None else json.dumps(doc), encoding="utf-8")
    if observations is not None:
        scene = root / S.SCENE_DIR / S.study_relpath(subject, study, S.SCENE_SUFFIX)
        scene.parent.mkdir(parents=True, exist_ok=True)
        scene.write_text(
            json.dumps({"study_id": f"s{study}", "observations": observations}), encoding="utf-8"
        )
    return path


def observation(dicom: str, finding: str, region: str) -> dict[str, Any]:
    return {
        "obs_entities": [finding],
        "regions": [region],
        "positiveness": "pos",
        "localization": {dicom: {"bboxes": [[20.0, 30.0, 90.0, 120.0]]}},
    }


def write_metadata(root: Path, rows: list[tuple[str, int, int, str]]) -> None:
    """metadata/image_metadata.csv of (dicom_id, subject_id, study_id, split), frontal PA."""
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        [
            {"dicom_id": d, "subject_id": p, "study_id": s, "split": sp, "view": "PA"}
            | {"width": W, "height": H}
            for d, p, s, sp in rows
        ],
        columns=list(S.IMAGE_METADATA_COLUMNS),
    ).to_csv(root / S.IMAGE_METADATA, index=False)


def master_frame(rows: list[tuple[str, int, int, str]]) -> pd.DataFrame:
    """The master file's columns that readiness reads, for the same images."""
    return pd.DataFrame(
        [
            {"dicom_id": d, "subject_id": p, "study_id": s, "split": sp, "view": "PA"}
            for d, p, s, sp in rows
        ]
    )


FINDINGS = (
    ("pleural effusion", "left lower lung zone"),
    ("cardiomegaly", "cardiac silhouette"),
    ("atelectasis", "right lower lung zone"),
    ("pneumothorax", "left upper lung zone"),
)


def make_qba(root: Path, n_studies: int = 24, split_of=None) -> list[tuple[str, int, int, str]]:
    """A well-formed folder of ``n_studies`` studies (train, val and test), five questions
    each, findings and polarity alternating; the image rows it wrote."""
    rows = []
    for i in range(n_studies):
        subject, study, dicom = 10000000 + i, 50000000 + i, f"img{i:03d}"
        split = split_of(i) if split_of else ("train", "train", "val", "test")[i % 4]
        finding, region = FINDINGS[i % len(FINDINGS)]
        qs = study_questions(dicom, finding, region, yes=i % 2 == 0)
        write_study(root, subject, study, qs, [observation(dicom, finding, region)])
        rows.append((dicom, subject, study, split))
    write_metadata(root, rows)
    return rows


def zip_qa(root: Path) -> None:
    """Move qa/ into qa.zip (the dataset ships it zipped)."""
    with zipfile.ZipFile(root / S.QA_ZIP, "w") as z:
        for p in sorted((root / S.QA_DIR).rglob("*.json")):
            z.write(p, str(p.relative_to(root / S.QA_DIR)))
    for p in sorted((root / S.QA_DIR).rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / S.QA_DIR).rmdir()
