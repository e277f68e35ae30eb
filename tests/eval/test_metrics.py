import time

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from lib.data.mimic import LABELS
from lib.eval.metrics import (
    auc_per_label,
    combined_metric,
    label_prompts,
    retrieval_metrics,
    zero_shot_scores,
)

# ---------------------------------------------------------------- retrieval


def brute_force(img, img_study, txt, txt_study, texts, ks, tol=1e-6):
    """Query-by-query loops over Python lists, straight from the definition."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    cands: dict[str, tuple[np.ndarray, set]] = {}
    for t, e, st in zip(texts, txt, txt_study, strict=True):
        cands.setdefault(t, (e, set()))[1].add(st)
    cand_list = list(cands.values())

    def rank(scores, positive):
        best = max(s for s, p in zip(scores, positive, strict=True) if p)
        ahead = sum(1 for s, p in zip(scores, positive, strict=True) if not p and s >= best - tol)
        return 1 + ahead

    i2t = [
        rank([float(x @ e) for e, _ in cand_list], [st in studies for _, studies in cand_list])
        for x, st in zip(img, img_study, strict=True)
    ]
    t2i = [
        rank([float(x @ e) for x in img], [st in studies for st in img_study])
        for e, studies in cand_list
    ]
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = sum(r <= k for r in ranks) / len(ranks)
    out["mean_recall"] = sum(out.values()) / len(out)
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_mean_rank"] = sum(ranks) / len(ranks)
        out[f"{name}_median_rank"] = float(np.median(ranks))
    out["n_images"], out["n_text_candidates"] = float(len(img)), float(len(cand_list))
    return out


def random_case(seed, n_studies=40, d=8):
    """Multi-image studies, duplicate report texts, and exact score ties."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(5, d))
    pool = [f"report {i}" for i in range(9)]
    texts = [pool[i] for i in rng.integers(0, len(pool), n_studies)]
    # Identical texts embed identically (a deterministic encoder); texts 0 and 5 (etc.) share
    # a prototype, so distinct candidates tie exactly.
    txt = np.stack([protos[int(t.split()[1]) % 5] for t in texts])
    study_ids = np.arange(1000, 1000 + n_studies)
    img_study, img = [], []
    for s, e in zip(study_ids, txt, strict=True):
        for _ in range(rng.integers(1, 4)):
            img_study.append(s)
            exact = rng.random() < 0.4
            img.append(e.copy() if exact else e + rng.normal(scale=1.0, size=d))
    return np.array(img), np.array(img_study), txt, study_ids, texts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_brute_force(seed):
    img, img_study, txt, txt_study, texts = random_case(seed)
    assert len(set(texts)) < len(texts) and len(img) > len(txt)
    ks = (1, 2, 5)
    ours = retrieval_metrics(img, img_study, txt, txt_study, texts, ks)
    ref = brute_force(img, img_study, txt, txt_study, texts, ks)
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value), key


def test_retrieval_merges_identical_texts():
    # Studies 1 and 2 share "normal"; unmerged, image 1's best match would be study 2's
    # copy of its own report, a false negative at rank 1.
    txt = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = ["normal", "normal", "effusion"]
    img = np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0]])
    out = retrieval_metrics(img, [1, 2, 3], txt, [1, 2, 3], texts, ks=(1,))
    assert out["n_text_candidates"] == 2
    assert out["i2t_R@1"] == 1.0 and out["t2i_R@1"] == 1.0


def test_retrieval_ties_count_against_the_query():
    img = np.ones((6, 4))
    txt = np.ones((3, 4))
    out = retrieval_metrics(img, [1, 1, 2, 2, 3, 3], txt, [1, 2, 3], ["a", "b", "c"], ks=(1, 3))
    # Every score ties: each image has 2 negative candidates ahead, each text 4 images.
    assert out["i2t_R@1"] == 0.0 and out["i2t_mean_rank"] == 3.0 and out["i2t_R@3"] == 1.0
    assert out["t2i_R@1"] == 0.0 and out["t2i_mean_rank"] == 5.0


def test_retrieval_accepts_tensors():
    img, img_study, txt, txt_study, texts = random_case(3)
    ref = retrieval_metrics(img, img_study, txt, txt_study, texts)
    ours = retrieval_metrics(
        torch.from_numpy(img).half(),
        torch.from_numpy(img_study),
        torch.from_numpy(txt),
        torch.from_numpy(txt_study),
        texts,
    )
    assert ours["n_images"] == ref["n_images"]
    assert abs(ours["mean_recall"] - ref["mean_recall"]) < 0.05


def test_retrieval_rejects_unmatched_studies():
    img, txt = np.eye(3), np.eye(3)
    with pytest.raises(ValueError, match=r"image studies have no report.*\[9\]"):
        retrieval_metrics(img, [1, 2, 9], txt, [1, 2, 3], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"report studies have no image.*\[3\]"):
        retrieval_metrics(img, [1, 2, 2], txt, [1, 2, 3], ["a", "b", "c"])
    with pytest.raises(ValueError, match="one entry"):
        retrieval_metrics(img, [1, 2, 3], txt, [1, 2, 3], ["a", "b"])


