"""lib/vqa/metrics.py against hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lib.vqa import metrics as m


def test_exact_match_normalises_case_punctuation_and_articles():
    got = m.exact_match(
        ["Yes, there is a pleural effusion.", "The left lung", "no"],
        ["yes there is pleural effusion", "right lung", "No."],
    )
    assert got.tolist() == [1.0, 0.0, 1.0]


def test_token_f1_by_hand():
    # pred tokens: left lower lung; ref: left lung base -> 2 common, P = 2/3, R = 2/3
    got = m.token_f1(["The left lower lung.", "", "effusion"], ["left lung base", "", "edema"])
    assert got[0] == pytest.approx(2 / 3)
    assert got[1] == 1.0  # both empty
    assert got[2] == 0.0
    with pytest.raises(ValueError, match="2 predictions against 1"):
        m.token_f1(["a", "b"], ["a"])


def test_bleu_and_rouge():
    assert m.bleu4(
        ["there is a small left pleural effusion"] * 2,
        ["there is a small left pleural effusion"] * 2,
    ) == pytest.approx(1.0)
    assert m.bleu4(["no"], ["yes there is an effusion"]) == 0.0
    # ROUGE-L: LCS of "left lung base" and "left lower lung base" = 3; P = 1, R = 3/4
    got = m.rouge_l(["left lung base"], ["left lower lung base"])
    assert got[0] == pytest.approx(2 * 1 * 0.75 / 1.75)


def test_box_iou_mean_iou_and_pointing():
    a, b = [0, 0, 10, 10], [5, 0, 15, 10]  # overlap 50, union 150
    assert m.box_iou(a, b) == pytest.approx(1 / 3)
    assert m.box_iou(a, [20, 20, 30, 30]) == 0.0
    assert m.box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    preds, gts = [a, a, [0, 0, 10, 8]], [b, a, a]  # IoUs 1/3, 1, 0.8
    assert m.mean_iou(preds, gts) == pytest.approx((1 / 3 + 1 + 0.8) / 3)
    assert m.pointing_accuracy(preds, gts) == pytest.approx(2 / 3)
    assert m.pointing_accuracy([], []) is None


def test_average_precision_by_hand():
    gt = [[[0, 0, 10, 10]], [[0, 0, 10, 10]]]
    # Scores: image 0 hit (0.9), image 1 miss (0.8), image 1 hit (0.7).
    preds = [[[0, 0, 10, 10]], [[50, 50, 60, 60], [1, 0, 10, 10]]]
    scores = [[0.9], [0.8, 0.7]]
    # precision/recall: (1, .5), (.5, .5), (2/3, 1): AP = .5 * 1 + .5 * 2/3
    assert m.average_precision(preds, scores, gt, 0.5) == pytest.approx(0.5 + 1 / 3)
    # At IoU 0.95 the shifted box (IoU 0.9) misses: AP = 0.5 * 1
    assert m.average_precision(preds, scores, gt, 0.95) == pytest.approx(0.5)
    assert m.average_precision([[]], [[]], [[]]) is None


def test_binary_clinical_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4, 0.7]
    got = m.binary_clinical(y, s)
    tp, tn, fp, fn = 3, 3, 1, 1
    assert (got["tp"], got["tn"], got["fp"], got["fn"]) == (tp, tn, fp, fn)
    assert got["sensitivity"] == got["specificity"] == got["ppv"] == got["npv"] == 0.75
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert got["mcc"] == pytest.approx(mcc) == pytest.approx(0.5)
    # AUROC: of 16 (pos, neg) pairs, 0.3 is beaten by 0.6 and 0.4: 14/16
    assert got["auroc"] == pytest.approx(14 / 16)
    one_class = m.binary_clinical([0, 0], [0.1, 0.9])
    assert one_class["sensitivity"] is None and one_class["auroc"] is None
    assert one_class["mcc"] is None
    json.dumps(one_class, allow_nan=False)  # None, never NaN
    with pytest.raises(ValueError, match="0/1"):
        m.binary_clinical([2], [0.5])


def test_per_type_accuracy():
    got = m.per_type_accuracy([1, 0, 1, 1], ["where", "has", "has", "where"])
    assert got == {"has": {"n": 2, "accuracy": 0.5}, "where": {"n": 2, "accuracy": 1.0}}


def _tiny_bert(folder, auto_map: bool = False):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = [
        "there",
        "is",
        "a",
        "no",
        "small",
        "left",
        "right",
        "pleural",
        "effusion",
        "lung",
        "base",
    ]
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=5 + len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    if auto_map:
        raw = json.loads((folder / "config.json").read_text())
        raw["auto_map"] = {"AutoModel": "evil.Model"}
        (folder / "config.json").write_text(json.dumps(raw))


def test_bertscore_runs_a_local_text_tower(tmp_path):
    _tiny_bert(tmp_path)
    refs = ["there is a small left pleural effusion", "no effusion"]
    same = m.bertscore(refs, refs, tmp_path)
    assert same.shape == (2,) and np.allclose(same, 1.0, atol=1e-5)
    other = m.bertscore(["right lung base", "no effusion"], refs, tmp_path)
    assert other[0] < 0.999 and other[1] == pytest.approx(1.0, abs=1e-5)


def test_bertscore_refuses_a_folder_with_remote_code(tmp_path):
    from lib.errors import PipelineError

    _tiny_bert(tmp_path, auto_map=True)
    with pytest.raises(PipelineError, match="auto_map"):
        m.bertscore(["a"], ["a"], tmp_path)


def test_bertscore_needs_a_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        m.bertscore(["a"], ["a"], tmp_path)
