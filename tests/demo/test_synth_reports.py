"""Tests of lib/demo/synth_reports.py: file format, shapes, and that the text states each
CheXpert finding exactly as its state says."""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import cache

import numpy as np
import pytest

from lib.data.mimic import FINDINGS
from lib.demo import synth_reports as sr

STATE_CHOICES = ("pos", "neg", "unc", None)
BODY_SECTIONS = ("FINDINGS", "IMPRESSION", "CONCLUSION", "FINDINGS AND IMPRESSION", "_final")
HEADER_RE = re.compile(r"^ ([A-Z][A-Z ]*[A-Z]):(?: |  (\S.*))$")

# Hand-written, independent of the module's tables: words that only a statement about
# that finding may contain (anywhere in the file, indication included).
KEYWORDS = {
    "Atelectasis": r"atelecta",
    "Cardiomegaly": r"cardiomegaly|\bheart\b|cardiac silhouette",
    "Consolidation": r"consolidat",
    "Edema": r"edema",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Fracture": r"fractur|osseous",
    "Lung Lesion": r"nodul|\bmass",
    "Lung Opacity": r"opaci",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"thickening|plaque|scarring",
    "Pneumonia": r"pneumonia|infection",
    "Pneumothorax": r"pneumothorax",
    "Support Devices": r"\btubes?\b|\blines?\b|catheter|pacemaker|picc|sternotomy",
}
NEG_CUE = re.compile(
    r"\bno\b|\bnot\b|without|\bnormal\b|resolved|resolution|removal|removed", re.IGNORECASE
)
HEDGE_CUE = re.compile(
    r"possibl|cannot be excluded|not excluded|\bmay\b|likely|questionable|suspected|versus"
    r"|borderline|equivocal|apparent|concerning|could",
    re.IGNORECASE,
)


def compose(states, seed, views=("PA", "LATERAL"), n_images=2):
    return sr.compose_report(
        states, frontal_views=list(views), n_images=n_images, rng=np.random.default_rng(seed)
    )


def flat(text: str) -> str:
    """The text with line breaks and runs of spaces collapsed (words may wrap)."""
    return re.sub(r"\s+", " ", text)


def random_states(rng: np.random.Generator, p_none: float = 0.5) -> dict:
    out = {}
    for lab in FINDINGS:
        out[lab] = None if rng.random() < p_none else str(rng.choice(["pos", "neg", "unc"]))
    return out


@cache
def corpus(n: int = 3000, seed: int = 20240601):
    """(states, views, text, shape) for n draws with random states and views."""
    rng = np.random.default_rng(seed)
    view_sets = (["PA", "LATERAL"], ["AP"], ["AP", "AP"], ["PA"], ["AP", "LATERAL"], [""])
    out = []
    for _ in range(n):
        states = random_states(rng, p_none=float(rng.choice([0.3, 0.6, 0.9, 1.0])))
        views = view_sets[int(rng.integers(len(view_sets)))]
        text, shape = sr.compose_report(states, frontal_views=views, n_images=len(views), rng=rng)
        out.append((states, views, text, shape))
    return out


def strip_addendum(text: str) -> tuple[list[str], list[str]]:
    """(addendum lines, report lines) of one file."""
    lines = text.split("\n")[:-1]
    if lines[0] == sr.ADDENDUM_TITLE:
        i = lines.index(sr.SEPARATOR)
        return lines[:i], lines[i + 1 :]
    return [], lines


def sections(text: str) -> dict[str, str]:
    """Section name -> its text (lines joined); an unlabelled paragraph is "_final"."""
    _, lines = strip_addendum(text)
    assert lines[0] == sr.TITLE
    out: dict[str, list[str]] = {}
    current, has_content = None, False
    for line in lines[1:]:
        m = HEADER_RE.match(line)
        if m:
            current = m.group(1)
            assert current not in out, f"section {current} twice"
            out[current] = [m.group(2)] if m.group(2) else []
            has_content = bool(m.group(2))
        elif line == sr.BLANK:
            if has_content:
                current, has_content = None, False
        else:
            if current is None:
                current = "_final"
                assert current not in out, "two unlabelled paragraphs"
                out[current] = []
            out[current].append(re.sub(r"^\d+\. ", "", line[1:]))
            has_content = True
    return {k: re.sub(r"\s+", " ", " ".join(v)).strip() for k, v in out.items()}


