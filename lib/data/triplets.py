"""Rule-based (entity, position, certainty) triplets from report text, for MedKLIP.

spaCy's blank English pipeline (tokenizer, ``sentencizer``) with an ``entity_ruler`` for the
entity terms of `lib.data.triplet_vocab`, a ``span_ruler`` for the (overlapping) position
terms, and negspacy's ``negex`` with the ``en_clinical`` termset (plus a few terms for
resolved findings and removed devices). Uncertainty is decided by the rules below, on top
of the negation: a hedge that itself negates ("cannot exclude", "is not excluded") turns a
negated mention uncertain; any other hedge ("possible", "may represent") leaves a negated
mention absent ("no consolidation concerning for pneumonia").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from lib.data.triplet_vocab import (
    ENTITIES,
    ENTITY_BY_NAME,
    POSITIONS,
    SIDE_DEFAULTS,
    SIDE_WORDS,
    UNSPECIFIED,
)

CERTAINTIES = ("present", "absent", "uncertain")
_RANK = {"present": 2, "uncertain": 1, "absent": 0}
LABEL_POLICIES = ("positive_only", "u_ones", "u_zeros", "u_ignore")


class Triplet(NamedTuple):
    entity: str
    position: str
    certainty: str  # one of CERTAINTIES


# Hedges whose scope runs forward to the end of the clause, and those that look back over it.
FORWARD_HEDGES: tuple[str, ...] = (
    "possible",
    "possibly",
    "probable",
    "probably",
    "likely",
    "may",
    "might",
    "could",
    "questionable",
    "suspected",
    "suspicious for",
    "suggestive of",
    "suggests",
    "suggest",
    "concerning for",
    "concern for",
    "equivocal",
    "borderline",
    "apparent",
    "versus",
    "vs",
    "cannot exclude",
    "can not exclude",
    "cannot rule out",
    "differential",
    "presumed",
    "worrisome for",
    "compatible with",
    "consistent with",
    "question of",
)
BACKWARD_HEDGES: tuple[str, ...] = (
    "cannot be excluded",
    "can not be excluded",
    "is not excluded",
    "are not excluded",
    "not excluded",
    "cannot be ruled out",
    "not ruled out",
    "is suspected",
    "are suspected",
    "may be due to",
    "is possible",
    "is questionable",
    "is likely",
)
_VERSUS = frozenset({"versus", "vs"})
# Hedges that override a negex negation (they contain the negation word themselves).
NEGATING_HEDGES = frozenset(
    h for h in (*FORWARD_HEDGES, *BACKWARD_HEDGES) if "not" in h or "cannot" in h
)
CLAUSE_BREAKS = frozenset({",", ";", ":", "though", "although", "but", "however", "which"})
# Words inside a matched span ("the heart is not enlarged") that decide its certainty.
_INNER_NEGATION = frozenset({"not", "no"})
_INNER_HEDGE = frozenset({"may", "might", "borderline", "possibly", "could"})

EXTRA_NEGATIONS = {
    "preceding_negations": ["removal of", "interval removal of", "resolution of"],
    "following_negations": [
        "has resolved",
        "have resolved",
        "resolved",
        "is no longer seen",
        "are no longer seen",
        "no longer seen",
        "has been removed",
        "have been removed",
        "were removed",
        "was removed",
    ],
}
_ENLARGE_WORDS = [
    "is",
    "are",
    "may",
    "be",
    "appears",
    "not",
    "mildly",
    "moderately",
    "severely",
    "borderline",
    "slightly",
    "minimally",
    "markedly",
]


def _token_patterns() -> list[dict]:
    """Subject-predicate patterns: "the heart is mildly enlarged", "the mediastinum may be
    widened", and sentences that state two normal observations at once."""
    between = {"LOWER": {"IN": _ENLARGE_WORDS}, "OP": "+"}
    out = []
    for subj, pred, label in (
        (["heart"], "enlarged", "cardiomegaly"),
        (["heart", "size"], "enlarged", "cardiomegaly"),
        (["cardiac", "silhouette"], "enlarged", "cardiomegaly"),
        (["mediastinum"], "widened", "enlarged cardiomediastinum"),
        (["cardiomediastinal", "silhouette"], "enlarged", "enlarged cardiomediastinum"),
    ):
        out.append(
            {"label": label, "pattern": [*({"LOWER": w} for w in subj), between, {"LOWER": pred}]}
        )
    both = "normal heart size|normal mediastinum"
    for phrase, label in (
        ("heart size and mediastinal contours are normal", both),
        ("heart and mediastinum are within normal limits", both),
        ("normal heart size and mediastinal contours", both),
        ("cardiomediastinal silhouette is normal", "normal mediastinum"),
        ("normal cardiomediastinal silhouette", "normal mediastinum"),
        ("cardiomediastinal contours are within normal limits", "normal mediastinum"),
        ("cardiomediastinal contours are normal", "normal mediastinum"),
        ("heart size is normal", "normal heart size"),
        ("mediastinal contours are within normal limits", "normal mediastinum"),
    ):
        out.append({"label": label, "pattern": [{"LOWER": w} for w in phrase.split()]})
    return out


