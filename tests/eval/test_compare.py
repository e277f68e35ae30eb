"""The cross-model comparison (lib/eval/compare.py) and evaluation figures (lib/eval/plots.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lib.data.mimic import LABELS
from lib.errors import DataError
from lib.eval.compare import (
    LITERATURE,
    TESTED,
    check_same_rows,
    data_description,
    finetune_section,
    floor_tests,
    floor_verdicts,
    grounding_section,
    maps_sentence,
    paired_tests,
    read_inputs,
    results_markdown,
    summary_json,
)
from lib.eval.embedding_files import ExplainMaps
from lib.eval.evaluate import QueryRows
from lib.eval.plots import (
    auc_bars_figure,
    confusion_figure,
    efficiency_figure,
    explain_figure,
    grouped_bars_figure,
    recall_curve_figure,
    roc_figure,
)
from lib.io import write_json

KS = (1, 5, 10)


def make_rows(seed: int, quality: float, n_patients=60, per_patient=3, n_texts=150) -> QueryRows:
    """Synthetic per-query results; higher quality = better ranks and scores."""
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    patients = np.repeat(np.arange(n_patients), per_patient)
    base = np.random.default_rng(0)  # labels and patients shared by every model
    labels = (base.random((n, len(LABELS))) < 0.3).astype(np.int8)
    scores = labels * quality + rng.normal(size=labels.shape)
    return QueryRows(
        patient=np.concatenate([patients, base.integers(0, n_patients, n_texts)]),
        n_images=n,
        i2t_rank=np.maximum(1, rng.geometric(min(0.9, 0.05 + quality / 5), n)),
        t2i_rank=np.maximum(1, rng.geometric(min(0.9, 0.05 + quality / 5), n_texts)),
        labels=labels,
        zero_shot=scores,
        probe={"100pct": scores + rng.normal(size=labels.shape)},
    )


def test_identical_models_do_not_differ():
    rows = {"A": make_rows(1, 1.0), "B": make_rows(1, 1.0)}
    tests = paired_tests(rows, KS, n_rounds=200, seed=0, level=0.95)
    assert set(tests) == {"B"} and set(tests["B"]) == {k for k, _ in TESTED}
    for t in tests["B"].values():
        assert t["diff"] == 0 and t["p_value"] == 1.0 and t["p_holm"] == 1.0


def test_a_much_better_model_is_significant_after_holm():
    rows = {"A": make_rows(1, 0.2), "B": make_rows(2, 3.0), "C": make_rows(3, 0.2)}
    tests = paired_tests(rows, KS, n_rounds=400, seed=0, level=0.95)
    auc = tests["B"]["zero_shot_mean_auc"]
    assert auc["diff"] > 0.2 and auc["ci_low"] > 0 and auc["p_holm"] < 0.05
    assert auc["p_holm"] >= auc["p_value"]  # adjustment never lowers a p-value
    assert tests["C"]["zero_shot_mean_auc"]["p_value"] > 0.01


def test_models_on_different_rows_are_refused():
    a = make_rows(1, 1.0)
    b = dataclasses.replace(make_rows(2, 1.0), patient=a.patient[::-1].copy())
    with pytest.raises(DataError, match="different test rows"):
        check_same_rows({"A": a, "B": b})
    with pytest.raises(DataError, match="baseline"):
        paired_tests({"B": a}, KS, 10, 0, 0.95, baseline="A")


def _metrics(value: float) -> dict:
    m = {
        "n_test_images": 180,
        "n_test_report_texts": 150,
        "n_test_patients": 60,
        "bootstrap_rounds": 200,
        "mean_patch_tokens_kept": 36.0,
    }
    for key in [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in KS] + [
        "zero_shot_mean_auc",
        "zero_shot_mean_ap",
        "probe_100pct_mean_auc",
        "probe_100pct_mean_ap",
    ]:
        m.update({key: value, f"{key}_ci_low": value - 0.01, f"{key}_ci_high": value + 0.01})
    for k in KS:
        m[f"chance_i2t_R@{k}"] = m[f"chance_t2i_R@{k}"] = k / 150
    return m


def test_results_markdown_labels_data_and_literature():
    rows = {"A": make_rows(1, 1.0), "B": make_rows(2, 1.5)}
    tests = paired_tests(rows, KS, 50, 0, 0.95)
    eff = {
        n: {"inference_images_per_second": 100.0, "process_peak_rss_mb": 900.0, "device": "cpu"}
        for n in rows
    }
    data = {
        "description": "the synthetic demo corpus",
        "is_demo": True,
        "zero_shot_mode": "prompt pair",
        "patch_tokens_total": {"A": 36, "B": 36},
    }
    metrics = {"A": {**_metrics(0.2), "probe_mean_labels": 11}, "B": _metrics(0.3)}
    md = results_markdown(
        metrics, eff, tests, data, ["100pct"], KS, 0.95,
        descriptions={"A": "Global CLIP baseline"},
    )  # fmt: skip
    assert "| **A** Global CLIP baseline | 20.0 [19.0, 21.0]" in md
    assert "| **B** | 30.0" in md  # no description: the name alone
    # the probe table says how many labels each mean covers
    assert "| Model | 100pct | Labels |" in md and "*Labels* counts them (of 14)" in md
    assert "| A | 0.200 [0.190, 0.210] | 11 |" in md and "| B | 0.300 [0.290, 0.310] | n/a |" in md
    assert "chance (random ranking)" in md and "not computed by this pipeline" in md
    assert "synthetic demo corpus" in md and "are not." in md
    for p in LITERATURE:
        assert f"| {p.model} | {p.year} | {p.t2i_r1:.1f} | {p.t2i_r10:.1f} | {p.mean_auc:.3f}" in md
    assert md.count("| B |") == len(TESTED) + 2  # the tests, the probe and efficiency rows


def _pixel_metrics(auc: float) -> dict:
    m = {"pca_dim": 256, "n_test_images": 180}
    for key, v in (("probe_100pct_mean_auc", auc), ("probe_100pct_mean_ap", 0.4)):
        m.update({key: v, f"{key}_ci_low": v - 0.02, f"{key}_ci_high": v + 0.02})
    return m


def test_reference_rows_are_rendered_as_floors():
    rows = {"A": make_rows(1, 1.0), "B": make_rows(2, 1.5)}
    tests = paired_tests(rows, KS, 50, 0, 0.95)
    eff = {
        n: {"inference_images_per_second": 100.0, "process_peak_rss_mb": 900.0, "device": "cpu"}
        for n in rows
    }
    data = {
        "description": "the synthetic demo corpus",
        "is_demo": True,
        "zero_shot_mode": "prompt pair",
        "patch_tokens_total": {"A": 36, "B": 36},
    }
    metrics = {"A": _metrics(0.2), "B": _metrics(0.3)}
    refs = {"pretrained": _metrics(0.1), "pixels": _pixel_metrics(0.25)}
    md = results_markdown(metrics, eff, tests, data, ["100pct"], KS, 0.95, refs)
    lines = md.splitlines()
    pre = next(ln for ln in lines if ln.startswith("| *reference:* pretrained backbone"))
    assert "no fine-tuning | 10.0 [9.0, 11.0]" in pre  # its retrieval, like A–E's
    pix = next(ln for ln in lines if ln.startswith("| *reference:* raw pixels + PCA(256)"))
    cells = [c.strip() for c in pix.strip("|").split("|")]
    # model, 3 + 3 recalls, zero-shot AUC / AP: none; then the probe
    assert cells[1:9] == ["—"] * 8
    assert cells[9:] == ["0.250 [0.230, 0.270]", "0.400 [0.380, 0.420]"]
    # The rows sit in the main table (before the chance row) and in the probe table.
    table = lines.index(pre), lines.index(pix)
    chance = next(i for i, ln in enumerate(lines) if ln.startswith("| chance"))
    assert max(table) < chance and lines.index(pre) > next(
        i for i, ln in enumerate(lines) if ln.startswith("| **B**")
    )
    assert sum(ln.startswith("| *reference:* raw pixels") for ln in lines) == 2
    # The floors line: A (0.2) beats the pretrained row (0.1), not the pixels (0.25); B both.
    floors = next(ln for ln in lines if ln.startswith("**Beats the floors?**"))
    assert "pretrained backbone, no fine-tuning (pretrained, 0.100)" in floors
    assert "raw pixels + PCA(256) probe (pixels, 0.250)" in floors
    assert ": A 0.200: pretrained yes, pixels no; B 0.300: pretrained yes, pixels yes. " in floors
    assert "interval of the difference (model − floor) lies above 0" in floors
    assert "intervals must not overlap" in floors
    # The paired tests stay against A: no reference in them.
    assert "| pretrained |" not in md and "| pixels |" not in md
    # Efficiency lists the models only.
    assert md.count("| *reference:*") == 4

    verdicts = floor_verdicts(metrics, refs, "probe_100pct_mean_auc")
    assert verdicts == {
        "A": {"pretrained": "yes", "pixels": "no"},
        "B": {"pretrained": "yes", "pixels": "yes"},
    }
    summary = summary_json(metrics, tests, ["100pct"], KS, True, refs)
    assert list(summary["models"]) == ["A", "B"]
    assert summary["references"]["pixels"] == {
        k: v for k, v in _pixel_metrics(0.25).items() if k.startswith("probe")
    }
    assert summary["references"]["pretrained"]["t2i_R@10"] == 0.1
    assert summary["probe_100pct_mean_auc_beats"] == verdicts


def test_floor_verdict_is_none_when_undefined():
    m = {"A": {"probe_100pct_mean_auc": None}}
    refs = {"pixels": {"probe_100pct_mean_auc": 0.7}}
    assert floor_verdicts(m, refs, "probe_100pct_mean_auc") == {"A": {"pixels": None}}


def test_a_point_estimate_above_the_floor_is_not_a_yes():
    """B's 0.909 against the floor's 0.907 (results.md on 4ba7e5f said "yes"): with
    intervals ~0.03 wide that is a tie, not a win."""
    key = "probe_100pct_mean_auc"

    def m(v):
        return {key: v, f"{key}_ci_low": v - 0.015, f"{key}_ci_high": v + 0.015}

    verdicts = floor_verdicts({"B": m(0.909), "X": m(0.850)}, {"pretrained": m(0.907)}, key)
    assert verdicts == {"B": {"pretrained": "tie"}, "X": {"pretrained": "no"}}


def test_floor_tests_pair_the_resamples_and_decide_the_verdict():
    """With the floor's rows, the verdict is the paired interval's: a model whose probe
    scores are the floor's plus a little signal on every image beats it although the
    two intervals overlap; an identical model ties."""
    floor = make_rows(3, 1.0)
    better = dataclasses.replace(
        floor, probe={"100pct": floor.probe["100pct"] + 0.3 * floor.labels}
    )
    tests = floor_tests({"B": better, "A": floor}, {"pretrained": floor}, "100pct", 200, 0, 0.95)
    b, same = tests["B"]["pretrained"], tests["A"]["pretrained"]
    assert b.low > 0 and b.diff > 0
    assert same.diff == 0 and same.low == same.high == 0
    key = "probe_100pct_mean_auc"
    wide = {key: 0.8, f"{key}_ci_low": 0.7, f"{key}_ci_high": 0.9}  # overlapping intervals
    verdicts = floor_verdicts({"B": wide, "A": wide}, {"pretrained": wide}, key, tests)
    assert verdicts == {"B": {"pretrained": "yes"}, "A": {"pretrained": "tie"}}
    # the floor's mean uses the labels the model's does (an untrainable label: NaN scores)
    probe = floor.probe["100pct"].copy()
    probe[:, 0] = np.nan
    gap = dataclasses.replace(floor, probe={"100pct": probe})
    t = floor_tests({"A": gap}, {"pretrained": floor}, "100pct", 20, 0, 0.95)["A"]["pretrained"]
    assert t.diff == 0


def test_data_description_names_the_prompts():
    details = {
        "zero_shot_mode": "prompt pair",
        "prompt_template": "x of {}",
        "negative_prompt_template": "no {}",
        "no_finding_prompts": ["normal", "abnormal"],
    }
    mode = data_description("data/demo", True, details, {"A": (6, 6)})["zero_shot_mode"]
    assert mode == (
        'P(positive) of the prompt pair "x of {}" / "no {}"; No Finding: "normal" / "abnormal"'
    )
    single = {**details, "zero_shot_mode": "single prompt", "no_finding_prompts": []}
    assert data_description("r", False, single, {"A": (6, 6)})["zero_shot_mode"] == (
        'cosine similarity to the prompt "x of {}"'
    )
    # each model's own grid: a ViT's 6 x 6 patches, a CNN's 3 x 3 last feature map
    grids = {"A": (6, 6), "ConVIRT": (3, 3)}
    assert data_description("r", False, single, grids)["patch_tokens_total"] == {
        "A": 36,
        "ConVIRT": 9,
    }


def test_literature_is_the_seeds_table():
    assert [(p.model, p.t2i_r1, p.t2i_r10, p.mean_auc) for p in LITERATURE] == [
        ("ConVIRT", 23.3, 61.2, 0.770),
        ("GLoRIA", 24.9, 63.8, 0.815),
        ("BioViL", 26.1, 66.4, 0.826),
        ("MGCA", 28.9, 70.1, 0.835),
        ("BioViL-L", 27.4, 68.2, 0.821),
        ("MAIRA-2", 31.2, 74.5, 0.868),
    ]


def test_literature_rows_name_their_sources_and_say_whose_numbers_they_are():
    md = results_markdown(
        {"A": _metrics(0.2)},
        {"A": {"inference_images_per_second": 1.0, "process_peak_rss_mb": 1.0, "device": "cpu"}},
        {},
        {
            "description": "d",
            "is_demo": True,
            "zero_shot_mode": "m",
            "patch_tokens_total": {"A": 4},
        },
        ["100pct"],
        KS,
        0.95,
    )
    assert "As quoted in the specification's comparison table" in md
    assert "As reported by each paper" not in md
    assert all(("arXiv:" in p.source or "doi:" in p.source) for p in LITERATURE)
    by_model = {p.model: p for p in LITERATURE}
    assert "arXiv:2210.06044" in by_model["MGCA"].source
    assert "NeurIPS 2022" in by_model["MGCA"].source
    assert "report-generation" in by_model["MAIRA-2"].note
    for p in LITERATURE:
        assert f"| {p.source} | {p.note or '—'} |" in md


def test_cnr_is_described_by_its_denominator_not_as_a_pooled_sd():
    text = "\n".join(grounding_section({"A": _g(["similarity"], 0.3)}, "95 %", True))
    assert "sqrt(var inside + var outside)" in text and "pooled" not in text


def test_figures_draw():
    rows = make_rows(0, 1.0)
    labels = rows.labels.copy()
    labels[:, 3] = 0  # a label without positives: drawn as undefined
    figs = [roc_figure("A", rows.zero_shot, labels, LABELS)]
    table = pd.DataFrame(
        {
            "label": LABELS,
            "zero_shot_auc": [0.7] * 13 + [None],
            "zero_shot_ci_low": [0.6] * 13 + [None],
            "zero_shot_ci_high": [0.8] * 13 + [None],
            "probe_auc": [0.75] * 14,
        }
    )
    figs.append(auc_bars_figure("A", table))
    curve = pd.DataFrame(
        {
            "k": [1, 2],
            "i2t": [0.1, 0.2],
            "t2i": [0.1, 0.3],
            "chance_i2t": [0.01, 0.02],
            "chance_t2i": [0.01, 0.02],
        }
    )
    figs.append(recall_curve_figure("A", curve))
    conf = {lb: {"tn": 5, "fp": 1, "fn": 2, "tp": 3} for lb in LABELS}
    conf["Fracture"] = None
    figs.append(confusion_figure("A", "100pct", conf))
    summary = pd.DataFrame(
        [
            {**_metrics(v), "model": n, "inference_images_per_second": 10 * v}
            for n, v in (("A", 0.2), ("B", 0.3))
        ]
    )
    figs.append(grouped_bars_figure(summary, [("t2i_R@1", "T2I R@1")]))
    figs.append(efficiency_figure(summary, "cpu"))
    img = np.zeros((64, 64), dtype=np.uint8)
    figs.append(
        explain_figure([img], ["Edema\n'edema'"], [("B", [np.ones((2, 2))]), ("C", [None])])
    )
    figs.append(explain_figure([], [], []))
    assert all(isinstance(f, Figure) for f in figs)


def test_label_retrieval_table_lists_the_models_that_have_it():
    from lib.eval.compare import label_retrieval_section

    with_label = _metrics(0.5)
    with_label.update(
        {"label_retrieval_images": 40, "label_retrieval_n_Edema": 12, "label_chance_P": 0.3}
    )
    for d in ("i2i", "t2i"):
        for k in (5, 10):
            key = f"label_{d}_P@{k}"
            with_label.update({key: 0.6, f"{key}_ci_low": 0.5, f"{key}_ci_high": 0.7})
            with_label[f"{key}_max"] = 0.9
    pixels = {"label_i2i_P@5": 0.4, "label_i2i_P@10": 0.35}  # no text side
    lines = label_retrieval_section(
        [("A", with_label), ("pixels", pixels), ("B", _metrics(0.5))], "95 %"
    )
    text = "\n".join(lines)
    assert "40 (Edema 12)" in text and "| I2I P@5 | I2I P@10 | T2I P@5 | T2I P@10 |" in text
    assert "| A | 0.600 [0.500, 0.700]" in text
    assert "| pixels | 0.400 | 0.350 | — | — |" in text
    assert "| B |" not in text  # no label metrics: no row
    assert "| chance (random ranking) | 0.300 | 0.300 | — | — |" in text
    assert label_retrieval_section([("B", _metrics(0.5))], "95 %") == []


def _g(maps, pointing):
    s = {"mean": pointing, "low": pointing - 0.05, "high": pointing + 0.05}
    entry = {"cnr": s, "pointing": s, "iou": s, "per_category": {"Edema": {"n": 3, "cnr": s}}}
    sub = {"phrases": 10, **{k: entry for k in (*maps, "random", "centre")}}
    return {
        "maps": list(maps),
        "floors": ["random", "centre"],
        "images": 8,
        "boxes_outside_crop": 1,
        "unknown_dicom_ids": 2,
        "official_test": sub,
        "all": {**sub, "phrases": 12},
    }


def test_grounding_section_lists_maps_floors_and_published_figures():
    lines = grounding_section(
        {"A": _g(["similarity"], 0.3), "C": _g(["mask", "attention"], 0.4)}, "95 %", True
    )
    text = "\n".join(lines)
    assert "| A | patch–phrase similarity | 0.300 [0.250, 0.350]" in text
    assert "| C | mask z |" in text and "| C | phrase→patch attention |" in text
    assert "*floor:* uniform random map" in text and "*floor:* centre prior" in text
    assert "10 phrases of 8 images" in text and "12 on all images" in text
    assert "Edema (3)" in text
    assert "BioViL (CXR-BERT) 1.027" in text and "not comparable" in text
    real = "\n".join(grounding_section({"A": _g(["similarity"], 0.3)}, "95 %", False))
    assert "comparable on MS-CXR" in real


def test_a_new_variant_appears_with_its_description_and_maps():
    """Variant F (a copy of C under another name, issue 30): its description, its tests
    against the first model (the baseline) and its maps come from its entry and flags alone;
    nothing in lib/eval/compare.py names a variant."""
    names = ("B", "C", "F")  # B first: the baseline is whichever model comes first
    rows = {n: make_rows(i, 1.0 + i / 2) for i, n in enumerate(names)}
    tests = paired_tests(rows, KS, 50, 0, 0.95)
    assert list(tests) == ["C", "F"]
    eff = {
        n: {"inference_images_per_second": 100.0, "process_peak_rss_mb": 900.0, "device": "cpu"}
        for n in names
    }
    data = {
        "description": "the synthetic demo corpus",
        "is_demo": True,
        "zero_shot_mode": "prompt pair",
        "patch_tokens_total": dict.fromkeys(names, 36),
    }
    maps = {"B": ["attention", "similarity"], "C": ["mask", "attention", "similarity"]}
    grounding = {n: _g(maps.get(n, maps["C"]), 0.3) for n in names}
    grounding["E"] = _g(["mask", "attention"], 0.3)
    md = results_markdown(
        {n: _metrics(0.2) for n in names}, eff, tests, data, ["100pct"], KS, 0.95,
        grounding=grounding, descriptions={"B": "local", "C": "+ Patch-IB", "F": "C again"},
    )  # fmt: skip
    assert "| **F** C again | 20.0" in md and "| **B** local |" in md
    assert "## Paired bootstrap tests against Model B" in md and "(variant − B)" in md
    assert "| F | I2T R@1 |" in md and "| F | mask z |" in md
    assert (
        "Maps: mask z (C, F, E); the phrase's word→patch attention of the local alignment "
        "(B, C, F, E); each patch token's cosine with the phrase's global embedding through "
        "the global image head (B, C, F); none for E, whose dropped tokens never reach the "
        "head." in md
    )
    for spelled in ("C–E", "B–E", "A–D", "A–E"):
        assert spelled not in md


def test_maps_sentence_names_only_the_maps_that_exist():
    assert maps_sentence({}) == "none"
    one = maps_sentence({"A": _g(["similarity"], 0.3)})
    assert one.startswith("each patch token's cosine") and one.endswith("(A)")


def test_grounding_section_says_why_nothing_was_scored():
    assert grounding_section({}, "95 %", True) == []
    lines = grounding_section({"A": {"variant": "A", "skipped": "no image"}}, "95 %", False)
    assert "- A: no image" in lines


def test_finetune_section_lists_the_fine_tuned_models_only():
    def ft(v):
        return {"finetune_1pct_mean_auc": v, "finetune_1pct_mean_auc_ci_low": v - 0.1,
                "finetune_1pct_mean_auc_ci_high": v + 0.1}  # fmt: skip

    rows = [("A", ft(0.7)), ("B", {}), ("C", ft(0.8))]
    lines = finetune_section(rows, ["1pct"])
    assert (
        "## Fine-tuning by fraction of labelled train images (ConVIRT protocol), mean AUC" in lines
    )
    assert "| A | 0.700 [0.600, 0.800] |" in lines and "| C | 0.800 [0.700, 0.900] |" in lines
    assert not any(line.startswith("| B |") for line in lines)
    assert finetune_section([("B", {})], ["1pct"]) == []  # eval.finetune off: no section


def _explain(n: int = 2, masked: bool = False) -> ExplainMaps:
    nan = np.full((n, 2, 3), np.nan)
    return ExplainMaps(
        row=np.arange(n), dicom=np.array(["d0", "d1"][:n]), image=np.array(["x.jpg"] * n),
        label=np.array(["Edema"] * n), keyword=np.array(["edema"] * n),
        mask=np.full((n, 2, 3), 0.5) if masked else nan,
        kept=np.ones((n, 2, 3), bool), attention=nan, grid=np.array([2, 3]),
    )  # fmt: skip


def test_read_inputs_reads_every_model_in_the_order_given(tmp_path):
    """What stage compare reads, for the models of models: in their order (F included),
    grounding of those scored, and the baseline's (the first's) details."""
    names = ["F", "A"]
    for n in [*names, "pretrained", "pixels"]:
        write_json(tmp_path / "m" / f"{n}.json", {"zero_shot_mean_auc": 0.5, "who": n})
    for n in names:
        write_json(tmp_path / "eff" / f"{n}.json", {"device": "cpu"})
        (tmp_path / "evals" / n).mkdir(parents=True)
        make_rows(1, 1.0).save(tmp_path / "evals" / n)
        (tmp_path / "emb" / n).mkdir(parents=True)
        _explain().save(tmp_path / "emb" / n)
    write_json(tmp_path / "evals" / "F" / "details.json", {"zero_shot_mode": "prompt pair"})
    write_json(tmp_path / "g" / "F.json", {"maps": ["mask"]})
    write_json(tmp_path / "g" / "pretrained.json", {"maps": ["similarity"]})
    got = read_inputs(
        names, tmp_path / "evals", tmp_path / "m", tmp_path / "eff", tmp_path / "emb",
        tmp_path / "g",
    )  # fmt: skip
    assert list(got.metrics) == names and got.metrics["A"]["who"] == "A"
    assert list(got.references) == ["pretrained", "pixels"]
    assert list(got.rows) == list(got.explain) == list(got.efficiency) == names
    assert list(got.grounding) == ["F", "pretrained"]
    assert got.details == {"zero_shot_mode": "prompt pair"} and got.grids["A"] == (2, 3)


def test_compare_stage_reports_a_variant_added_as_one_entry(tmp_path, monkeypatch):
    """stages/compare.py end to end on fake outputs of the models of a params.yaml whose
    models: holds a variant F (a copy of C, its own description) and nothing else names it."""
    import sys

    import yaml
    from PIL import Image

    from stages.compare import main

    repo = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    raw["models"] = {
        "A": raw["models"]["A"],
        "C": raw["models"]["C"],
        "F": {**raw["models"]["C"], "description": "C under another name"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    names = list(raw["models"])
    for i, n in enumerate([*names, "pretrained", "pixels"]):
        write_json(tmp_path / "m" / f"{n}.json", _metrics(0.2 + i / 100))
    for i, n in enumerate(names):
        write_json(
            tmp_path / "eff" / f"{n}.json",
            {"inference_images_per_second": 100.0, "process_peak_rss_mb": 9.0, "device": "cpu"},
        )
        (tmp_path / "evals" / n).mkdir(parents=True)
        make_rows(i, 1.0 + i / 2).save(tmp_path / "evals" / n)
        write_json(
            tmp_path / "evals" / n / "details.json",
            {"zero_shot_mode": "prompt pair", "prompt_template": "a {}",
             "negative_prompt_template": "no {}"},
        )  # fmt: skip
        (tmp_path / "emb" / n).mkdir(parents=True)
        _explain(masked=n != "A").save(tmp_path / "emb" / n)
        write_json(tmp_path / "g" / f"{n}.json", _g(["mask", "attention", "similarity"], 0.3))
    (tmp_path / "root").mkdir()
    Image.new("L", (40, 40), 128).save(tmp_path / "root" / "x.jpg")
    argv = ["compare", "--evals", "evals", "--eval-metrics", "m", "--efficiency", "eff",
            "--embeddings", "emb", "--root", "root", "--grounding", "g",
            "--summary", "s.json", "--report", "r.md", "--plots", "p"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", argv)
    main()
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "| **F** C under another name |" in report and "| **A** Global CLIP baseline |" in report
    assert "against Model A" in report and "| F | I2T R@1 |" in report
    assert "mask z (A, C, F)" in report
    summary = yaml.safe_load((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert list(summary["models"]) == names and set(summary["tests_vs_A"]) == {"C", "F"}
    assert (tmp_path / "p" / "explain.png").is_file()