def sentences(body: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)(?<!Dr\.) (?=[A-Z_0-9])", body) if s]


def body_text(text: str) -> str:
    secs = sections(text)
    return " ".join(secs[k] for k in BODY_SECTIONS if k in secs)


def template_regex(template: str) -> str:
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
        else:
            values = sorted(sr.SLOT_VALUES[part], key=len, reverse=True)
            out.append("(?:" + "|".join(map(re.escape, values)) + ")")
    return "".join(out)


@cache
def catalogue() -> list[tuple[re.Pattern, tuple]]:
    """Every sentence pattern the module may write, with the (label, state) pairs it states."""
    entries = []
    for lab, by_state in sr.TEMPLATES.items():
        for st, temps in by_state.items():
            entries += [(t, ((lab, st),)) for t in temps]
    for req, temps in sr.COMBINED:
        entries += [(t, tuple(sorted(req.items()))) for t in temps]
    for t in (*sr.FILLERS, *sr.NORMAL_IMPRESSIONS, *sr.COMMUNICATIONS):
        entries.append((t, ()))
    return [(re.compile(template_regex(t), re.IGNORECASE), a) for t, a in entries]


@cache
def classify(sentence: str) -> tuple:
    hits = {a for pat, a in catalogue() if pat.fullmatch(sentence)}
    assert hits, f"sentence from no table: {sentence!r}"
    assert len(hits) == 1, f"ambiguous sentence {sentence!r}: {hits}"
    return hits.pop()


def stated(text: str, section_names=BODY_SECTIONS) -> dict[str, set[str]]:
    secs = sections(text)
    out: dict[str, set[str]] = {}
    for name in section_names:
        for s in sentences(secs.get(name, "")):
            for lab, st in classify(s):
                out.setdefault(lab, set()).add(st)
    return out


# --- format ------------------------------------------------------------------------------------


def test_format_of_every_file():
    for _, _, text, shape in corpus():
        assert text.endswith("\n") and not text.endswith("\n\n")
        lines = text.split("\n")[:-1]
        for line in lines:
            assert len(line) <= sr.LINE_WIDTH, line
            assert "\t" not in line
            if line in (sr.TITLE, sr.ADDENDUM_TITLE):
                continue
            assert line.startswith(" ") and not line.startswith("  "), repr(line)
        if shape == "placeholder":
            assert len(text) < 30
            assert len(lines) == 1
            continue
        assert "___" in text
        _, report = strip_addendum(text)
        assert report[0] == sr.TITLE
        assert sr.TITLE not in report[1:]
        assert report[1].startswith(" EXAMINATION:  CHEST")
        secs = sections(text)
        assert list(secs)[:4] == ["EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON"]
        body = [
            k for k in secs if k not in ("EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON")
        ]
        expected = {
            "full": ["FINDINGS", "IMPRESSION"],
            "conclusion": ["FINDINGS", "CONCLUSION"],
            "no_impression": ["FINDINGS"],
            "findings_impression_combined": ["FINDINGS AND IMPRESSION"],
            "no_sections": ["_final"],
        }[shape]
        assert body == expected, (shape, text)
        assert all(secs[k] for k in secs), text
        assert re.search(r"___", secs["INDICATION"])


def test_both_header_styles_and_blank_lines():
    inline = block = 0
    for _, _, text, shape in corpus():
        if shape == "placeholder":
            continue
        assert "\n \n \n" not in text  # one blank line between sections
        inline += bool(re.search(r"^ (FINDINGS|IMPRESSION):  \S", text, re.M))
        block += bool(re.search(r"^ (FINDINGS|IMPRESSION): \n \n \S", text, re.M))
        assert re.search(r"^ INDICATION:  \S", text, re.M)
    assert inline > 100 and block > 1000


