"""The VQA part of stage compare: the rows of every model and floor (stages vqa@X,
vqa_pretrained, vqa_question_only, vqa_frequent), paired patient-bootstrap tests on the
same test questions (against the baseline, and of each model against the question-only
floor), the results.md section, and the summary numbers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.errors import DataError
from lib.eval.stats import PairedTest, paired_bootstrap_table

REFERENCES = ("pretrained",)  # scored like the models
FLOORS = ("question_only", "frequent")
QUESTION_ONLY = "question_only"
# Paired accuracy differences: overall and per head ("binary" = yes/no questions, ...).
TESTED = ("all", "binary", "category", "region", "severity")
# The heads the question-only floor must be beaten on (issue 29: binary and region).
FLOOR_HEADS = ("binary", "region")
LABELS = {
    "pretrained": "pretrained backbone, no fine-tuning",
    "question_only": "*floor:* question only (no image, no scene graph)",
    "frequent": "*floor:* most frequent train answer per question type",
}


@dataclass(frozen=True)
class VqaResults:
    """What the VQA stages wrote, by row name (models first, then references and floors);
    empty with ``skipped`` set when VQA was skipped (data.vqa null)."""

    metrics: dict[str, dict[str, Any]]
    tables: dict[str, pd.DataFrame]
    skipped: str | None = None


def read_results(metrics_dir: Path, tables_dir: Path, models: Sequence[str]) -> VqaResults:
    """Every row's metrics JSON and per-question table; a missing one names its stage."""
    names = [*models, *REFERENCES, *FLOORS]
    metrics: dict[str, dict[str, Any]] = {}
    tables: dict[str, pd.DataFrame] = {}
    for name in names:
        path = Path(metrics_dir) / f"{name}.json"
        if not path.is_file():
            stage = f"vqa@{name}" if name in models else f"vqa_{name}"
            raise DataError(f"{path}: not found; run `dvc repro {stage}` first")
        m = json.loads(path.read_text(encoding="utf-8"))
        if m.get("skipped"):
            return VqaResults({}, {}, str(m["skipped"]))
        metrics[name] = m
        tables[name] = pd.read_parquet(Path(tables_dir) / f"{name}.parquet")
    return VqaResults(metrics, tables)


def _aligned(a: pd.DataFrame, b: pd.DataFrame, what: str) -> pd.DataFrame:
    """The two tables' rows on the same test questions (the runs draw the same subsample)."""
    cols = ["question_id", "subject_id", "head", "correct"]
    joined = a[cols].merge(b[cols], on=["question_id", "subject_id", "head"], suffixes=("_a", "_b"))
    if len(joined) < max(len(a), len(b)):
        raise DataError(
            f"VQA tables {what}: only {len(joined)} of {len(a)} / {len(b)} test questions in "
            f"common; rerun the VQA stages with the same vqa params"
        )
    return joined


def _accuracy_table(correct: np.ndarray, head: np.ndarray):
    def table(idx: np.ndarray) -> dict[str, float | None]:
        out: dict[str, float | None] = {"all": float(correct[idx].mean()) if len(idx) else None}
        for h in TESTED[1:]:
            sel = idx[head[idx] == h]
            out[h] = float(correct[sel].mean()) if len(sel) else None
        return out

    return table


def paired(
    a: pd.DataFrame, b: pd.DataFrame, rounds: int, seed: int, level: float, what: str
) -> dict[str, PairedTest]:
    """Paired patient-bootstrap tests of accuracy (b − a), overall and per head."""
    j = _aligned(a, b, what)
    head = j["head"].to_numpy()
    ids = j["subject_id"].to_numpy()
    ta = _accuracy_table(j["correct_a"].to_numpy(float), head)
    tb = _accuracy_table(j["correct_b"].to_numpy(float), head)
    return paired_bootstrap_table(ta, tb, ids, rounds, seed, level)


def all_tests(
    res: VqaResults, models: Sequence[str], baseline: str, rounds: int, seed: int, level: float
) -> tuple[dict[str, dict[str, PairedTest]], dict[str, dict[str, PairedTest]]]:
    """(each row against the baseline, each model-like row against the question-only floor)."""
    against_base = {
        n: paired(res.tables[baseline], res.tables[n], rounds, seed, level, f"{baseline}/{n}")
        for n in res.metrics
        if n != baseline
    }
    q = res.tables[QUESTION_ONLY]
    against_floor = {
        n: paired(q, res.tables[n], rounds, seed, level, f"{QUESTION_ONLY}/{n}")
        for n in [*models, *REFERENCES]
    }
    return against_base, against_floor


def beats(test: PairedTest) -> bool:
    """Above by its interval: the lower end of the difference's interval is above 0."""
    return test.low is not None and test.low > 0


