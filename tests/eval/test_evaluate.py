"""Test-split evaluation from embeddings (lib/eval/evaluate.py), checked against independent
computations: retrieval_metrics, scikit-learn, fit_probe and bootstrap_ci."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lib.config.params import EvalParams
from lib.data.master import read_master
from lib.data.mimic import LABELS
from lib.errors import DataError
from lib.eval.embedding_files import Embeddings, study_reports
from lib.eval.evaluate import QueryRows, evaluate, fraction_key, label_key, row_metrics
from lib.eval.metrics import auc_per_label, retrieval_metrics, zero_shot_scores
from lib.eval.probe import fit_probe, subsample
from lib.eval.stats import bootstrap_ci
from tests.conftest import params_section

D = 16
PARAMS = params_section(
    EvalParams, probe_c=1.0, bootstrap=200, probe_fractions=(0.1, 1.0), recall_curve_max_k=20
)


def fake_embeddings(splits, seed=0, signal=2.0):
    """Embeddings where an image sits near its study's report and carries its labels."""
    rng = np.random.default_rng(seed)
    label_dirs = rng.normal(size=(len(LABELS), D))
    study_vec: dict[int, np.ndarray] = {}

    def study(s):
        return study_vec.setdefault(int(s), rng.normal(size=D))

    emb = {}
    for name, sp in splits.items():
        x = np.stack([study(s) for s in sp.study]) * signal
        x += np.clip(sp.labels, 0, 1) @ label_dirs + rng.normal(size=(len(sp), D))
        emb[f"{name}_image"] = x.astype(np.float32)
        emb[f"{name}_dicom"] = np.array(sp.dicom)
    test = splits["test"]
    report_study, _ = study_reports(test)
    emb["test_report_study"] = report_study
    emb["test_report_emb"] = np.stack([study(s) for s in report_study]).astype(np.float32)
    emb["test_tokens_kept"] = np.full(len(test), 18.0)
    emb["test_mask_mass"] = np.full(len(test), np.nan)
    emb["inverse_temperature"] = np.float32(10.0)
    prompts = (label_dirs + rng.normal(scale=0.5, size=label_dirs.shape)).astype(np.float32)
    negatives = (-label_dirs).astype(np.float32)
    return emb, prompts, negatives


@pytest.fixture(scope="module")
def case(small_master):
    splits = read_master(small_master[0])
    emb, pos, neg = fake_embeddings(splits)
    return splits, emb, pos, neg, evaluate(Embeddings.from_arrays(emb), splits, pos, neg, PARAMS)


def test_retrieval_equals_retrieval_metrics(case):
    splits, emb, _, _, res = case
    test = splits["test"]
    study, texts = study_reports(test)
    ref = retrieval_metrics(emb["test_image"], test.study, emb["test_report_emb"], study, texts)
    for key in ("i2t_R@1", "i2t_R@10", "t2i_R@5", "mean_recall", "t2i_median_rank"):
        assert res.metrics[key] == pytest.approx(ref[key], abs=1e-6), key
    assert res.metrics["i2t_R@10"] > 3 * res.metrics["chance_i2t_R@10"]  # the signal is found
    assert res.recall_curve["k"][:3] == [1.0, 2.0, 3.0]
    assert res.recall_curve["i2t"][9] == pytest.approx(ref["i2t_R@10"])


def test_zero_shot_auc_equals_sklearn(case):
    splits, emb, pos, neg, res = case
    test = splits["test"]
    scores = zero_shot_scores(emb["test_image"], pos, neg, scale=10.0)
    defined = []
    for c, lb in enumerate(LABELS):
        y = test.labels[:, c]
        if 0 < y.sum() < len(y):
            auc = roc_auc_score(y, scores[:, c])
            assert res.metrics[f"zero_shot_auc_{label_key(lb)}"] == pytest.approx(auc, abs=1e-6)
            defined.append(auc)
        else:
            assert res.metrics[f"zero_shot_auc_{label_key(lb)}"] is None
    assert res.metrics["zero_shot_mean_auc"] == pytest.approx(np.mean(defined), abs=1e-6)
    assert res.details["zero_shot_mode"] == "prompt pair"
    assert res.metrics["zero_shot_mean_auc"] > 0.6