def test_examination_follows_views():
    for views, exam in [
        (["PA", "LATERAL"], {"CHEST (PA AND LAT)", "CHEST (PRE-OP PA AND LAT)"}),
        (["AP"], {"CHEST (PORTABLE AP)"}),
        (["AP", "AP"], {"CHEST (PORTABLE AP)"}),
        (["AP", "LATERAL"], {"CHEST (AP AND LAT)"}),
    ]:
        for seed in range(40):
            text, shape = compose({}, seed, views=views, n_images=len(views))
            if shape != "placeholder":
                assert sections(text)["EXAMINATION"] in exam
                assert not re.search(r"\b(One|1) views\b", text)
                if views == ["AP"]:
                    assert "AP" in sections(text)["TECHNIQUE"]


def test_placeholder_files():
    found = [(t, s) for _, _, t, s in corpus() if s == "placeholder"]
    assert found
    for text, _ in found:
        assert len(text) < 30 and text.startswith(" ") and text.endswith("\n")
        assert text in sr.PLACEHOLDERS


def test_addendum_on_top():
    with_add = [(st, t, s) for st, _, t, s in corpus() if t.startswith(sr.ADDENDUM_TITLE)]
    assert with_add
    for _, text, shape in with_add:
        assert shape != "placeholder"
        add, report = strip_addendum(text)
        assert add[0] == sr.ADDENDUM_TITLE
        assert add[1].startswith(" ADDENDUM:")
        assert add[-1] == sr.BLANK
        assert sr.SEPARATOR == " " + "_" * 78
        assert report[0] == sr.TITLE
        add_text = flat(" ".join(add))
        for lab, kw in KEYWORDS.items():
            assert not re.search(kw, add_text, re.IGNORECASE), (lab, add_text)
    n = sum(s != "placeholder" for *_, s in corpus())
    p = len(with_add) / n
    assert abs(p - sr.P_ADDENDUM) < 4 * math.sqrt(sr.P_ADDENDUM / n) + 0.002


def test_shape_proportions():
    counts = Counter(s for *_, s in corpus())
    n = sum(counts.values())
    assert set(counts) <= set(sr.SHAPES)
    assert math.isclose(sum(sr.SHAPE_PROBS.values()), 1.0)
    for shape, p in sr.SHAPE_PROBS.items():
        tol = 4 * math.sqrt(p * (1 - p) / n) + 0.002
        assert abs(counts[shape] / n - p) < tol, (shape, counts[shape], n, p)
    # about 12% of files have no IMPRESSION, about 5% neither FINDINGS nor IMPRESSION
    no_imp = sum(counts[s] for s in ("no_impression", "no_sections", "placeholder")) / n
    assert 0.09 < no_imp < 0.16
    assert 0.03 < (counts["no_sections"] + counts["placeholder"]) / n < 0.08


# --- state fidelity ----------------------------------------------------------------------------


def test_every_statement_follows_the_states():
    """Each body sentence comes from a table; the findings it states have exactly the states
    given; every finding that is not None is stated (in FINDINGS or the final paragraph)."""
    for states, _, text, shape in corpus():
        if shape == "placeholder":
            continue
        said = stated(text)
        for lab in FINDINGS:
            if states[lab] is None:
                assert lab not in said, (lab, text)
            else:
                assert said.get(lab) == {states[lab]}, (lab, states[lab], text)
        main = {
            "full": "FINDINGS",
            "conclusion": "FINDINGS",
            "no_impression": "FINDINGS",
            "findings_impression_combined": "FINDINGS AND IMPRESSION",
            "no_sections": "_final",
        }[shape]
        assert set(stated(text, (main,))) == {k for k, v in states.items() if v is not None}


def test_impression_summarises():
    seen_normal = seen_summary = 0
    for states, _, text, shape in corpus():
        if shape not in ("full", "conclusion"):
            continue
        name = "IMPRESSION" if shape == "full" else "CONCLUSION"
        imp = sections(text)[name]
        said = stated(text, (name,))
        salient = {k for k, v in states.items() if v in ("pos", "unc")}
        assert salient <= set(said)
        if salient:
            seen_summary += 1
            assert not any(n in imp for n in sr.NORMAL_IMPRESSIONS)
        else:
            seen_normal += 1
            assert any(n in imp for n in sr.NORMAL_IMPRESSIONS), imp
    assert seen_normal > 50 and seen_summary > 500