def _ci(iv: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not iv or iv.get("point") is None:
        return "—"
    if iv.get("low") is None:
        return f"{iv['point']:.{digits}f}"
    return f"{iv['point']:.{digits}f} [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"


def _num(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _diff(t: PairedTest) -> str:
    if t.diff is None:
        return "—"
    ci = f" [{t.low:+.3f}, {t.high:+.3f}]" if t.low is not None else ""
    p = f", p = {t.p_value:.3f}" if t.p_value is not None else ""
    return f"{t.diff:+.3f}{ci}{p}"


def _label(name: str, models: Sequence[str]) -> str:
    return f"Model {name}" if name in models else LABELS.get(name, name)


def section(
    res: VqaResults,
    models: Sequence[str],
    baseline: str,
    against_base: Mapping[str, Mapping[str, PairedTest]],
    against_floor: Mapping[str, Mapping[str, PairedTest]],
    level: float,
    is_demo: bool,
) -> list[str]:
    """The results.md section of VQA."""
    title = "## Visual question answering (MIMIC-Ext-CXR-QBA format), test questions"
    if res.skipped:
        return ["", title, "", f"Skipped: {res.skipped}."]
    ci = f"{100 * level:g} %"
    first = next(iter(res.metrics.values()))
    n_q, n_p = first["n_questions"], first["n_patients"]
    per_split = first.get("questions_per_split", {})
    bert = first.get("bertscore_model")
    lines = [
        "",
        title,
        "",
        f"Each backbone's frozen image tower (patch features) and text tower (question "
        f"tokens) under the scene-graph VQA head (lib/vqa/model.py), trained on "
        f"{per_split.get('train', '?')} train questions, the best of its epochs on "
        f"{per_split.get('val', '?')} val questions scored on {n_q} test questions of "
        f"{n_p} patients; {ci} patient-bootstrap intervals."
        + (
            " The demo's questions come from the corpus's own truth (stage demo_qba: "
            "a seeded subset of each study's, demo_qba.questions_per_study), val and test "
            "subsampled to vqa.max_eval_questions. BERTScore rests on the demo backbone's "
            "small BERT, trained on this corpus only: read it as a rough text overlap."
            if is_demo
            else ""
        ),
        "The heads are classifiers of the answer's tags; EM, token F1, BLEU-4 (corpus), "
        "ROUGE-L and BERTScore compare the predicted tags rendered into the dataset's "
        "template main answer with the reference main answer"
        + (f" (BERTScore: the text tower of `{bert}`)." if bert else " (BERTScore: off)."),
        "",
        "| Model | accuracy | yes/no | which finding | where | how severe | EM | F1 | "
        "BLEU-4 | ROUGE-L | BERTScore |",
        "|" + " --- |" * 11,
    ]
    for name, m in res.metrics.items():
        iv, by = m["intervals"], m["accuracy_by_head"]
        cells = [
            _label(name, models),
            _ci(iv["correct"]),
            *(_ci(by.get(h)) for h in ("binary", "category", "region", "severity")),
            _num(iv["em"]["point"]),
            _num(iv["f1"]["point"]),
            _num(m.get("bleu4")),
            _num(iv["rouge_l"]["point"]),
            _num(iv["bertscore"]["point"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Spatial (where-questions with reference boxes: the predicted region's box in the "
        "study's scene graph against them), clinical (yes/no questions, P(yes)) and "
        "explainability (the last SIM layer's question→patch attention: IoU of the patches "
        "holding half its mass with the boxes' patches, its mass inside the boxes, its "
        "entropy over log N; 1 = uniform).",
        "",
        "| Model | mean IoU | pointing (IoU > 0.5) | mAP@0.5 | mAP@0.75 | sensitivity | "
        "specificity | PPV | NPV | MCC | AUROC | attention IoU | attention mass | entropy |",
        "|" + " --- |" * 14,
    ]
    for name, m in res.metrics.items():
        sp, cl, iv = m["spatial"], m["clinical"], m["intervals"]
        cells = [
            _label(name, models),
            _num(sp.get("mean_iou")),
            _num(sp.get("pointing")),
            _num(sp.get("map50")),
            _num(sp.get("map75")),
            *(_num(cl.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv", "mcc")),
            _num(cl.get("auroc")),
            _ci(iv["attention_iou"]),
            _ci(iv["attention_mass"]),
            _num(iv["attention_entropy"]["point"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"### Against the question-only floor (accuracy difference, paired, {ci})",
        "",
        "| Model | yes/no | where | above the floor on both |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in against_floor.items():
        both = all(beats(t[h]) for h in FLOOR_HEADS)
        cells = [
            _label(name, models),
            _diff(t["binary"]),
            _diff(t["region"]),
            "yes" if both else "**no**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"### Paired bootstrap tests against Model {baseline} (accuracy, other − {baseline})",
        "",
        "| Model | all | yes/no | which finding | where | how severe |",
        "|" + " --- |" * 6,
    ]
    for name, t in against_base.items():
        lines.append(
            "| " + " | ".join([_label(name, models), *(_diff(t[k]) for k in TESTED)]) + " |"
        )
    return lines


def summary(
    res: VqaResults,
    against_base: Mapping[str, Mapping[str, PairedTest]],
    against_floor: Mapping[str, Mapping[str, PairedTest]],
) -> dict[str, Any]:
    """summary.json's ``vqa``: accuracy with intervals per row, and the tests' differences."""
    if res.skipped:
        return {"skipped": res.skipped}

    def test_dict(t: PairedTest) -> dict[str, float | None]:
        return {"diff": t.diff, "low": t.low, "high": t.high, "p_value": t.p_value}

    return {
        "accuracy": {n: m["intervals"]["correct"] for n, m in res.metrics.items()},
        "accuracy_by_head": {n: m["accuracy_by_head"] for n, m in res.metrics.items()},
        "against_baseline": {
            n: {k: test_dict(v) for k, v in t.items()} for n, t in against_base.items()
        },
        "against_question_only": {
            n: {k: test_dict(v) for k, v in t.items()} for n, t in against_floor.items()
        },
    }


def accuracy_by_type(res: VqaResults) -> dict[str, dict[str, float]]:
    """Row name -> question type -> test accuracy (for the figure)."""
    return {
        n: {t: float(v["accuracy"]) for t, v in m["accuracy_by_type"].items()}
        for n, m in res.metrics.items()
    }