def test_single_prompt_mode(case):
    splits, emb, pos, _, _ = case
    res = evaluate(
        Embeddings.from_arrays(emb), splits, pos, None, dataclasses.replace(PARAMS, bootstrap=20)
    )
    assert res.details["zero_shot_mode"] == "single prompt"
    assert "zero_shot_single_prompt_mean_auc" not in res.metrics


def _fit_probes(splits, emb, params=PARAMS):
    return {
        fraction_key(f): fit_probe(
            emb["train_image"],
            splits["train"].labels,
            emb["val_image"],
            splits["val"].labels,
            emb["test_image"],
            splits["test"].labels,
            LABELS,
            fraction=f,
            seed=params.seed,
            C=params.probe_c,
        )
        for f in params.probe_fractions
    }


def _shared(refs):
    return [lb for lb in LABELS if all(r.auc[lb] is not None for r in refs.values())]


def test_probe_equals_fit_probe(case):
    splits, emb, _, _, res = case
    refs = _fit_probes(splits, emb)
    shared = _shared(refs)
    for k, ref in refs.items():
        mean = np.mean([ref.auc[lb] for lb in shared])
        assert res.metrics[f"probe_{k}_mean_auc"] == pytest.approx(mean, abs=1e-6)
        assert res.details["probe"][k]["auc"] == ref.to_dict()["auc"]