@pytest.mark.parametrize("label", FINDINGS)
def test_single_finding_keywords_and_cues(label):
    """Hand-written facts: only the finding's own words appear, and the sentences naming
    it carry (or lack) negation / hedging cues as its state says."""
    kw = re.compile(KEYWORDS[label], re.IGNORECASE)
    others = [re.compile(KEYWORDS[o], re.IGNORECASE) for o in FINDINGS if o != label]
    for state in ("pos", "neg", "unc"):
        for seed in range(60):
            text, shape = compose({label: state}, seed)
            if shape == "placeholder":
                continue
            assert kw.search(flat(text)), (label, state, text)
            for o in others:
                assert not o.search(flat(text)), (label, o.pattern, text)
            naming = [s for s in sentences(body_text(text)) if kw.search(s)]
            assert naming, text
            for s in naming:
                if state == "pos":
                    assert not NEG_CUE.search(s) and not HEDGE_CUE.search(s), s
                elif state == "neg":
                    assert NEG_CUE.search(s) and not HEDGE_CUE.search(s), s
                else:
                    assert HEDGE_CUE.search(s), s


def test_unmentioned_finding_leaves_no_trace():
    rng = np.random.default_rng(7)
    for label in FINDINGS:
        kw = re.compile(KEYWORDS[label], re.IGNORECASE)
        for seed in range(40):
            states = random_states(rng, p_none=0.0)
            states[label] = None
            text, _ = compose(states, seed, views=("AP",), n_images=1)
            assert not kw.search(flat(text)), (label, text)
    # nothing stated at all: none of the words, and still a well-formed report
    for seed in range(100):
        text, shape = compose({lab: None for lab in FINDINGS}, seed)
        for label in FINDINGS:
            assert not re.search(KEYWORDS[label], flat(text), re.IGNORECASE), (label, text)
        if shape != "placeholder":
            assert stated(text) == {}


def test_pneumothorax_facts():
    for seed in range(50):
        pos, pos_shape = compose({"Pneumothorax": "pos"}, seed)
        if pos_shape != "placeholder":
            pos = flat(pos).lower()
            assert "pneumothorax" in pos
            assert not re.search(r"\bno pneumothorax|without pneumothorax|resolution", pos)
        neg, neg_shape = compose({"Pneumothorax": "neg", "Pleural Effusion": "neg"}, seed + 1)
        if neg_shape != "placeholder":
            assert re.search(
                r"\bno (pleural effusion or )?pneumothorax|no pneumothorax or pleural effusion"
                r"|no evidence of pneumothorax|resolution of the previously seen \w+ pneumothorax"
                r"|no (focal consolidation, )?pleural effusion,? or pneumothorax",
                flat(neg).lower(),
            ), neg


def _patterns(label: str, state: str) -> list[re.Pattern]:
    temps = list(sr.TEMPLATES[label][state])
    temps += [t for req, ts in sr.COMBINED if req.get(label) == state for t in ts]
    return [re.compile(r"(?<!\w)" + template_regex(t), re.IGNORECASE) for t in temps]


def test_positive_text_has_no_negation_template_and_vice_versa():
    pats = {(lab, st): _patterns(lab, st) for lab in FINDINGS for st in ("pos", "neg")}
    for states, _, text, shape in corpus()[:1500]:
        if shape == "placeholder":
            continue
        body = body_text(text)
        for lab, st in states.items():
            if st in ("pos", "neg"):
                other = "neg" if st == "pos" else "pos"
                for pat in pats[lab, other]:
                    assert not pat.search(body), (lab, st, pat.pattern, body)


def test_a_finding_keeps_its_side():
    """All statements of one finding in one report agree on left / right."""
    for _, _, text, shape in corpus():
        if shape == "placeholder":
            continue
        secs = sections(text)
        sides: dict[str, set[str]] = {}
        for name in BODY_SECTIONS:
            for s in sentences(secs.get(name, "")):
                low = s.lower()
                if "left" in low and "right" in low:  # "left-sided pacemaker ... right atrium"
                    continue
                side = "left" if "left" in low else "right" if "right" in low else None
                for lab, _ in classify(s) if side else ():
                    sides.setdefault(lab, set()).add(side)
        assert all(len(v) == 1 for v in sides.values()), (sides, text)


