"""The demo backbone's pretraining corpus: a synthetic corpus of its own, drawn in memory.

Its patients are disjoint from the demo corpus by construction (subject and study ids from
ranges MIMIC-CXR does not use), and its size and draw are ``pretrain.n_patients`` and
``pretrain.seed``; lib/runs/pretrain.py CLIP-trains the demo backbone on it.

Images go through the same path as the demo corpus's: rendered at ``demo.image_size``,
JPEG-encoded at the demo's quality, decoded and resized by ``lib.data.images.load_image``
at ``data.image_size``; texts are the ``data.sections`` of each report, as the master file's.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing as mp
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.config.params import Params
from lib.data.images import load_image
from lib.data.labels import IGNORE, apply_policy
from lib.data.master import Split
from lib.data.mimic import LABELS, report_relpath
from lib.data.reports import parse_report
from lib.demo.captions import write_caption
from lib.demo.corpus import ImageTask, build_tables, render_task
from lib.errors import DataError

# Ids of the pretraining corpus: outside MIMIC-CXR's (subject 1xxxxxxx, study 5xxxxxxx), so
# no patient of the demo corpus, nor of MIMIC itself, can be drawn.
PRETRAIN_SUBJECTS = (20_000_000, 30_000_000)
PRETRAIN_STUDIES = (60_000_000, 70_000_000)


@dataclass(frozen=True)
class PretrainCorpus:
    pixels: np.ndarray  # (N, S, S) uint8, frontal images only
    split: Split  # texts, CheXpert labels (for validation only), study and subject ids
    dropped: dict[str, int]  # images left out, by reason


def _decode(job: tuple[ImageTask, int]) -> np.ndarray:
    task, size = job
    return load_image(io.BytesIO(render_task(task)), size)


def build_corpus(params: Params, workers: int) -> PretrainCorpus:
    """The pretraining corpus in memory: frontal images (``data.views``) with their report
    text (``data.sections``); reports shorter than ``data.min_report_chars`` are dropped,
    as QC drops them, and counted. ``pretrain.caption_fraction`` of the kept images get a
    figure caption written from their study's labels instead (lib/demo/captions.py)."""
    pre, data = params.pretrain, params.data
    demo = dataclasses.replace(params.demo, seed=pre.seed, n_patients=pre.n_patients)
    tables = build_tables(demo, PRETRAIN_SUBJECTS, PRETRAIN_STUDIES)
    meta = tables["metadata"].set_index("dicom_id")
    raw_labels = tables["chexpert"].set_index("study_id")[list(LABELS)]
    labels = apply_policy(raw_labels, data.label_policy)
    # Which images get a caption instead of their report: one seeded draw per image, in the
    # corpus's order, from a stream of its own (the corpus itself is the same either way).
    captions = random.Random(f"captions-{pre.seed}")
    dropped = {"not_frontal": 0, "short_report": 0}
    jobs, texts, rows, study, subject = [], [], [], [], []
    for task in tables["tasks"]:
        dicom = Path(task.relpath).stem
        sid, st = int(meta.at[dicom, "subject_id"]), int(meta.at[dicom, "study_id"])
        if meta.at[dicom, "ViewPosition"] not in data.views:
            dropped["not_frontal"] += 1
            continue
        report = tables["reports"][report_relpath(sid, st)]
        text, _ = parse_report(report).text(data.sections)
        if len(text) < data.min_report_chars:
            dropped["short_report"] += 1
            continue
        if captions.random() < pre.caption_fraction:
            states = raw_labels.loc[st].to_dict() if st in raw_labels.index else {}
            text = write_caption(states, captions)
        jobs.append((task, data.image_size))
        texts.append(text)
        # A study left out of the CheXpert file has unknown labels: ignored by the metrics.
        known = st in labels.index
        rows.append(labels.loc[st].to_numpy() if known else np.full(len(LABELS), IGNORE))
        study.append(st)
        subject.append(sid)
    if not jobs:
        raise DataError(
            f"pretrain: no frontal image with a report of >= {data.min_report_chars} "
            f"characters among {pre.n_patients} patients; raise pretrain.n_patients"
        )
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            pixels = pool.map(_decode, jobs, chunksize=32)
    else:
        pixels = [_decode(j) for j in jobs]
    names = [Path(t.relpath).stem for t, _ in jobs]
    split = Split(
        images=[t.relpath for t, _ in jobs],
        study=np.array(study, dtype=np.int64),
        subject=np.array(subject, dtype=np.int64),
        texts=texts,
        labels=np.stack(rows).astype(np.int8),
        dicom=names,
    )
    return PretrainCorpus(np.stack(pixels), split, dropped)


def check_disjoint(corpus: Split, others: dict[str, Split], source: str) -> int:
    """Fail if any pretraining patient appears in ``others`` (the demo's master file);
    return the number of patients shared (0 whenever it returns)."""
    seen = set(corpus.subject.tolist())
    shared_total = 0
    for name, split in others.items():
        shared = seen & set(split.subject.tolist())
        shared_total += len(shared)
        if shared:
            raise DataError(
                f"{source}: {len(shared)} subject_id(s) of the {name} split, e.g. "
                f"{min(shared)}, are also in the pretraining corpus, whose ids lie in "
                f"{PRETRAIN_SUBJECTS}; the pretraining patients must be disjoint: keep the "
                f"demo corpus (or the real data) to subject ids outside that range"
            )
    return shared_total