@pytest.fixture(scope="module")
def rare_case(case):
    """The case with Pleural Other rare in train: positive only on train rows outside the 10 %
    subsample, so the 10 % probe cannot fit it and the 100 % probe can."""
    splits, emb, pos, neg, _ = case
    train = splits["train"]
    c = LABELS.index("Pleural Other")
    outside = np.setdiff1d(np.arange(len(train)), subsample(len(train), 0.1, PARAMS.seed))
    labels = train.labels.copy()
    labels[:, c] = 0
    labels[outside[:10], c] = 1
    test = splits["test"]
    test_labels = test.labels.copy()
    test_labels[:, c] = 0
    test_labels[: len(test) // 3, c] = 1  # both classes on test: only the subsample lacks one
    rare = {
        **splits,
        "train": dataclasses.replace(train, labels=labels),
        "test": dataclasses.replace(test, labels=test_labels),
    }
    return rare, emb, evaluate(Embeddings.from_arrays(emb), rare, pos, neg, PARAMS)


def test_every_fraction_averages_the_same_labels(rare_case):
    """The 10 % probe cannot score Pleural Other; the 100 % probe's mean leaves it out too,
    so the fractions compare on one label set (13 here), and the per-label AUC stays."""
    splits, emb, res = rare_case
    refs = _fit_probes(splits, emb)
    assert refs["10pct"].auc["Pleural Other"] is None
    assert refs["100pct"].auc["Pleural Other"] is not None
    shared = _shared(refs)
    assert "Pleural Other" not in shared
    m = res.metrics
    assert m["probe_mean_labels"] == len(shared) < len(LABELS)
    assert m["probe_100pct_labels_scored"] > m["probe_10pct_labels_scored"] == len(shared)
    for k, ref in refs.items():
        assert m[f"probe_{k}_mean_auc"] == pytest.approx(
            np.mean([ref.auc[lb] for lb in shared]), abs=1e-6
        )
        assert m[f"probe_{k}_mean_ap"] == pytest.approx(
            np.mean([ref.ap[lb] for lb in shared]), abs=1e-6
        )
        assert res.details["probe"][k]["mean_labels"] == shared
    assert res.details["probe"]["100pct"]["auc"]["Pleural Other"] is not None


def test_bootstrap_rounds_average_the_same_labels(rare_case):
    """The intervals are those of the shared-label mean, resample by resample."""
    splits, emb, res = rare_case
    refs = _fit_probes(splits, emb)
    shared = _shared(refs)
    rows, labels = res.rows, splits["test"].labels
    n = rows.n_images

    def full_mean(idx):
        img = idx[idx < n]
        per = {}
        for k, r in refs.items():
            s, y = r.test_scores[img], labels[img]
            per[k] = {}
            for c, lb in enumerate(LABELS):
                keep = y[:, c] != -1
                t = y[keep, c]
                ok = lb in shared and 0 < t.sum() < len(t)
                per[k][lb] = roc_auc_score(t, s[keep, c]) if ok else None
        common = [lb for lb in shared if all(per[k][lb] is not None for k in per)]
        return float(np.mean([per["100pct"][lb] for lb in common]))

    ref = bootstrap_ci(full_mean, rows.patient, PARAMS.bootstrap, PARAMS.seed)
    assert res.metrics["probe_100pct_mean_auc_ci_low"] == pytest.approx(ref.low, abs=1e-6)
    assert res.metrics["probe_100pct_mean_auc_ci_high"] == pytest.approx(ref.high, abs=1e-6)


def test_intervals_match_a_direct_bootstrap(case):
    _, _, _, _, res = case
    rows = res.rows
    table = row_metrics(rows, PARAMS.recall_ks)
    # The bootstrap of one metric through bootstrap_ci on the same rows and seed.
    ref = bootstrap_ci(
        lambda idx: table(idx)["t2i_R@10"], rows.patient, PARAMS.bootstrap, PARAMS.seed
    )
    assert res.metrics["t2i_R@10_ci_low"] == pytest.approx(ref.low, abs=1e-6)
    assert res.metrics["t2i_R@10_ci_high"] == pytest.approx(ref.high, abs=1e-6)
    for key in ("mean_recall", "zero_shot_mean_auc", "probe_100pct_mean_auc"):
        m = res.metrics
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"], key
    # The table on all rows reproduces the reported point values.
    full = table(np.arange(len(rows.patient)))
    assert full["zero_shot_mean_auc"] == pytest.approx(res.metrics["zero_shot_mean_auc"])
    assert full["i2t_R@1"] == pytest.approx(res.metrics["i2t_R@1"])


def test_rows_cover_images_then_reports_by_patient(case):
    splits, _, _, _, res = case
    rows, test = res.rows, splits["test"]
    assert rows.n_images == len(test)
    assert len(rows.patient) == len(test) + len(rows.t2i_rank)
    assert set(rows.patient[len(test) :].tolist()) <= set(test.subject.tolist())
    back = QueryRows.from_arrays(rows.to_arrays())
    assert np.array_equal(back.patient, rows.patient) and back.probe.keys() == rows.probe.keys()


def test_perfect_embeddings_give_perfect_retrieval(small_master):
    splits = read_master(small_master[0])
    emb, pos, _neg = fake_embeddings(splits, signal=1.0)
    test = splits["test"]
    study, texts = study_reports(test)
    # Each image is exactly its report's embedding; duplicate texts would tie, so make the
    # report embeddings one-hot per distinct text.
    text_id = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    onehot = np.eye(len(text_id), dtype=np.float32)
    emb["test_report_emb"] = onehot[[text_id[t] for t in texts]]
    row_text = dict(zip(study.tolist(), texts, strict=True))
    emb["test_image"] = onehot[[text_id[row_text[int(s)]] for s in test.study]]
    rng = np.random.default_rng(0)
    for name in ("train", "val"):
        emb[f"{name}_image"] = rng.normal(size=(len(splits[name]), len(text_id)))
    res = evaluate(
        Embeddings.from_arrays(emb),
        splits,
        pos[:, :1].repeat(len(text_id), 1),
        None,
        dataclasses.replace(PARAMS, bootstrap=10, probe_fractions=(1.0,)),
    )
    assert res.metrics["i2t_R@1"] == 1.0 and res.metrics["t2i_R@1"] == 1.0
    assert res.metrics["i2t_median_rank"] == 1.0


def test_stale_embeddings_are_refused(case):
    splits, emb, pos, neg, _ = case
    bad = {**emb, "test_dicom": emb["test_dicom"][::-1]}
    with pytest.raises(DataError, match="stale"):
        evaluate(Embeddings.from_arrays(bad), splits, pos, neg, PARAMS)


def test_ignored_labels_are_left_out(small_master):
    splits = read_master(small_master[0])
    emb, pos, neg = fake_embeddings(splits)
    test = splits["test"]
    labels = test.labels.copy()
    labels[::3, 0] = -1  # u_ignore: a third of Atelectasis masked
    splits = {**splits, "test": dataclasses.replace(test, labels=labels)}
    res = evaluate(
        Embeddings.from_arrays(emb), splits, pos, neg, dataclasses.replace(PARAMS, bootstrap=20)
    )
    keep = labels[:, 0] != -1
    scores = zero_shot_scores(emb["test_image"], pos, neg, scale=10.0)
    ref = roc_auc_score(labels[keep, 0], scores[keep, 0])
    assert res.metrics["zero_shot_auc_Atelectasis"] == pytest.approx(ref, abs=1e-6)


def test_finetune_scores_are_scored_like_the_probe(case):
    """eval.finetune: embed@X's fine-tuned test logits get AUC / AP with intervals, their
    runs' metadata in the details, and travel with the rows to compare."""
    splits, emb, pos, neg, _ = case
    test = splits["test"]
    noise = np.random.default_rng(0).normal(0, 0.7, (len(test), len(LABELS)))
    ft = {"100pct": (np.clip(test.labels, 0, 1) + noise).astype(np.float32)}
    meta = {"100pct": {"best_epoch": 2, "n_train": 99}}
    res = evaluate(Embeddings.from_arrays(emb), splits, pos, neg, PARAMS, ft, meta)
    m = res.metrics
    expected = auc_per_label(ft["100pct"], test.labels, LABELS)
    assert m["finetune_100pct_mean_auc"] == pytest.approx(expected["mean_auc"], abs=1e-5)
    assert m["finetune_100pct_mean_auc_ci_low"] <= m["finetune_100pct_mean_auc"]
    assert m["finetune_100pct_mean_auc"] <= m["finetune_100pct_mean_auc_ci_high"]
    assert res.details["finetune"]["100pct"]["best_epoch"] == 2
    back = QueryRows.from_arrays(res.rows.to_arrays())
    assert np.array_equal(back.finetune["100pct"], ft["100pct"]) and back.probe.keys() == {
        "10pct",
        "100pct",
    }
    assert "finetune_100pct_mean_auc" not in case[4].metrics  # off: no such metric
    with pytest.raises(DataError, match="re-run embed@"):
        evaluate(Embeddings.from_arrays(emb), splits, pos, neg, PARAMS, {"1pct": ft["100pct"][1:]})


def test_the_configured_probe_c_reaches_every_logistic_regression(case, monkeypatch):
    """eval.probe_c is what each label's LogisticRegression gets (params.yaml sets 0.01; a
    call that dropped it would fall back to fit_probe's default of 1.0 unnoticed)."""
    import lib.eval.probe as probe

    seen: list[float] = []

    class Recording(probe.LogisticRegression):
        def fit(self, x, y):
            seen.append(self.C)
            return super().fit(x, y)

    monkeypatch.setattr(probe, "LogisticRegression", Recording)
    splits, emb, pos, neg, res = case
    p = dataclasses.replace(PARAMS, probe_c=0.037, bootstrap=5)
    other = evaluate(Embeddings.from_arrays(emb), splits, pos, neg, p)
    assert seen and set(seen) == {0.037}
    # and it changes the numbers: a stronger penalty, another probe
    assert other.metrics["probe_100pct_mean_auc"] != res.metrics["probe_100pct_mean_auc"]