@functools.cache
def nlp():
    """The spaCy pipeline, built once per process."""
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
    from negspacy.termsets import termset

    pipe = spacy.blank("en")
    pipe.add_pipe("sentencizer")
    ruler = pipe.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    patterns = [{"label": e.name, "pattern": t} for e in ENTITIES for t in dict.fromkeys(e.terms)]
    ruler.add_patterns([*patterns, *_token_patterns()])
    spans = pipe.add_pipe(
        "span_ruler", config={"spans_key": "positions", "phrase_matcher_attr": "LOWER"}
    )
    pos_patterns = [{"label": p.name, "pattern": t} for p in POSITIONS for t in p.terms]
    pos_patterns += [{"label": f"SIDE:{s}", "pattern": w} for w, s in SIDE_WORDS.items()]
    spans.add_patterns(pos_patterns)
    ts = termset("en_clinical")
    ts.add_patterns(EXTRA_NEGATIONS)
    pipe.add_pipe("negex", config={"neg_termset": ts.get_patterns()})
    return pipe


def _phrase_at(words: list[str], i: int, phrases: Iterable[str]) -> str | None:
    for ph in phrases:
        parts = ph.split()
        if words[i : i + len(parts)] == parts:
            return ph
    return None


def _clause(words: list[str], lo: int, hi: int, start: int, end: int) -> tuple[int, int]:
    """The clause (token range within the sentence [lo, hi)) around tokens [start, end)."""
    a = start
    while a > lo and words[a - 1] not in CLAUSE_BREAKS:
        a -= 1
    b = end
    while b < hi and words[b] not in CLAUSE_BREAKS:
        b += 1
    return a, b


def _certainty(words: list[str], ent, sent, negated: bool) -> str:
    inner = set(words[ent.start : ent.end])
    subject = ent.label_ in ("cardiomegaly", "enlarged cardiomediastinum")
    if subject and inner & _INNER_NEGATION:  # "the heart is not enlarged"
        return "absent"
    a, b = _clause(words, sent.start, sent.end, ent.start, ent.end)
    hedges: list[str] = []
    for i in range(a, ent.start):
        ph = _phrase_at(words, i, FORWARD_HEDGES)
        if ph:
            hedges.append(ph)
    for i in range(ent.end, b):
        ph = _phrase_at(words, i, BACKWARD_HEDGES)
        if ph:
            hedges.append(ph)
    if ent.end < b and words[ent.end] in _VERSUS:  # "atelectasis versus pneumonia"
        hedges.append("cannot exclude")
    if any(h in _VERSUS for h in hedges):
        hedges.append("cannot exclude")
    if ent.label_ in ("cardiomegaly", "enlarged cardiomediastinum") and inner & _INNER_HEDGE:
        hedges.append("may")
    if negated:
        return "uncertain" if any(h in NEGATING_HEDGES for h in hedges) else "absent"
    return "uncertain" if hedges else "present"