def test_retrieval_is_fast_at_validation_scale():
    rng = np.random.default_rng(0)
    n_studies = 2700
    img_study = np.concatenate([np.arange(n_studies), rng.integers(0, n_studies, 300)])
    img = rng.normal(size=(len(img_study), 512)).astype(np.float32)
    txt = rng.normal(size=(n_studies, 512)).astype(np.float32)
    texts = [f"t{i % 2400}" for i in range(n_studies)]
    start = time.perf_counter()
    out = retrieval_metrics(img, img_study, txt, np.arange(n_studies), texts)
    elapsed = time.perf_counter() - start
    assert out["n_images"] == 3000 and out["n_text_candidates"] == 2400
    assert elapsed < 2.0, f"{elapsed:.2f} s for 3,000 × 2,700"


# ---------------------------------------------------------------- zero-shot


def test_zero_shot_cosine_and_pos_neg_softmax():
    rng = np.random.default_rng(1)
    img, pos, neg = rng.normal(size=(7, 5)), rng.normal(size=(3, 5)), rng.normal(size=(3, 5))

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    cos_pos, cos_neg = unit(img) @ unit(pos).T, unit(img) @ unit(neg).T
    np.testing.assert_allclose(zero_shot_scores(img, pos), cos_pos, rtol=1e-5)
    both = torch.softmax(torch.from_numpy(np.stack([cos_pos, cos_neg]) * 10.0), dim=0)[0]
    np.testing.assert_allclose(zero_shot_scores(img, pos, neg, scale=10.0), both, rtol=1e-5)
    with pytest.raises(ValueError, match="one negative"):
        zero_shot_scores(img, pos, neg[:2])


# ---------------------------------------------------------------- AUC / AP


def test_auc_ap_match_sklearn_with_ignore_mask():
    rng = np.random.default_rng(2)
    labels = rng.choice([1, 0, -1], size=(200, 4), p=[0.3, 0.5, 0.2])
    scores = labels * 0.5 + rng.normal(size=labels.shape)
    names = ["a", "b", "c", "d"]
    out = auc_per_label(scores, labels, names)
    assert out["undefined_labels"] == []
    for c, name in enumerate(names):
        keep = labels[:, c] != -1
        assert out["auc"][name] == pytest.approx(roc_auc_score(labels[keep, c], scores[keep, c]))
        assert out["ap"][name] == pytest.approx(
            average_precision_score(labels[keep, c], scores[keep, c])
        )
        assert out["n_positive"][name] + out["n_negative"][name] == keep.sum()
    assert out["mean_auc"] == pytest.approx(np.mean(list(out["auc"].values())))
    # The ignored rows matter: scoring them with the -1 included as a 0 differs.
    assert out["auc"]["a"] != pytest.approx(roc_auc_score(labels[:, 0] == 1, scores[:, 0]))


def test_undefined_labels_are_none_and_left_out_of_means():
    labels = np.array(
        [
            [1, -1, 1, -1],
            [0, 0, 1, 0],
            [1, -1, 1, 0],
            [0, 0, 1, 0],
        ]
    )
    scores = torch.tensor(
        [[0.9, 0.1, 0.5, 0.2], [0.2, 0.3, 0.4, 0.1], [0.8, 0.9, 0.3, 0.7], [0.1, 0.2, 0.6, 0.3]]
    )
    out = auc_per_label(scores, torch.from_numpy(labels), ["a", "b", "c", "d"])
    # a: perfect; b: no positive; c: no negative; d: no positive.
    assert out["auc"] == {"a": 1.0, "b": None, "c": None, "d": None}
    assert out["ap"]["b"] is None and out["ap"]["c"] is None
    assert out["undefined_labels"] == ["b", "c", "d"]
    assert out["mean_auc"] == 1.0 and out["mean_ap"] == 1.0
    none = auc_per_label(scores[:, 1:], torch.from_numpy(labels[:, 1:]), ["b", "c", "d"])
    assert none["mean_auc"] is None and none["mean_ap"] is None


def test_auc_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match=r"labels contain \[2\]"):
        auc_per_label(np.zeros((3, 1)), np.array([[1], [0], [2]]), ["a"])
    with pytest.raises(ValueError, match="len\\(names\\)"):
        auc_per_label(np.zeros((3, 2)), np.zeros((3, 2), int), ["a"])
    with pytest.raises(ValueError, match=r"\['a'\] contain NaN"):
        auc_per_label(np.full((2, 1), np.nan), np.array([[1], [0]]), ["a"])


# ---------------------------------------------------------------- combined metric