def test_tables_cover_every_finding_and_state():
    assert set(sr.TEMPLATES) == set(FINDINGS)
    for lab in FINDINGS:
        for st in ("pos", "neg", "unc"):
            assert len(sr.TEMPLATES[lab][st]) >= 3, (lab, st)
    for req, _ in sr.COMBINED:
        assert set(req) <= set(FINDINGS) and set(req.values()) <= {"pos", "neg", "unc"}


def test_texts_vary():
    drawn = [compose({"Pleural Effusion": "pos", "Cardiomegaly": "neg"}, s) for s in range(200)]
    texts = {t for t, shape in drawn if shape != "placeholder"}
    assert len(texts) > 190
    effusion_sentences = set()
    for t in texts:
        effusion_sentences |= {s for s in sentences(body_text(t)) if "effusion" in s}
    assert len(effusion_sentences) > 20


# --- contract ----------------------------------------------------------------------------------


def test_deterministic_and_one_draw():
    states = {"Edema": "pos", "Cardiomegaly": "unc", "Pneumothorax": "neg"}
    a = compose(states, 123)
    b = compose(dict(reversed(list(states.items()))), 123)
    assert a == b
    assert compose(states, 124) != a
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    sr.compose_report(states, frontal_views=["AP"], n_images=1, rng=rng1)
    rng2.integers(0, 2**63 - 1)
    assert rng1.random() == rng2.random()


def test_missing_labels_count_as_none():
    full = {lab: None for lab in FINDINGS}
    full["Edema"] = "pos"
    assert compose(full, 9) == compose({"Edema": "pos"}, 9)


@pytest.mark.parametrize(
    "states, needle",
    [
        ({"No Finding": "pos"}, "No Finding"),
        ({"Pneumothrax": "pos"}, "Pneumothrax"),
        ({"Edema": "yes"}, "Edema"),
        ({"Edema": 1}, "Edema"),
    ],
)
def test_bad_states_raise(states, needle):
    with pytest.raises(ValueError, match=needle):
        compose(states, 0)


def _written(n: int = 1500, seed: int = 7):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        states = random_states(rng, p_none=float(rng.choice([0.3, 0.6, 0.9])))
        out.append((states, sr.write_report(states, frontal_views=["PA"], n_images=2, rng=rng)))
    return out


def test_write_report_is_compose_report_with_places():
    for seed in range(20):
        states = random_states(np.random.default_rng(seed), p_none=0.3)
        text, shape = compose(states, seed, views=["PA"], n_images=2)
        rep = sr.write_report(
            states, frontal_views=["PA"], n_images=2, rng=np.random.default_rng(seed)
        )
        assert (rep.text, rep.shape) == (text, shape)


def test_phrases_are_sentences_of_the_report_stating_their_finding():
    n_phrases = 0
    for states, rep in _written():
        if rep.shape == "placeholder":
            assert rep.phrases == {} and rep.locations == {}
            continue
        stated = {lab for lab, st in states.items() if st is not None}
        assert set(rep.phrases) <= stated
        assert {lab for lab, st in states.items() if st == "pos"} <= set(rep.phrases)
        for phrase in rep.phrases.values():
            assert phrase in flat(rep.text)  # the words as written, wrapping aside
            n_phrases += 1
    assert n_phrases > 1000


def test_a_findings_place_is_the_side_its_phrase_says():
    sides = {"left": ("left",), "right": ("right",), "both": ("bilateral", "bibasilar", "bases")}
    checked = 0
    for _states, rep in _written():
        for lab, loc in rep.locations.items():
            assert loc in sr.LOCATIONS
            phrase = rep.phrases[lab].lower()
            said = [s for s, words in sides.items() if any(w in phrase for w in words)]
            if lab in ("Support Devices",) or not said:
                continue  # "right atrium" of a pacemaker lead; phrases without a side
            assert loc.split()[0] in said, (lab, loc, phrase)
            checked += 1
    assert checked > 300


def test_a_finding_stated_with_the_effusion_lies_at_the_base_on_its_side():
    checked = 0
    for _, rep in _written(3000, seed=11):
        effusion = rep.phrases.get("Pleural Effusion")
        for lab, loc in rep.locations.items():
            if lab != "Pleural Effusion" and rep.phrases.get(lab) == effusion:
                side = rep.locations["Pleural Effusion"].split()[0]
                assert loc == f"{side} lower", (lab, loc, effusion)
                checked += 1
    assert checked > 20
