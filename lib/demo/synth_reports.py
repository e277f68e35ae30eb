"""Synthetic MIMIC-CXR free-text reports whose statements follow given CheXpert states.

`compose_report` writes the text of one report file in the shape of the real
``mimic-cxr-reports`` files (a 33-space-indented title line, `EXAMINATION:` ...
`IMPRESSION:` sections, every other line starting with one space, lines wrapped
at 79 characters, ``___`` where identifiers were removed). Each CheXpert finding
is stated exactly as its state says:

* ``"pos"``  stated present ("Small right pleural effusion."),
* ``"neg"``  explicitly negated ("No pleural effusion or pneumothorax."),
* ``"unc"``  hedged ("Possible small left effusion.", "... cannot be excluded."),
* ``None``   not mentioned anywhere in the file (indication included).

Every sentence of the FINDINGS / IMPRESSION text (or of the unlabelled final
paragraph) is drawn from the tables below: `TEMPLATES` (one finding),
`COMBINED` (several findings in one sentence, used only when every finding it
speaks about has the state it needs), or the finding-free pools `FILLERS`,
`NORMAL_IMPRESSIONS` and `COMMUNICATIONS`. Slots such as ``{side}`` are filled
from `SLOT_VALUES`; one report keeps a finding's slot values (its side, size,
lobe, ...) across the FINDINGS and IMPRESSION sections.

A few reports take the irregular shapes real parsers have to cope with
(`SHAPE_PROBS`), and a few carry an addendum on top (`P_ADDENDUM`).

Why one module of ~1,050 lines: most of them are the phrase tables above (data, one
entry a line), which the composer below must keep consistent with (a table entry names the
states it needs); only ``compose_report`` is its interface, for the demo corpus alone.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lib.data.mimic import FINDINGS

State = Literal["pos", "neg", "unc"] | None

STATES: tuple[str, ...] = ("pos", "neg", "unc")
# The labels a report states; "No Finding" is derived, never stated.

# --- file shapes --------------------------------------------------------------------------
P_PLACEHOLDER = 0.005  # the whole file is a short placeholder (" Report to follow.")
P_NO_SECTIONS = 0.05  # no FINDINGS/IMPRESSION headers: an unlabelled final paragraph
P_NO_IMPRESSION = 0.07  # FINDINGS only
P_CONCLUSION = 0.03  # like "full" but the impression header is CONCLUSION:
P_COMBINED = 0.02  # one FINDINGS AND IMPRESSION: section
P_FULL = 1.0 - (P_PLACEHOLDER + P_NO_SECTIONS + P_NO_IMPRESSION + P_CONCLUSION + P_COMBINED)
SHAPE_PROBS: dict[str, float] = {
    "placeholder": P_PLACEHOLDER,
    "no_sections": P_NO_SECTIONS,
    "no_impression": P_NO_IMPRESSION,
    "conclusion": P_CONCLUSION,
    "findings_impression_combined": P_COMBINED,
    "full": P_FULL,
}
SHAPES: tuple[str, ...] = tuple(SHAPE_PROBS)
# Independent of the shape (placeholders excepted): a FINAL ADDENDUM on top.
P_ADDENDUM = 0.03

# --- layout ---------------------------------------------------------------------------------
LINE_WIDTH = 79
TITLE = " " * 33 + "FINAL REPORT"
ADDENDUM_TITLE = " " * 33 + "FINAL ADDENDUM"
SEPARATOR = " " + "_" * 78
BLANK = " "
PLACEHOLDERS: tuple[str, ...] = (" Report to follow.\n", " ___ \n", " See separate report.\n")

# Small style probabilities (not part of the contract).
_P_INLINE_BODY_HEADER = 0.25  # " FINDINGS:  text" instead of " FINDINGS: " + blank + text
_P_COMBO = 0.5  # use an applicable multi-finding sentence
_P_NUMBERED = 0.15  # numbered impression items
_P_IMPRESSION_NEG = 0.3  # restate one negative in the impression
_P_COMMUNICATION = 0.12  # "Dr. ___ was paged ..." when something is positive/hedged
_P_HEART_FIRST = 0.4  # heart/mediastinum statements before the lungs
_P_DOUBLE_SPACE = 0.5  # two spaces between sentences
_P_SPECIFIC_QUESTION = 0.6  # indication asks about a finding the report speaks of

# --- slots ------------------------------------------------------------------------------------
# A finding's location in one report; the location slots below are read off it, so that
# "Right basilar atelectasis." and "Atelectasis at the right lung base." agree. A template
# fits a location only if each of its location slots has a value there.
LOCATIONS: tuple[str, ...] = (
    "left upper",
    "left lower",
    "right upper",
    "right middle",
    "right lower",
    "both lower",
)
_LOCATION_WEIGHTS: tuple[int, ...] = (1, 3, 1, 1, 3, 2)
_LOCATION_SLOTS: dict[str, dict[str, str]] = {
    "side": {
        "left upper": "left",
        "left lower": "left",
        "right upper": "right",
        "right middle": "right",
        "right lower": "right",
    },
    "sides": {
        "left upper": "left",
        "left lower": "left",
        "right upper": "right",
        "right middle": "right",
        "right lower": "right",
        "both lower": "bilateral",
    },
    "basal": {
        "left lower": "left basilar",
        "right lower": "right basilar",
        "both lower": "bibasilar",
    },
    "base": {
        "left lower": "left lung base",
        "right lower": "right lung base",
        "both lower": "lung bases",
    },
    "zone": {
        "left upper": "left upper lung",
        "left lower": "left lower lung",
        "right upper": "right upper lung",
        "right middle": "right mid lung",
        "right lower": "right lower lung",
    },
    "lobe": {
        "left upper": "left upper lobe",
        "left lower": "left lower lobe",
        "right upper": "right upper lobe",
        "right middle": "right middle lobe",
        "right lower": "right lower lobe",
    },
    "effusion": {
        "left upper": "left pleural effusion",
        "left lower": "left pleural effusion",
        "right upper": "right pleural effusion",
        "right middle": "right pleural effusion",
        "right lower": "right pleural effusion",
        "both lower": "bilateral pleural effusions",
    },
}
# Slots drawn freely (once per finding and report).
_PLAIN_SLOTS: dict[str, tuple[str, ...]] = {
    "esize": ("trace", "small", "moderate", "large"),  # pleural effusion
    "hsize": ("trace", "small"),  # hedged pleural effusion
    "psize": ("tiny", "small", "moderate", "large"),  # pneumothorax
    "tsize": ("tiny", "small"),  # hedged pneumothorax
    "sev": ("mild", "moderate", "severe"),  # edema
    "csev": ("mild", "moderate", "severe"),  # cardiomegaly
    "ord": ("third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"),
    "level": ("upper", "mid", "lower"),
    "cm": ("2", "3", "4", "5", "6"),
    "mm": tuple(str(i) for i in range(5, 26)),
    "cvl": ("internal jugular", "subclavian"),
}
# Slots spelled from another slot's value.
_DERIVED_SLOTS: dict[str, tuple[str, str]] = {"csevly": ("csev", "{}ly")}

SLOT_VALUES: dict[str, tuple[str, ...]] = {
    **{k: tuple(dict.fromkeys(v.values())) for k, v in _LOCATION_SLOTS.items()},
    **_PLAIN_SLOTS,
    **{
        k: tuple(fmt.format(v) for v in _PLAIN_SLOTS[base])
        for k, (base, fmt) in _DERIVED_SLOTS.items()
    },
}

# --- statement tables ------------------------------------------------------------------------
# TEMPLATES[label][state]: one-sentence templates that speak about that finding only.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "Atelectasis": {
        "pos": (
            "{basal} atelectasis.",
            "Mild {basal} atelectasis.",
            "Minimal {basal} atelectasis.",
            "There is {basal} atelectasis.",
            "Subsegmental atelectasis at the {base}.",
            "Linear atelectasis at the {base}.",
            "Plate-like atelectasis in the {zone}.",
        ),
        "neg": (
            "No atelectasis.",
            "There is no atelectasis.",
            "No significant atelectasis.",
            "Previously seen {basal} atelectasis has resolved.",
        ),
        "unc": (
            "Possible mild {basal} atelectasis.",
            "Findings at the {base} likely reflect atelectasis.",
            "Minimal {basal} atelectasis is suspected.",
            "Atelectasis at the {base} cannot be excluded.",
            "Questionable subsegmental atelectasis in the {zone}.",
        ),
    },
    "Cardiomegaly": {
        "pos": (
            "{csev} cardiomegaly.",
            "There is {csev} cardiomegaly.",
            "Stable {csev} cardiomegaly.",
            "The heart is {csevly} enlarged.",
            "Heart size is {csevly} enlarged.",
            "The cardiac silhouette is {csevly} enlarged.",
        ),
        "neg": (
            "Heart size is normal.",
            "The heart size is normal.",
            "Normal heart size.",
            "The heart is not enlarged.",
            "The cardiac silhouette is not enlarged.",
        ),
        "unc": (
            "Heart size is borderline enlarged.",
            "Possible mild cardiomegaly.",
            "The heart may be mildly enlarged.",
            "Mild cardiomegaly cannot be excluded given AP technique.",
        ),
    },
    "Consolidation": {
        "pos": (
            "Patchy {lobe} consolidation.",
            "Dense consolidation in the {lobe}.",
            "There is {lobe} consolidation.",
            "Focal consolidation in the {lobe}.",
            "New {lobe} consolidation.",
        ),
        "neg": (
            "No focal consolidation.",
            "There is no focal consolidation.",
            "No consolidation is seen.",
            "No confluent consolidation.",
        ),
        "unc": (
            "Possible early consolidation in the {lobe}.",
            "Consolidation in the {lobe} cannot be excluded.",
            "Subtle {lobe} consolidation is not excluded.",
            "Questionable consolidation in the {lobe}.",
        ),
    },
    "Edema": {
        "pos": (
            "{sev} pulmonary edema.",
            "{sev} interstitial pulmonary edema.",
            "There is {sev} pulmonary edema.",
            "Worsening {sev} pulmonary edema.",
            "Pulmonary vascular congestion with {sev} interstitial edema.",
        ),
        "neg": (
            "No pulmonary edema.",
            "There is no pulmonary edema.",
            "No evidence of pulmonary edema.",
            "No pulmonary vascular congestion or edema.",
        ),
        "unc": (
            "Possible mild pulmonary edema.",
            "Findings may reflect mild interstitial edema.",
            "Mild interstitial edema is not excluded.",
            "Equivocal mild pulmonary edema.",
        ),
    },
    "Enlarged Cardiomediastinum": {
        "pos": (
            "The mediastinum is widened.",
            "Mediastinal widening.",
            "Widened mediastinum.",
            "Widening of the superior mediastinum.",
            "The cardiomediastinal silhouette is enlarged.",
            "Enlarged cardiomediastinal silhouette.",
        ),
        "neg": (
            "Mediastinal contours are normal.",
            "Normal mediastinal contours.",
            "The mediastinum is not widened.",
            "The cardiomediastinal silhouette is normal.",
            "Normal cardiomediastinal silhouette.",
            "Cardiomediastinal contours are within normal limits.",
        ),
        "unc": (
            "The mediastinum may be widened.",
            "Possible widening of the superior mediastinum.",
            "Mediastinal widening cannot be excluded.",
            "Apparent widening of the mediastinum may be due to AP technique.",
        ),
    },
    "Fracture": {
        "pos": (
            "Displaced fracture of the {side} {ord} rib.",
            "Acute nondisplaced fracture of the {side} {ord} rib.",
            "Healed {side} {ord} rib fracture.",
            "Old {side} {ord} rib fracture.",
            "Fracture of the {side} clavicle.",
            "Compression fracture of a {level} thoracic vertebral body.",
        ),
        "neg": (
            "No acute osseous abnormality.",
            "No displaced fracture is identified.",
            "No fracture is seen.",
            "No acute fracture.",
            "No displaced rib fractures.",
        ),
        "unc": (
            "Possible nondisplaced fracture of the {side} {ord} rib.",
            "Cortical irregularity of the {side} {ord} rib may represent a subacute fracture.",
            "A rib fracture cannot be excluded.",
            "Questionable fracture of the {side} clavicle.",
        ),
    },
    "Lung Lesion": {
        "pos": (
            "{mm} mm nodule in the {zone}.",
            "There is a {mm} mm nodule in the {zone}.",
            "A {cm} cm mass in the {lobe}.",
            "{lobe} mass measuring {cm} cm.",
            "Spiculated {cm} cm mass in the {lobe}.",
            "Multiple pulmonary nodules, the largest in the {zone} measuring {mm} mm.",
        ),
        "neg": (
            "No pulmonary nodules or masses are identified.",
            "No suspicious pulmonary nodule or mass.",
            "No focal pulmonary nodule.",
            "Previously described {zone} nodule is no longer seen.",
        ),
        "unc": (
            "Possible {mm} mm nodule in the {zone}.",
            "A nodule in the {zone} cannot be excluded.",
            "Questionable nodule in the {zone}; CT could be obtained for further evaluation.",
            "Possible mass in the {lobe}.",
        ),
    },
    "Lung Opacity": {
        "pos": (
            "Patchy opacity in the {zone}.",
            "Ill-defined opacity in the {zone}.",
            "New opacity in the {zone}.",
            "Hazy opacity at the {base}.",
            "{basal} opacities.",
            "There are patchy {basal} opacities.",
            "Increased opacification at the {base}.",
        ),
        "neg": (
            "No focal opacity.",
            "No focal opacity is seen.",
            "No new opacities.",
            "There is no focal airspace opacity.",
        ),
        "unc": (
            "Possible subtle opacity in the {zone}.",
            "Questionable opacity at the {base}.",
            "A subtle opacity at the {base} cannot be excluded.",
            "A faint opacity in the {zone} may be due to overlapping soft tissue.",
        ),
    },
    "Pleural Effusion": {
        "pos": (
            "{esize} {effusion}.",
            "Persistent {esize} {effusion}.",
            "New {esize} {effusion}.",
            "There is a {esize} {side} pleural effusion.",
            "{esize} {side} effusion.",
        ),
        "neg": (
            "No pleural effusion.",
            "There is no pleural effusion.",
            "No pleural effusions.",
            "Resolution of the previously seen {effusion}.",
        ),
        "unc": (
            "Possible {hsize} {side} pleural effusion.",
            "Possible {hsize} {side} effusion.",
            "{hsize} {side} pleural effusion cannot be excluded.",
            "Blunting of the {side} costophrenic angle may reflect a {hsize} effusion.",
            "{hsize} {side} pleural effusion is not excluded.",
        ),
    },
    "Pleural Other": {
        "pos": (
            "{sides} pleural thickening.",
            "{sides} apical pleural thickening.",
            "Chronic {sides} pleural scarring.",
            "Calcified pleural plaques.",
        ),
        "neg": (
            "No pleural thickening.",
            "No pleural thickening is seen.",
            "No pleural plaques.",
        ),
        "unc": (
            "Possible {side} pleural thickening.",
            "Apparent {side} pleural thickening may be due to overlying soft tissue.",
            "Questionable {side} apical pleural scarring.",
        ),
    },
    "Pneumonia": {
        "pos": (
            "{lobe} pneumonia.",
            "There is {lobe} pneumonia.",
            "Worsening {lobe} pneumonia.",
            "Pneumonia in the {lobe}.",
            "Multifocal pneumonia.",
        ),
        "neg": (
            "No evidence of pneumonia.",
            "No radiographic evidence of pneumonia.",
            "No findings to suggest pneumonia.",
            "No pneumonia.",
        ),
        "unc": (
            "Possible early {lobe} pneumonia.",
            "Pneumonia cannot be excluded in the appropriate clinical setting.",
            "Findings may represent early pneumonia.",
            "Infection at the {base} cannot be excluded.",
            "Early pneumonia is not excluded.",
        ),
    },
    "Pneumothorax": {
        "pos": (
            "{psize} {side} apical pneumothorax.",
            "{psize} {side} pneumothorax.",
            "There is a {psize} {side} pneumothorax.",
        ),
        "neg": (
            "No pneumothorax.",
            "There is no pneumothorax.",
            "No pneumothorax is seen.",
            "No evidence of pneumothorax.",
            "Resolution of the previously seen {side} pneumothorax.",
        ),
        "unc": (
            "Possible {tsize} {side} apical pneumothorax.",
            "A {tsize} {side} apical pneumothorax cannot be excluded.",
            "Questionable {tsize} {side} pneumothorax.",
            "Possible {tsize} {side} pneumothorax.",
        ),
    },
    "Support Devices": {
        "pos": (
            "Endotracheal tube terminates {cm} cm above the carina.",
            "An endotracheal tube is in place, with its tip {cm} cm above the carina.",
            "Enteric tube courses below the diaphragm with the tip out of view.",
            "Nasogastric tube tip is in the stomach.",
            "{side} {cvl} central venous catheter terminates in the mid SVC.",
            "{side} PICC line terminates at the cavoatrial junction.",
            "{side}-sided pacemaker with leads in the right atrium and right ventricle.",
            "A {side} chest tube is in place.",
            "Median sternotomy wires are intact.",
        ),
        "neg": (
            "Interval removal of the endotracheal tube.",
            "Interval removal of the {side} chest tube.",
            "The {side} PICC line has been removed.",
            "No lines or tubes are present.",
        ),
        "unc": (
            "A radiopaque line projecting over the {side} chest may reflect an external catheter.",
            "Possible nasogastric tube, incompletely visualized.",
            "Questionable {side} PICC line, not well visualized.",
        ),
    },
}

# Sentences that speak about several findings; used only when each has the state given.
COMBINED: tuple[tuple[dict[str, str], tuple[str, ...]], ...] = (
    (
        {"Pleural Effusion": "neg", "Pneumothorax": "neg"},
        (
            "No pleural effusion or pneumothorax.",
            "There is no pleural effusion or pneumothorax.",
            "No pneumothorax or pleural effusion.",
            "No pleural effusion or pneumothorax is seen.",
        ),
    ),
    (
        {"Consolidation": "neg", "Pleural Effusion": "neg", "Pneumothorax": "neg"},
        (
            "There is no focal consolidation, pleural effusion or pneumothorax.",
            "No focal consolidation, pleural effusion, or pneumothorax is seen.",
            "No focal consolidation, pleural effusion or pneumothorax.",
        ),
    ),
    (
        {"Cardiomegaly": "neg", "Enlarged Cardiomediastinum": "neg"},
        (
            "Heart size and mediastinal contours are normal.",
            "The heart and mediastinum are within normal limits.",
            "Normal heart size and mediastinal contours.",
            "Heart size is normal, and the mediastinum is not widened.",
        ),
    ),
    (
        {
            "Lung Opacity": "neg",
            "Consolidation": "neg",
            "Edema": "neg",
            "Pneumonia": "neg",
            "Atelectasis": "neg",
            "Lung Lesion": "neg",
        },
        ("The lungs are clear.", "Lungs are clear.", "The lungs are well expanded and clear."),
    ),
    (
        {"Consolidation": "neg", "Pneumonia": "neg"},
        (
            "No focal consolidation to suggest pneumonia.",
            "There is no consolidation concerning for pneumonia.",
        ),
    ),
    (
        {"Edema": "neg", "Pleural Effusion": "neg"},
        ("No pulmonary edema or pleural effusion.", "No pleural effusion or pulmonary edema."),
    ),
    (
        {"Atelectasis": "unc", "Pneumonia": "unc"},
        (
            "Atelectasis versus pneumonia at the {base}.",
            "Findings at the {base} may reflect atelectasis versus pneumonia.",
            "{basal} atelectasis versus early pneumonia.",
        ),
    ),
    (
        {"Lung Opacity": "pos", "Atelectasis": "unc", "Pneumonia": "unc"},
        (
            "{basal} opacity may reflect atelectasis versus pneumonia.",
            "Patchy opacity at the {base}, likely atelectasis, though pneumonia cannot be "
            "excluded.",
        ),
    ),
    (
        {"Lung Opacity": "pos", "Pneumonia": "unc"},
        (
            "{basal} opacity, concerning for pneumonia.",
            "Patchy opacity in the {zone} may represent pneumonia.",
            "New opacity in the {zone}, which could reflect pneumonia in the appropriate "
            "clinical setting.",
        ),
    ),
    (
        {"Lung Opacity": "pos", "Atelectasis": "unc"},
        (
            "{basal} opacities, likely atelectasis.",
            "Linear opacity at the {base}, most likely atelectasis.",
        ),
    ),
    (
        {"Atelectasis": "unc", "Consolidation": "unc"},
        (
            "Retrocardiac atelectasis versus consolidation.",
            "{basal} atelectasis versus consolidation.",
        ),
    ),
    (
        {"Pleural Effusion": "pos", "Atelectasis": "pos"},
        (
            "{esize} {side} pleural effusion with adjacent atelectasis.",
            "{esize} {effusion} with associated compressive atelectasis.",
        ),
    ),
    (
        {"Pleural Effusion": "pos", "Lung Opacity": "pos", "Atelectasis": "unc"},
        ("{esize} {side} pleural effusion with adjacent opacity, likely atelectasis.",),
    ),
    (
        {"Cardiomegaly": "pos", "Edema": "pos"},
        (
            "{csev} cardiomegaly with pulmonary vascular congestion and interstitial edema.",
            "Cardiomegaly with {sev} pulmonary edema.",
        ),
    ),
    (
        {"Consolidation": "pos", "Pneumonia": "unc"},
        (
            "{lobe} consolidation, concerning for pneumonia.",
            "Focal consolidation in the {lobe} may represent pneumonia.",
        ),
    ),
    (
        {"Consolidation": "pos", "Pneumonia": "pos"},
        (
            "{lobe} pneumonia with dense consolidation.",
            "Dense {lobe} consolidation due to pneumonia.",
        ),
    ),
    (
        {"Support Devices": "pos", "Pneumothorax": "neg"},
        (
            "{side} chest tube in place without pneumothorax.",
            "A {side} chest tube remains in place, with no pneumothorax.",
        ),
    ),
)

_COMBINED_ITEMS: tuple[frozenset[tuple[str, str]], ...] = tuple(
    frozenset(req.items()) for req, _ in COMBINED
)

# Sentences that speak about no CheXpert finding at all.
FILLERS: tuple[str, ...] = (
    "The hila are unremarkable.",
    "Hilar contours are normal.",
    "The trachea is midline.",
    "The visualized upper abdomen is unremarkable.",
    "The soft tissues are unremarkable.",
    "The patient is slightly rotated.",
    "Lung volumes are normal.",
    "Multilevel degenerative changes of the thoracic spine.",
)
# Impression when nothing is positive or hedged (global, no specific finding).
NORMAL_IMPRESSIONS: tuple[str, ...] = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
    "No evidence of acute cardiopulmonary disease.",
)
COMMUNICATIONS: tuple[str, ...] = (
    "Findings were discussed with Dr. ___ by telephone at ___ on ___.",
    "Dr. ___ was paged at ___ to discuss these findings.",
    "These findings were communicated to Dr. ___ at ___ on ___ by ___.",
)
ADDENDUM_SENTENCES: tuple[str, ...] = (
    "Findings were discussed with Dr. ___ by telephone at ___ on ___.",
    "The study was reviewed with Dr. ___ on ___.",
    "The comparison study from ___ was not available at the time of the initial read.",
    "The report was amended to include the comparison study from ___.",
    "Dr. ___ was notified of the final report at ___.",
)

# Where a finding's statement goes in the paragraph (devices, lungs, pleura, heart, bones).
_ORDER: dict[str, int] = {
    "Support Devices": 0,
    "Lung Opacity": 1,
    "Consolidation": 2,
    "Atelectasis": 3,
    "Pneumonia": 4,
    "Edema": 5,
    "Lung Lesion": 6,
    "Pleural Effusion": 7,
    "Pneumothorax": 8,
    "Pleural Other": 9,
    "Cardiomegaly": 10,
    "Enlarged Cardiomediastinum": 11,
    "Fracture": 12,
}
_ORDER_HEART_FIRST: dict[str, int] = {
    lab: (i - 12 if lab in ("Cardiomegaly", "Enlarged Cardiomediastinum") else i)
    for lab, i in _ORDER.items()
}
# Negatives worth restating in an impression.
_IMPRESSION_NEGATIVES: tuple[str, ...] = (
    "Pneumothorax",
    "Pleural Effusion",
    "Pneumonia",
    "Consolidation",
    "Edema",
)

# --- indication / examination / technique / comparison -------------------------------------
_PATIENTS: tuple[str, ...] = (
    "___-year-old man",
    "___-year-old woman",
    "___ year old man",
    "___ year old woman",
    "___M",
    "___F",
    "___ y/o M",
    "___ y/o F",
)
_COMPLAINTS: tuple[str, ...] = (
    "cough",
    "shortness of breath",
    "chest pain",
    "fever",
    "dyspnea",
    "hypoxia",
    "fall",
    "weakness",
    "altered mental status",
    "leukocytosis",
    "abdominal pain",
    "syncope",
    "hypotension",
    "preoperative evaluation",
)
_GENERIC_QUESTIONS: tuple[str, ...] = (
    "eval for acute process",
    "assess for acute cardiopulmonary process",
    "evaluate for interval change",
    "?acute process",
    "r/o acute process",
)
# Questions that name a finding: asked only when the report speaks about that finding.
_SPECIFIC_QUESTIONS: dict[str, tuple[str, ...]] = {
    "Pneumonia": ("eval for pneumonia", "r/o pneumonia", "eval for infection"),
    "Pleural Effusion": ("eval for effusion", "assess for pleural effusion"),
    "Pneumothorax": ("eval for pneumothorax", "r/o pneumothorax"),
    "Edema": ("eval for pulmonary edema", "eval for fluid overload"),
    "Cardiomegaly": ("eval for cardiomegaly",),
    "Support Devices": ("eval ETT placement", "eval line placement", "assess NGT position"),
    "Fracture": ("eval for rib fracture", "r/o fracture"),
    "Lung Lesion": ("f/u pulmonary nodule", "eval for mass"),
    "Consolidation": ("eval for consolidation",),
    "Enlarged Cardiomediastinum": ("eval for widened mediastinum",),
}
_INDICATION_FORMATS: tuple[str, ...] = (
    "{p} with {c}",
    "{p} with {c}  // {q}",
    "{p} with {c}, {q}",
    "History: {p} with {c}",
    "{p} with {c}.  {q}",
)
_COMPARISONS: tuple[str, ...] = (
    "___.",
    "___",
    "None.",
    "Chest radiograph from ___.",
    "Chest radiographs from ___ and ___.",
    "Prior study from ___.",
    "CT chest from ___.",
)
_NUMBER_WORDS: dict[int, str] = {1: "One", 2: "Two", 3: "Three", 4: "Four", 5: "Five"}

_SLOT_RE = re.compile(r"\{(\w+)\}")
_SLOTS_OF: dict[str, tuple[str, ...]] = {}


def _slots_of(template: str) -> tuple[str, ...]:
    slots = _SLOTS_OF.get(template)
    if slots is None:
        slots = tuple(dict.fromkeys(_SLOT_RE.findall(template)))
        unknown = [s for s in slots if s not in SLOT_VALUES]
        if unknown:
            raise KeyError(f"template {template!r} uses unknown slots {unknown}")
        _SLOTS_OF[template] = slots
    return slots


def _all_templates() -> list[str]:
    out = [t for by_state in TEMPLATES.values() for ts in by_state.values() for t in ts]
    out += [t for _, ts in COMBINED for t in ts]
    return out


# What a statement says a finding is like (which device, which kind of fracture, a nodule
# or a mass, new or persistent): a later statement of the same finding in the same report
# must say the same, so the IMPRESSION restates what the FINDINGS named.
_KIND_WORDS: dict[str, tuple[str, ...]] = {
    "Support Devices": (
        "endotracheal",
        "enteric",
        "nasogastric",
        "central venous",
        "picc",
        "pacemaker",
        "chest tube",
        "sternotomy",
        "radiopaque",
    ),
    "Fracture": ("clavicle", "vertebral", "nondisplaced", "displaced", "healed", "old ", "rib"),
    "Lung Lesion": ("nodules", "nodule", "mass"),
    "Pleural Effusion": ("new ", "persistent"),
    "Pleural Other": ("plaque", "scarring", "thickening"),
    "Edema": ("worsening",),
    "Cardiomegaly": ("stable",),
    "Pneumonia": ("worsening", "multifocal"),
    "Consolidation": ("new ",),
    "Lung Opacity": ("new ",),
}


def _kind(template: str, label: str) -> str:
    low = template.lower()
    return next((w for w in _KIND_WORDS.get(label, ()) if w in low), "")


_KIND_OF: dict[tuple[str, str], str] = {}
# Per template: None when it has no location slot, else the locations it fits and their
# cumulative weights.
_LOCATIONS_OF: dict[str, tuple[tuple[str, ...], tuple[int, ...]] | None] = {}
for _t in _all_templates():  # parse (and check) every template once, at import
    _loc_slots = [x for x in _slots_of(_t) if x in _LOCATION_SLOTS]
    if _loc_slots:
        _fits = [
            (loc, w)
            for loc, w in zip(LOCATIONS, _LOCATION_WEIGHTS, strict=True)
            if all(loc in _LOCATION_SLOTS[x] for x in _loc_slots)
        ]
        if not _fits:
            raise ValueError(f"template {_t!r} fits no location")
        _cum = tuple(int(c) for c in np.cumsum([w for _, w in _fits]))
        _LOCATIONS_OF[_t] = (tuple(loc for loc, _ in _fits), _cum)
    else:
        _LOCATIONS_OF[_t] = None
del _t, _loc_slots
for _lab, _by_state in TEMPLATES.items():
    for _t in (t for ts in _by_state.values() for t in ts):
        _KIND_OF[_t, _lab] = _kind(_t, _lab)
for _req, _ts in COMBINED:
    for _t in _ts:
        for _lab in _req:
            _KIND_OF[_t, _lab] = _kind(_t, _lab)
del _lab, _by_state, _t, _req, _ts


def validate_states(states: Mapping[str, State]) -> dict[str, str | None]:
    """The states in `FINDINGS` order (missing labels are None); ValueError if bad."""
    for key, value in states.items():
        if key not in _ORDER:
            raise ValueError(f"unknown finding label {key!r} (expected one of {FINDINGS})")
        if value is not None and value not in STATES:
            raise ValueError(f"bad state {value!r} for {key!r} (expected pos/neg/unc/None)")
    return {lab: states.get(lab) for lab in FINDINGS}


class _Writer:
    """Per-report state: the random stream and what each finding's statements said so far
    (slot values, location, kind), so that later statements of it agree."""

    def __init__(self, r: random.Random, order: dict[str, int]):
        self.r = r
        self.order = order
        self.ctx: dict[str, dict[str, str]] = {lab: {} for lab in FINDINGS}
        # The first sentence that states each finding (the phrase a grounding row names).
        self.phrases: dict[str, str] = {}

    def pick(self, templates: Sequence[str], labels: Sequence[str]) -> str | None:
        """A template of the same kind and at the same location as earlier statements of
        `labels`; None if there is none."""
        ctxs = [self.ctx[lab] for lab in labels]
        for lab, c in zip(labels, ctxs, strict=True):
            if "_kind" in c:
                kind = c["_kind"]
                templates = [t for t in templates if _KIND_OF[t, lab] == kind]
        locs = {c["_loc"] for c in ctxs if "_loc" in c}
        if len(locs) == 1:
            (loc,) = locs
            templates = [t for t in templates if (f := _LOCATIONS_OF[t]) is None or loc in f[0]]
        elif locs:
            templates = [t for t in templates if _LOCATIONS_OF[t] is None]
        return self.r.choice(templates) if templates else None

    def fill(self, template: str, labels: Sequence[str]) -> str:
        r = self.r
        ctxs = [self.ctx[lab] for lab in labels]
        values: dict[str, str] = {}
        fits = _LOCATIONS_OF[template]
        loc = None
        if fits is not None:
            loc = next((c["_loc"] for c in ctxs if "_loc" in c), None)
            if loc is None:
                loc = r.choices(fits[0], cum_weights=fits[1])[0]
            elif loc not in fits[0]:  # only via the fallback in statements(): stay close
                side, level = loc.split()
                near = [x for x in fits[0] if x.startswith(side) or x.endswith(level)]
                loc = r.choice(near or fits[0])
        for slot in _slots_of(template):
            if slot in _LOCATION_SLOTS:
                values[slot] = _LOCATION_SLOTS[slot][loc]
                continue
            base, fmt = _DERIVED_SLOTS.get(slot, (slot, "{}"))
            value = next((c[base] for c in ctxs if base in c), None)
            if value is None:
                value = r.choice(_PLAIN_SLOTS[base])
            values[base] = value
            values[slot] = fmt.format(value)
        for lab, c in zip(labels, ctxs, strict=True):
            for k, v in values.items():
                c.setdefault(k, v)
            if loc is not None:
                c.setdefault("_loc", loc)
            c.setdefault("_kind", _KIND_OF[template, lab])
        text = template.format(**values) if values else template
        text = text[0].upper() + text[1:]
        for lab in labels:
            self.phrases.setdefault(lab, text)
        return text

    def statements(self, active: dict[str, str]) -> list[str]:
        """One sentence per finding in `active` (label -> state), combos where they apply."""
        r = self.r
        keyed: list[tuple[int, str]] = []
        covered: set[str] = set()
        items = set(active.items())
        applicable = [i for i, req in enumerate(_COMBINED_ITEMS) if req <= items]
        if applicable:
            r.shuffle(applicable)
            for i in applicable:
                req, temps = COMBINED[i]
                if not covered.isdisjoint(req) or r.random() >= _P_COMBO:
                    continue
                labels = tuple(req)
                template = self.pick(temps, labels)
                if template is not None:
                    keyed.append(
                        (min(self.order[lab] for lab in labels), self.fill(template, labels))
                    )
                    covered.update(labels)
        for lab, st in active.items():
            if lab not in covered:
                temps = TEMPLATES[lab][st]
                template = self.pick(temps, (lab,)) or r.choice(temps)
                keyed.append((self.order[lab], self.fill(template, (lab,))))
        keyed.sort(key=lambda kv: kv[0])
        return [s for _, s in keyed]


def _wrap(text: str) -> list[str]:
    """Greedy wrap at `LINE_WIDTH`, every line starting with one space; inner runs of
    spaces (two after a sentence) are kept except at line breaks."""
    words = text.split(" ")
    lines: list[str] = []
    cur = " " + words[0]
    gap = 1
    for word in words[1:]:
        if not word:
            gap += 1
            continue
        if len(cur) + gap + len(word) <= LINE_WIDTH:
            cur += " " * gap + word
        else:
            lines.append(cur)
            cur = " " + word
        gap = 1
    lines.append(cur)
    return lines


def _inline(header: str, text: str) -> list[str]:
    return _wrap(f"{header}:  {text}")


def _body_section(header: str, text: str, r: random.Random) -> list[str]:
    if r.random() < _P_INLINE_BODY_HEADER:
        return _inline(header, text)
    return [f" {header}: ", BLANK, *_wrap(text)]


def _examination_and_technique(
    views: Sequence[str], n_images: int, r: random.Random
) -> tuple[str, str]:
    v = {str(x).strip().upper() for x in views}
    pa = any(x.startswith("PA") for x in v)
    ap = any(x.startswith("AP") for x in v)
    lat = any(x in ("LATERAL", "LL", "XTABLE LATERAL", "LAO", "RAO", "LPO") for x in v)
    n_word = _NUMBER_WORDS.get(n_images, str(n_images))
    if pa and lat:
        exam = "CHEST (PRE-OP PA AND LAT)" if r.random() < 0.05 else "CHEST (PA AND LAT)"
        techs = ["Chest PA and lateral", "PA and lateral views of the chest."]
        if n_images > 2:
            techs.append(f"{n_word} views of the chest.")
    elif ap and lat:
        exam = "CHEST (AP AND LAT)"
        techs = ["AP and lateral views of the chest.", "Chest AP and lateral"]
    elif ap:
        exam = "CHEST (PORTABLE AP)"
        if n_images == 1:
            techs = ["Portable AP chest radiograph.", "Single portable AP view of the chest."]
        else:
            techs = [f"{n_word} portable AP views of the chest.", "Portable AP chest radiographs."]
    elif pa:
        exam = "CHEST (PA)"
        techs = ["Single PA view of the chest." if n_images == 1 else "PA views of the chest."]
    else:
        exam = "CHEST RADIOGRAPH"
        many = f"{n_word} views of the chest." if n_images > 1 else "Single view of the chest."
        techs = ["Chest radiograph.", many]
    return exam, r.choice(techs)


def _indication(states: dict[str, str | None], r: random.Random) -> str:
    specific = [q for lab, qs in _SPECIFIC_QUESTIONS.items() if states[lab] is not None for q in qs]
    if specific and r.random() < _P_SPECIFIC_QUESTION:
        question = r.choice(specific)
    else:
        question = r.choice(_GENERIC_QUESTIONS)
    return r.choice(_INDICATION_FORMATS).format(
        p=r.choice(_PATIENTS), c=r.choice(_COMPLAINTS), q=question
    )


def _draw_shape(u: float) -> str:
    acc = 0.0
    for shape, p in SHAPE_PROBS.items():
        acc += p
        if u < acc:
            return shape
    return "full"


@dataclass(frozen=True)
class Report:
    """One report file and what it says where.

    ``locations`` maps each finding whose statements name a place to that place (one of
    `LOCATIONS`: "right lower", "both lower", ...), so that the image can be drawn there;
    ``phrases`` maps each stated finding to the first sentence that states it (the
    phrase of a grounding row). Both are empty for a placeholder.
    """

    text: str
    shape: str
    locations: dict[str, str] = field(default_factory=dict)
    phrases: dict[str, str] = field(default_factory=dict)


def compose_report(
    states: Mapping[str, State],
    *,
    frontal_views: Sequence[str],
    n_images: int,
    rng: np.random.Generator,
) -> tuple[str, str]:
    """Returns (report_text, shape) — text of one MIMIC-CXR free-text report file.

    `states` maps CheXpert labels (all but "No Finding"; missing ones count as None)
    to "pos"/"neg"/"unc"/None. `frontal_views` are the ViewPosition values of the
    study's images and `n_images` their count. The output depends only on the
    arguments; `rng` advances by exactly one draw. `shape` is one of `SHAPES`; an
    addendum (text starting with `ADDENDUM_TITLE`) may come with any shape but
    "placeholder". `write_report` returns the same text with where it places each finding.
    """
    report = write_report(states, frontal_views=frontal_views, n_images=n_images, rng=rng)
    return report.text, report.shape


def write_report(
    states: Mapping[str, State],
    *,
    frontal_views: Sequence[str],
    n_images: int,
    rng: np.random.Generator,
) -> Report:
    """`compose_report`'s text and shape, with each finding's location and phrase."""
    st = validate_states(states)
    r = random.Random(int(rng.integers(0, 2**63 - 1)))
    shape = _draw_shape(r.random())
    if shape == "placeholder":
        return Report(r.choice(PLACEHOLDERS), shape)

    w = _Writer(r, _ORDER_HEART_FIRST if r.random() < _P_HEART_FIRST else _ORDER)
    sep = "  " if r.random() < _P_DOUBLE_SPACE else " "

    exam, technique = _examination_and_technique(frontal_views, n_images, r)
    lines = [TITLE]
    lines += _inline("EXAMINATION", exam)
    lines.append(BLANK)
    lines += _inline("INDICATION", _indication(st, r))
    lines.append(BLANK)
    lines += _inline("TECHNIQUE", technique)
    lines.append(BLANK)
    lines += _inline("COMPARISON", r.choice(_COMPARISONS))
    lines.append(BLANK)

    # FINDINGS: every stated finding, plus 0-2 finding-free filler sentences.
    active = {lab: s for lab, s in st.items() if s is not None}
    findings = w.statements(active)
    u = r.random()
    n_fill = 0 if u < 0.4 else 1 if u < 0.8 else 2
    if not findings:
        n_fill = max(n_fill, 1)
    for filler in r.sample(FILLERS, n_fill):
        findings.insert(r.randint(0, len(findings)), filler)

    # IMPRESSION: positives and hedged ones, or a global normal statement.
    salient = {lab: s for lab, s in active.items() if s != "neg"}
    impression = w.statements(salient) if salient else [r.choice(NORMAL_IMPRESSIONS)]
    negatives = [lab for lab in _IMPRESSION_NEGATIVES if st[lab] == "neg"]
    if negatives and r.random() < _P_IMPRESSION_NEG:
        lab = r.choice(negatives)
        temps = TEMPLATES[lab]["neg"]
        impression.append(w.fill(w.pick(temps, (lab,)) or r.choice(temps), (lab,)))
    if salient and r.random() < _P_COMMUNICATION:
        impression.append(r.choice(COMMUNICATIONS))

    if shape in ("full", "conclusion"):
        lines += _body_section("FINDINGS", sep.join(findings), r)
        lines.append(BLANK)
        header = "IMPRESSION" if shape == "full" else "CONCLUSION"
        if len(impression) > 1 and r.random() < _P_NUMBERED:
            lines += [f" {header}: ", BLANK]
            for i, sentence in enumerate(impression, 1):
                lines += _wrap(f"{i}. {sentence}")
        else:
            lines += _body_section(header, sep.join(impression), r)
    elif shape == "no_impression":
        lines += _body_section("FINDINGS", sep.join(findings), r)
    elif shape == "findings_impression_combined":
        if not salient and r.random() < 0.5:
            findings.append(impression[0])
        lines += _body_section("FINDINGS AND IMPRESSION", sep.join(findings), r)
    else:  # no_sections: an unlabelled final paragraph
        lines += _wrap(sep.join(findings))

    if r.random() < P_ADDENDUM:
        k = 1 if r.random() < 0.6 else 2
        addendum = _body_section("ADDENDUM", sep.join(r.sample(ADDENDUM_SENTENCES, k)), r)
        lines = [ADDENDUM_TITLE, *addendum, BLANK, SEPARATOR, *lines]
    locations = {lab: c["_loc"] for lab, c in w.ctx.items() if "_loc" in c}
    # "Small right pleural effusion with adjacent opacity": the other finding shares the
    # effusion's side and lies at the base, whatever level the effusion's side-only slot
    # was drawn with.
    effusion_sentence = w.phrases.get("Pleural Effusion")
    for lab, loc in locations.items():
        if (
            effusion_sentence is not None
            and lab != "Pleural Effusion"
            and w.phrases.get(lab) == effusion_sentence
        ):
            locations[lab] = f"{loc.split()[0]} lower"
    return Report("\n".join(lines) + "\n", shape, locations, dict(w.phrases))