def test_combined_metric():
    assert combined_metric(0.5, 0.8) == pytest.approx(0.7 * 0.5 + 0.3 * 0.8)
    assert combined_metric(0.5, 0.8, recall_weight=0.6) == pytest.approx(0.6 * 0.5 + 0.4 * 0.8)
    assert combined_metric(0.5, None, recall_weight=1.0) == 0.5
    with pytest.raises(ValueError, match="mean_auc is None"):
        combined_metric(0.5, None)
    with pytest.raises(ValueError, match="recall_weight"):
        combined_metric(0.5, 0.8, recall_weight=1.5)
    with pytest.raises(ValueError, match="percent"):
        combined_metric(50.0, 0.8)


# ---------------------------------------------------------------- fast AUC / AP, ranks


@pytest.mark.parametrize("seed", range(6))
def test_binary_auc_ap_equal_sklearn_with_ties(seed):
    from lib.eval.metrics import binary_auc_ap

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    target = rng.random(n) < rng.uniform(0.05, 0.6)
    target[0], target[1] = True, False
    # Coarse scores: many exact ties, which is where AUC / AP definitions differ.
    score = np.round(rng.normal(size=n) + target * rng.uniform(0, 1.5), int(rng.integers(0, 2)))
    auc, ap = binary_auc_ap(target, score)
    assert auc == pytest.approx(roc_auc_score(target, score), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(target, score), abs=1e-12)


def test_binary_auc_ap_undefined_without_both_classes():
    from lib.eval.metrics import binary_auc_ap

    assert binary_auc_ap(np.ones(4), np.arange(4.0)) == (None, None)
    assert binary_auc_ap(np.zeros(4), np.arange(4.0)) == (None, None)


def test_ranks_summary_equal_retrieval_metrics():
    from lib.eval.metrics import retrieval_ranks, summarize_ranks

    img, img_study, txt, txt_study, texts = random_case(4)
    ranks = retrieval_ranks(img, img_study, txt, txt_study, texts)
    assert len(ranks.i2t) == len(img) and len(ranks.t2i) == len(set(texts))
    # Candidates are embedded from the first occurrence of each text.
    assert [texts[r] for r in ranks.candidate_row] == list(dict.fromkeys(texts))
    ref = brute_force(img, img_study, txt, txt_study, texts, (1, 3))
    assert summarize_ranks(ranks, (1, 3)) == pytest.approx(ref)


def test_chance_recall_matches_simulation():
    from lib.eval.metrics import chance_recall

    rng = np.random.default_rng(0)
    n, k = 30, 5
    m = rng.integers(1, 4, size=200)
    exact = chance_recall(m, n, k)
    hits = [
        (rng.permutation(n)[:k] < mi).any() for mi in m for _ in range(50)
    ]  # positives are items 0..m-1
    assert exact == pytest.approx(np.mean(hits), abs=0.02)
    assert chance_recall(np.array([1]), n, 1) == pytest.approx(1 / n)
    assert chance_recall(np.array([2]), 10, 10) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_auc_ap_columns_equal_per_column(seed):
    from lib.eval.metrics import auc_ap_columns, binary_auc_ap

    rng = np.random.default_rng(seed)
    n, c = 120, 7
    score = np.round(rng.normal(size=(n, c)), 1)  # ties within and across classes
    target = (rng.random((n, c)) < 0.3).astype(int)
    valid = rng.random((n, c)) > 0.15
    target[:, 5] = 1  # one class only: undefined
    valid[:, 6] = False  # nothing valid: undefined
    auc, ap = auc_ap_columns(score, target, valid)
    for j in range(c):
        ref = binary_auc_ap(target[valid[:, j], j], score[valid[:, j], j])
        if ref[0] is None:
            assert np.isnan(auc[j]) and np.isnan(ap[j])
        else:
            assert auc[j] == pytest.approx(ref[0], abs=1e-12)
            assert ap[j] == pytest.approx(ref[1], abs=1e-12)
            assert auc[j] == pytest.approx(
                roc_auc_score(target[valid[:, j], j], score[valid[:, j], j]), abs=1e-12
            )


# ---------------------------------------------------------------- prompts


def test_label_prompts_fill_templates_and_give_no_finding_its_own_pair():
    pos, neg = label_prompts("xray of {}", "xray without {}", ("normal xray", "abnormal xray"))
    assert len(pos) == len(neg) == len(LABELS)
    i, j = LABELS.index("No Finding"), LABELS.index("Pleural Effusion")
    assert (pos[j], neg[j]) == ("xray of pleural effusion", "xray without pleural effusion")
    assert (pos[i], neg[i]) == ("normal xray", "abnormal xray")
    # Without the pair, the templates turn No Finding into a double negative.
    pos, neg = label_prompts("xray of {}", "no {}")
    assert (pos[i], neg[i]) == ("xray of no finding", "no no finding")
    # A single prompt: no negatives, No Finding's positive prompt still replaced.
    pos, neg = label_prompts("xray of {}", "", ("normal xray", "abnormal xray"))
    assert neg is None and pos[i] == "normal xray"
    with pytest.raises(ValueError, match="positive, negative"):
        label_prompts("{}", "no {}", ("only one",))
