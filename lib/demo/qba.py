"""The demo's QA in MIMIC-Ext-CXR-QBA v1.0.0's layout (issue 29), from the corpus's own truth.

The corpus is drawn again from ``demo`` params (lib/demo/corpus.build_tables: ids, splits,
views, what each image draws, how strongly and where; ~3 s, nothing rendered), so patients,
studies, images and the official split are the master file's. Per study with a frontal image:

- questions (``questions_per_study`` of them, a seeded subset) of five types: is the study
  abnormal (binary), has-finding (binary; positives and negatives), which finding (category),
  where is it (region) and how severe (severity); quality grades mostly A, some B / C / D;
- a scene graph: one observation per finding the image draws, with region and box.

Truth: a finding is present when the image draws it at a positive's strength (severity ≥
0.6; hedged findings, drawn faintly, get no question); absent when it is not drawn at all.
Severity is the drawing strength in three bins. Boxes: the MS-CXR-format file's boxes
(lib/demo/boxes.py) where it has the image and finding (validate and test), else the coarse
anatomical box of the finding's region (as the real dataset's boxes are anatomical).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from lib.config.params import DemoParams, DemoQbaParams
from lib.data.mimic import FINDINGS
from lib.demo.corpus import build_tables
from lib.vqa import schema as S

FRONTAL = ("PA", "AP")
PRESENT = 0.6  # severities() draws positives in [0.6, 1], hedged ones in [0.15, 0.4]
SEVERITY_BINS = ((0.73, "mild"), (0.87, "moderate"), (1.01, "severe"))
# A report place (lib/demo/synth_reports.LOCATIONS) -> region name.
PLACE_REGION = {
    "left upper": "left upper lung zone",
    "left lower": "left lower lung zone",
    "right upper": "right upper lung zone",
    "right middle": "right mid lung zone",
    "right lower": "right lower lung zone",
    "both lower": "bilateral lower lung zones",
}
# Region of a finding the report does not place.
DEFAULT_REGION = {
    "Cardiomegaly": "cardiac silhouette",
    "Enlarged Cardiomediastinum": "mediastinum",
    "Edema": "bilateral lungs",
    "Fracture": "bones",
    "Support Devices": "mediastinum",
}
FALLBACK_REGION = "bilateral lungs"
# Coarse anatomical boxes, fractions of the image (x1, y1, x2, y2); the patient's right is the
# image's left on a frontal film.
REGION_BOXES: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "right upper lung zone": ((0.12, 0.15, 0.48, 0.40),),
    "right mid lung zone": ((0.12, 0.35, 0.48, 0.60),),
    "right lower lung zone": ((0.12, 0.55, 0.48, 0.85),),
    "left upper lung zone": ((0.52, 0.15, 0.88, 0.40),),
    "left lower lung zone": ((0.52, 0.55, 0.88, 0.85),),
    "bilateral lower lung zones": ((0.12, 0.55, 0.48, 0.85), (0.52, 0.55, 0.88, 0.85)),
    "bilateral lungs": ((0.10, 0.12, 0.90, 0.85),),
    "cardiac silhouette": ((0.35, 0.45, 0.75, 0.80),),
    "mediastinum": ((0.38, 0.10, 0.62, 0.60),),
    "bones": ((0.05, 0.05, 0.95, 0.95),),
}
TYPES = {
    "abnormal": "D01_is_abnormal",
    "has": "D02_has_finding",
    "where": "D03_where_is_finding",
    "severity": "D05_how_severe",
    "which": "D06_which_finding",
}


def entity(label: str) -> str:
    return label.lower()


def severity_name(value: float) -> str:
    return next(name for top, name in SEVERITY_BINS if value < top)


def _answer(text: str, **tags: Any) -> dict[str, Any]:
    a = {
        "answer_type": "main_answer",
        "answer_level": "main",
        "text": text,
        "name_tag": tags.pop("name_tag", None),
        "regions": tags.pop("regions", []),
        "obs_entities": tags.pop("obs_entities", []),
        "categories": tags.pop("categories", []),
        "certainty": "certain",
        "positiveness": tags.pop("positiveness", None),
        "modifiers": tags.pop("modifiers", {}),
        "sub_answers": [],
        "localization": tags.pop("localization", {}),
    }
    return a


def _loc(dicom: str, boxes: list[list[float]], quality: int) -> dict[str, Any]:
    return {
        dicom: {
            "bboxes": boxes,
            "instance_mask_ids": [],
            "is_fallback": quality < 3,
            "localization_quality": quality,
        }
    }


def read_grounding(path: Path | None) -> dict[tuple[str, str], list[list[float]]]:
    """(dicom_id, label) -> pixel boxes [x1, y1, x2, y2] of the MS-CXR-format file."""
    out: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return out
    for r in pd.read_csv(path).itertuples(index=False):
        out[(r.dicom_id, r.category_name)].append(
            [float(r.x), float(r.y), float(r.x + r.w), float(r.y + r.h)]
        )
    return out


def study_qa(
    study: dict[str, Any], grounding: dict[tuple[str, str], list[list[float]]], rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(all candidate questions, scene observations) of one study."""
    dicom, w, h = study["dicom_id"], study["width"], study["height"]
    sev = study["severity"]
    present = sorted((lb for lb, v in sev.items() if v >= PRESENT), key=lambda lb: -sev[lb])
    absent = [lb for lb in FINDINGS if lb not in sev]
    facts = {}
    for lb in present:
        region = PLACE_REGION.get(
            study["places"].get(lb, ""), DEFAULT_REGION.get(lb, FALLBACK_REGION)
        )
        boxes = grounding.get((dicom, lb))
        quality = 4 if boxes else 2
        if not boxes:
            boxes = [[x1 * w, y1 * h, x2 * w, y2 * h] for x1, y1, x2, y2 in REGION_BOXES[region]]
        facts[lb] = (region, [[round(v, 1) for v in b] for b in boxes], quality)

    qs: list[dict[str, Any]] = []

    def add(kind: str, question: str, answer: dict[str, Any], obs: list[str]) -> None:
        n = sum(q["question_type"] == TYPES[kind] for q in qs) + 1
        qs.append(
            {
                "question_id": f"{TYPES[kind]}_{n:03d}",
                "question_type": TYPES[kind],
                "question_strategy": "demo_truth",
                "variables": {k: v for k, v in answer.items() if k == "obs_entities"},
                "obs_ids": obs,
                "question": question,
                "answers": [answer],
            }
        )

    abnormal = [lb for lb in present if lb != "Support Devices"]
    add(
        "abnormal",
        "Is the chest X-ray abnormal?",
        _answer(
            "Yes, the chest X-ray is abnormal." if abnormal else "No, the chest X-ray is normal.",
            positiveness="pos" if abnormal else "neg",
            obs_entities=["abnormality"],
        ),
        [f"O{i:02d}" for i, _ in enumerate(abnormal)],
    )
    for i, lb in enumerate(present):
        region, boxes, quality = facts[lb]
        e = entity(lb)
        loc = _loc(dicom, boxes, quality)
        tags = {"obs_entities": [e], "regions": [region], "localization": loc}
        add(
            "has",
            f"Is there {e}?",
            _answer(f"Yes, there is {e}.", positiveness="pos", **tags),
            [f"O{i:02d}"],
        )
        add(
            "where",
            f"Where is the {e}?",
            _answer(f"The {e} is in the {region}.", positiveness="pos", **tags),
            [f"O{i:02d}"],
        )
        s = severity_name(sev[lb])
        add(
            "severity",
            f"How severe is the {e}?",
            _answer(f"The {e} is {s}.", positiveness="pos", modifiers={"severity": s}, **tags),
            [f"O{i:02d}"],
        )
    for lb in rng.sample(absent, min(len(absent), max(1, len(present)))):
        e = entity(lb)
        add(
            "has",
            f"Is there {e}?",
            _answer(f"No, there is no {e}.", positiveness="neg", obs_entities=[e]),
            [],
        )
    if present:
        lb = present[0]
        region, boxes, quality = facts[lb]
        e = entity(lb)
        add(
            "which",
            "What is the most prominent finding?",
            _answer(
                f"The most prominent finding is {e}.",
                positiveness="pos",
                obs_entities=[e],
                regions=[region],
                localization=_loc(dicom, boxes, quality),
            ),
            ["O00"],
        )
    observations = [
        {
            "obs_id": f"O{i:02d}",
            "name": entity(lb),
            "obs_entities": [entity(lb)],
            "regions": [facts[lb][0]],
            "positiveness": "pos",
            "localization": _loc(dicom, facts[lb][1], facts[lb][2]),
        }
        for i, lb in enumerate(present)
    ]
    return qs, observations


