"""Figure captions for the demo's pretraining corpus: its stand-in for PMC-15M's texts.

BiomedCLIP was pretrained on PMC-15M, whose texts are the captions of figures in published
articles ("Chest X-ray showing a right pleural effusion and cardiomegaly."), not radiology
reports. That is where its zero-shot ability comes from: it has seen finding names in
caption phrasing, which is the phrasing of the prompts ("A chest x-ray showing {}").
A backbone pretrained on reports alone has not, and maps "showing pleural effusion" and
"showing no pleural effusion" nearly alike. ``pretrain.caption_fraction`` of the demo's
pretraining images therefore get a caption written from their study's CheXpert labels
instead of their report.

A caption names the study's positive findings (each by one of a few synonyms that include
the CheXpert label name, as article captions do), sometimes one finding stated absent
("... without pneumothorax"), and a normal study as normal. Uncertain findings are left out,
as a caption names what the figure shows. Captions are never written for the demo corpus
that A–E fine-tune on, nor for its test split: only the pretraining corpus has them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from lib.data.mimic import LABELS, NO_FINDING

# Each finding's names in captions: the CheXpert label name first, then synonyms.
TERMS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "basal atelectasis", "subsegmental atelectasis"),
    "Cardiomegaly": ("cardiomegaly", "an enlarged heart", "an enlarged cardiac silhouette"),
    "Consolidation": ("consolidation", "lobar consolidation", "airspace consolidation"),
    "Edema": ("edema", "pulmonary edema", "interstitial edema"),
    "Enlarged Cardiomediastinum": (
        "enlarged cardiomediastinum",
        "a widened mediastinum",
        "an enlarged cardiomediastinal silhouette",
    ),
    "Fracture": ("fracture", "rib fractures", "a displaced fracture"),
    "Lung Lesion": ("lung lesion", "a lung nodule", "a pulmonary mass"),
    "Lung Opacity": ("lung opacity", "pulmonary opacities", "an airspace opacity"),
    "Pleural Effusion": ("pleural effusion", "a pleural effusion", "pleural fluid"),
    "Pleural Other": ("pleural other", "pleural thickening", "a pleural abnormality"),
    "Pneumonia": ("pneumonia", "a pneumonia", "an infectious infiltrate"),
    "Pneumothorax": ("pneumothorax", "a pneumothorax", "a collapsed lung"),
    "Support Devices": ("support devices", "lines and tubes", "medical devices"),
}
# Names of a finding stated absent ("without pleural effusion", "; no pneumothorax").
ABSENT: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("consolidation", "focal consolidation"),
    "Edema": ("edema", "pulmonary edema"),
    "Enlarged Cardiomediastinum": ("enlarged cardiomediastinum", "mediastinal widening"),
    "Fracture": ("fracture", "rib fractures"),
    "Lung Lesion": ("lung lesion", "pulmonary nodules"),
    "Lung Opacity": ("lung opacity", "focal opacity"),
    "Pleural Effusion": ("pleural effusion", "pleural fluid"),
    "Pleural Other": ("pleural other", "pleural thickening"),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
    "Support Devices": ("support devices", "lines or tubes"),
}

OPENINGS: tuple[str, ...] = (
    "Chest X-ray showing {}.",
    "A chest x-ray showing {}.",
    "Chest radiograph demonstrating {}.",
    "Frontal chest radiograph with {}.",
    "Posteroanterior chest radiograph showing {}.",
    "Portable chest film demonstrating {}.",
    "Figure 2. Chest X-ray of the patient showing {}.",
    "Chest X-ray on admission revealed {}.",
)
NORMAL: tuple[str, ...] = (
    "Normal chest X-ray.",
    "Chest X-ray showing no acute cardiopulmonary process.",
    "A chest x-ray showing no acute cardiopulmonary process.",
    "Unremarkable frontal chest radiograph.",
    "Chest radiograph with no acute abnormality.",
    "Normal posteroanterior chest radiograph.",
)
P_ABSENT = 0.35  # add one finding stated absent
P_NORMAL_NAMED = 0.3  # a normal study's caption names its label ("showing no finding")


def _join(terms: list[str]) -> str:
    if len(terms) == 1:
        return terms[0]
    return ", ".join(terms[:-1]) + " and " + terms[-1]


def _state(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_caption(labels: Mapping[str, float | None], rng: random.Random) -> str:
    """A figure caption for a study with CheXpert ``labels`` (1 positive, 0 negative, -1
    uncertain, None/NaN not mentioned); ``rng`` draws the wording."""
    states = {k: _state(labels.get(k)) for k in LABELS}
    positive = [k for k in LABELS if k != NO_FINDING and states[k] == 1.0]
    negative = [k for k in LABELS if k != NO_FINDING and states[k] == 0.0]
    if not positive:
        if rng.random() < P_NORMAL_NAMED:
            return rng.choice(OPENINGS).format("no finding")
        return rng.choice(NORMAL)
    rng.shuffle(positive)
    text = rng.choice(OPENINGS).format(_join([rng.choice(TERMS[k]) for k in positive]))
    if negative and rng.random() < P_ABSENT:
        absent = rng.choice(ABSENT[rng.choice(negative)])
        text = text[:-1] + rng.choice((f" without {absent}.", f"; no {absent}."))
    return text
