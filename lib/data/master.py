"""The master file (stage qc's output) read into one ``Split`` of arrays per split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.data.mimic import LABELS
from lib.data.splits import SPLITS
from lib.errors import DataError


@dataclass(frozen=True)
class Split:
    """The rows of one split of the master file, as arrays aligned by index."""

    images: list[str]  # paths relative to the data root
    study: np.ndarray  # (N,) int64
    subject: np.ndarray  # (N,) int64
    texts: list[str]  # (N,) report text of each image's study
    labels: np.ndarray  # (N, 14) int8, 1 / 0 / -1 (ignore)
    dicom: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> Split:
        """The rows ``idx`` (an index array), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            images=[self.images[i] for i in idx],
            study=self.study[idx],
            subject=self.subject[idx],
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            dicom=[self.dicom[i] for i in idx],
        )


def read_master(path: str | Path) -> dict[str, Split]:
    """The master JSONL file, split by ``split`` (``SPLITS``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: master file not found; run `dvc repro qc` first")
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            rows[rec["split"]].append(rec)
    return {
        name: Split(
            images=[r["image"] for r in recs],
            study=np.array([r["study_id"] for r in recs], dtype=np.int64),
            subject=np.array([r["subject_id"] for r in recs], dtype=np.int64),
            texts=[r["text"] for r in recs],
            labels=np.array(
                [[r["labels"][lb] for lb in LABELS] for r in recs], dtype=np.int8
            ).reshape(len(recs), len(LABELS)),
            dicom=[r["dicom_id"] for r in recs],
        )
        for name, recs in rows.items()
    }


def first_per_study(study: np.ndarray) -> list[int]:
    """The row of each study's first image, in order of first appearance (one report per
    study: the images of a study share it)."""
    first: dict[int, int] = {}
    for i, s in enumerate(study.tolist()):
        first.setdefault(s, i)
    return list(first.values())