def _grade(rng: random.Random, p: DemoQbaParams) -> str:
    u = rng.random()
    if u < p.fraction_d:
        return "D"
    if u < p.fraction_d + p.fraction_c:
        return "C"
    if u < p.fraction_d + p.fraction_c + p.fraction_b:
        return "B"
    return "A"


def write_qba(
    demo: DemoParams, params: DemoQbaParams, out: Path, grounding: Path | None
) -> dict[str, Any]:
    """Write qa/, scene_data/ and metadata/image_metadata.csv under ``out``; a summary."""
    tables = build_tables(demo)
    split = tables["split"].set_index("dicom_id")["split"]
    boxes = read_grounding(grounding)
    studies: dict[int, dict[str, Any]] = {}
    meta_rows = []
    for task, row in zip(tables["tasks"], tables["metadata"].itertuples(index=False), strict=True):
        meta_rows.append(
            {
                "dicom_id": row.dicom_id,
                "subject_id": row.subject_id,
                "study_id": row.study_id,
                "split": split[row.dicom_id],
                "view": row.ViewPosition or "",
                "width": task.width,
                "height": task.height,
            }
        )
        if task.view in FRONTAL and row.study_id not in studies:
            studies[row.study_id] = {
                "subject_id": int(row.subject_id),
                "dicom_id": row.dicom_id,
                "width": task.width,
                "height": task.height,
                "severity": dict(task.severity),
                "places": dict(task.places),
            }
    rng = random.Random(params.seed)
    n_q = n_obs = 0
    types: dict[str, int] = defaultdict(int)
    for study_id in sorted(studies):
        st = studies[study_id]
        qs, obs = study_qa(st, boxes, rng)
        if len(qs) > params.questions_per_study:
            qs = sorted(rng.sample(qs, params.questions_per_study), key=lambda q: q["question_id"])
        for q in qs:
            q["quality"] = {"grade": _grade(rng, params)}
            types[q["question_type"]] += 1
        head = {"patient_id": f"p{st['subject_id']}", "study_id": f"s{study_id}"}
        for folder, suffix, doc in (
            (S.QA_DIR, S.QA_SUFFIX, {**head, "questions": qs}),
            (S.SCENE_DIR, S.SCENE_SUFFIX, {**head, "observations": obs}),
        ):
            path = out / folder / S.study_relpath(st["subject_id"], study_id, suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        n_q += len(qs)
        n_obs += len(obs)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(meta_rows, columns=list(S.IMAGE_METADATA_COLUMNS)).to_csv(
        out / S.IMAGE_METADATA, index=False
    )
    return {
        "studies": len(studies),
        "questions": n_q,
        "observations": n_obs,
        "images": len(meta_rows),
        "question_types": dict(sorted(types.items())),
        "questions_per_study": params.questions_per_study,
    }
