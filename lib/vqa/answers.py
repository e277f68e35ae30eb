"""Rendering of predicted tags into the dataset's template main answer.

The heads predict tags (yes/no, a finding, a region, a severity); EM, token F1, BLEU-4,
ROUGE-L and BERTScore compare the template main answer filled with those tags against the
reference main answer (``answer_text``). A template (vocab.json ``templates``, one per
question type) has the slots {finding}, {region}, {severity} and {answer}: the predicted
head fills its own slot and {answer}; the other slots are the question's own variables
(the finding or region the question names), taken from its reference tags. A "no" of a
binary head takes the type's ``negative_templates`` entry where there is one.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from lib.errors import DataError

SLOT_OF = {"category": "finding", "region": "region", "severity": "severity"}
VOCAB_OF = {"category": "categories", "region": "regions", "severity": "severities"}
YES_NO = {1: "yes", 0: "no"}


def _name(vocab: Mapping[str, Any], head: str, value: int) -> str:
    names = vocab[VOCAB_OF[head]]
    return str(names[value]) if 0 <= value < len(names) else ""


def render(
    template: str, head: str, pred: int, row: Mapping[str, Any], vocab: Mapping[str, Any]
) -> str:
    """The template filled with the predicted tag ``pred`` of ``head`` and the question's
    other variables (``row``'s category / region / severity, "" where -1)."""
    slots = {SLOT_OF[h]: _name(vocab, h, int(row[h])) for h in SLOT_OF}
    if head == "binary":
        answer = YES_NO.get(int(pred), "no")
    else:
        answer = slots[SLOT_OF[head]] = _name(vocab, head, int(pred))
    slots["answer"] = answer
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    unknown = fields - set(slots)
    if unknown:
        raise DataError(
            f"vocab.json: template {template!r} has slot(s) {sorted(unknown)}; known: "
            f"{sorted(slots)}"
        )
    text = template.format(**slots)
    return text[:1].upper() + text[1:]


def render_all(
    questions: pd.DataFrame, preds: Sequence[int], vocab: Mapping[str, Any]
) -> list[str]:
    """Rendered main answers of ``questions`` (rows aligned with ``preds``)."""
    templates = vocab["templates"]
    negatives = vocab.get("negative_templates", {})
    out = []
    for row, pred in zip(questions.to_dict("records"), preds, strict=True):
        qtype = str(row["question_type"])
        template = templates.get(qtype) or templates.get(qtype.split("_", 1)[-1])
        if str(row["head"]) == "binary" and int(pred) == 0 and qtype in negatives:
            template = negatives[qtype]  # "No, there is no {finding}."
        if template is None:
            raise DataError(f"vocab.json: no template for question type {qtype!r}")
        out.append(render(template, str(row["head"]), int(pred), row, vocab))
    return out