def _position(words: list[str], ent, sent, positions: list, region: str) -> str:
    """The position phrase nearest the entity: its own modifiers first ("left basilar
    atelectasis"), then a following place in the clause ("nodule in the right upper lung"),
    then the nearest place in the sentence."""
    cands = [s for s in positions if s.start >= sent.start and s.end <= sent.end]
    if not cands:
        return UNSPECIFIED

    def resolve(span) -> str | None:
        if span.label_.startswith("SIDE:"):
            return SIDE_DEFAULTS.get(region, SIDE_DEFAULTS["lung"]).get(span.label_[5:])
        return span.label_

    a, b = _clause(words, sent.start, sent.end, ent.start, ent.end)
    before = [
        s
        for s in cands
        if s.start < ent.end and s.end <= ent.end and s.start >= a and s.end >= ent.start - 4
    ]
    if before:
        best = max(before, key=lambda s: (s.end, s.end - s.start))
        longest = max(
            (s for s in before if s.start <= best.start and s.end >= best.end),
            key=lambda s: s.end - s.start,
        )
        if (pos := resolve(longest)) is not None:
            return pos
    after = [s for s in cands if s.start >= ent.end and s.end <= b and s.start - ent.end <= 5]
    if after:
        first = min(after, key=lambda s: (s.start, -(s.end - s.start)))
        if (pos := resolve(first)) is not None:
            return pos
    near = min(cands, key=lambda s: min(abs(s.start - ent.end), abs(ent.start - s.end)))
    return resolve(near) or UNSPECIFIED


def _doc_triplets(doc) -> list[Triplet]:
    words = [t.lower_ for t in doc]
    positions = list(doc.spans["positions"])
    best: dict[tuple[str, str], str] = {}

    def add(entity: str, position: str, certainty: str) -> None:
        key = (entity, position)
        if key not in best or _RANK[certainty] > _RANK[best[key]]:
            best[key] = certainty

    for ent in doc.ents:
        sent = ent.sent
        for name in ent.label_.split("|"):
            e = ENTITY_BY_NAME[name]
            if e.normal:
                add(name, UNSPECIFIED, "present")
                for other in e.implies_absent:
                    add(other, UNSPECIFIED, "absent")
                continue
            certainty = _certainty(words, ent, sent, bool(ent._.negex))
            add(name, _position(words, ent, sent, positions, e.region), certainty)
    return [Triplet(e, p, c) for (e, p), c in best.items()]


def extract(report_text: str) -> list[Triplet]:
    """The triplets of one report (one per entity and position, the most certain kept)."""
    return _doc_triplets(nlp()(report_text))


def extract_many(texts: Iterable[str], batch_size: int = 256) -> Iterator[list[Triplet]]:
    """`extract` over many reports, batched through ``nlp.pipe``."""
    for doc in nlp().pipe(texts, batch_size=batch_size):
        yield _doc_triplets(doc)


def apply_label_policy(certainty: str, policy: str) -> int | None:
    """Existence under the project's ``data.label_policy`` (as `lib.data.labels` treats
    CheXpert's -1): present 1, absent 0; uncertain 0 under positive_only and u_zeros, 1 under
    u_ones, and None (the triplet is left out, unmentioned) under u_ignore."""
    if policy not in LABEL_POLICIES:
        raise ValueError(f"unknown label policy {policy!r}; valid: {list(LABEL_POLICIES)}")
    if certainty not in CERTAINTIES:
        raise ValueError(f"unknown certainty {certainty!r}; valid: {list(CERTAINTIES)}")
    if certainty == "present":
        return 1
    if certainty == "absent":
        return 0
    return {"u_ones": 1, "u_ignore": None}.get(policy, 0)
