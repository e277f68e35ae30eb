"""The triplets checked against the CheXpert labels of the same studies.

A study's label L is predicted present when some triplet of an entity that maps to L
(``Entity.chexpert``) has existence 1 after the label policy; unmentioned counts as absent,
as a blank CheXpert cell does. Rows whose label is -1 (ignored under ``u_ignore``) are left
out. "No Finding" is predicted when no entity of the twelve pathology labels is present or
uncertain (support devices may accompany it, as in CheXpert's labeler, whose No Finding
also excludes uncertain findings), and is reported beside the micro mean
over the other thirteen, not in it: it is a rule about the rest, not a mention.

On the demo the CheXpert file is the report writer's own truth, so these are the
extraction's precision and recall against the writer; on MIMIC-CXR they are its agreement
with the CheXpert labeler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lib.data.mimic import LABELS
from lib.data.triplet_vocab import ENTITY_BY_NAME

NO_FINDING = "No Finding"
NOT_PATHOLOGY = (NO_FINDING, "Support Devices")


def predicted_labels(
    entities: Sequence[str], existence: Sequence[int], certainty: Sequence[str]
) -> set[str]:
    """The CheXpert labels of one study's triplets (entity names, existence 0/1 after the
    label policy, certainty before it)."""
    labelled = [
        (ENTITY_BY_NAME[e].chexpert, x, c)
        for e, x, c in zip(entities, existence, certainty, strict=True)
        if ENTITY_BY_NAME[e].chexpert not in (None, NO_FINDING)
    ]
    present = {lb for lb, x, _ in labelled if x == 1}
    if not {lb for lb, x, c in labelled if x == 1 or c == "uncertain"} - set(NOT_PATHOLOGY):
        present.add(NO_FINDING)
    return present


def _pr(tp: int, fp: int, fn: int) -> dict[str, float | int | None]:
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
    }


def label_agreement(
    predicted: Mapping[int, set[str]], labels: Mapping[int, Sequence[int]]
) -> dict[str, object]:
    """Per-label and micro precision / recall of ``predicted`` (study -> labels present)
    against ``labels`` (study -> 14 values 1 / 0 / -1 in ``LABELS`` order)."""
    counts = {lb: [0, 0, 0] for lb in LABELS}  # tp, fp, fn
    ignored = 0
    for study, row in labels.items():
        pred = predicted.get(study, {NO_FINDING})
        for lb, value in zip(LABELS, row, strict=True):
            if value == -1:
                ignored += 1
                continue
            hit, truth = lb in pred, value == 1
            counts[lb][0] += hit and truth
            counts[lb][1] += hit and not truth
            counts[lb][2] += truth and not hit
    per_label = {lb: _pr(*c) for lb, c in counts.items()}
    tp, fp, fn = np.sum([c for lb, c in counts.items() if lb != NO_FINDING], axis=0).tolist()
    return {
        "studies": len(labels),
        "ignored_cells": ignored,
        "micro": _pr(int(tp), int(fp), int(fn)),
        "micro_covers": [lb for lb in LABELS if lb != NO_FINDING],
        "per_label": per_label,
    }
