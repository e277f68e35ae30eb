import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from lib.eval.probe import Confusion, fit_probe, on_shared_labels, shared_labels, subsample

NAMES = ["Atelectasis", "Cardiomegaly", "Edema"]


def make_split(n, rng, d=16, signal=1.0, ignore_rate=0.0):
    """Embeddings (n, d) and labels (n, 3): label c is driven by feature c with strength
    `signal` plus unit noise; a share ignore_rate of entries is set to −1."""
    x = rng.standard_normal((n, d))
    logits = signal * x[:, :3] * 3 + rng.standard_normal((n, 3))
    y = (logits > 0.5).astype(np.int64)
    y[rng.random((n, 3)) < ignore_rate] = -1
    return x, y


def splits(seed=0, n=(300, 150, 150), **kw):
    rng = np.random.default_rng(seed)
    return [make_split(k, rng, **kw) for k in n]


def run(data, fraction=1.0, seed=0, **kw):
    (tx, ty), (vx, vy), (ex, ey) = data
    return fit_probe(tx, ty, vx, vy, ex, ey, NAMES, fraction=fraction, seed=seed, **kw)


# ---------------------------------------------------------------- subsample


def test_subsample_sizes_and_nesting():
    assert len(subsample(300, 0.01, 0)) == 3
    assert len(subsample(300, 0.1, 0)) == 30
    assert np.array_equal(subsample(300, 1.0, 0), np.arange(300))
    assert len(subsample(50, 0.001, 0)) == 1  # at least one row
    assert len(subsample(250, 0.01, 0)) == 3  # half-up, not half-to-even
    small = subsample(1000, 0.01, 4)
    assert np.all(np.diff(small) > 0)  # sorted, no repeats
    assert set(small) <= set(subsample(1000, 0.1, 4))  # same seed: nested
    assert np.array_equal(small, subsample(1000, 0.01, 4))
    assert not np.array_equal(small, subsample(1000, 0.01, 5))
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            subsample(10, bad, 0)


# ---------------------------------------------------------------- fit_probe


def test_metrics_equal_an_independent_sklearn_pipeline():
    data = splits(ignore_rate=0.1)
    res = run(data, fraction=0.5, seed=3)
    (tx, ty), _, (ex, ey) = data
    rows = subsample(len(tx), 0.5, 3)
    scaler = StandardScaler().fit(tx[rows])
    assert res.n_train_rows == len(rows) == 150
    for c, name in enumerate(NAMES):
        fit = rows[ty[rows, c] != -1]
        model = LogisticRegression(max_iter=1000).fit(scaler.transform(tx[fit]), ty[fit, c])
        keep = ey[:, c] != -1
        prob = model.predict_proba(scaler.transform(ex[keep]))[:, 1]
        assert res.auc[name] == pytest.approx(roc_auc_score(ey[keep, c], prob), abs=1e-6)
        assert res.ap[name] == pytest.approx(average_precision_score(ey[keep, c], prob), abs=1e-6)
        assert res.n_train[name] == len(fit)
        assert res.n_train_positive[name] == int(ty[fit, c].sum())
    assert res.mean_auc == pytest.approx(np.mean(list(res.auc.values())))
    assert res.mean_ap == pytest.approx(np.mean(list(res.ap.values())))


def test_separable_case():
    # Label c ⇔ feature c > 0, with a margin: feature c is pushed 1 away from 0, so a linear
    # rule separates every split perfectly.
    rng = np.random.default_rng(0)
    data = []
    for n in (300, 150, 150):
        x = rng.standard_normal((n, 16))
        x[:, :3] += np.sign(x[:, :3])
        data.append((x, (x[:, :3] > 0).astype(np.int64)))
    res = run(data)
    ey = data[2][1]
    for c, name in enumerate(NAMES):
        assert res.auc[name] == pytest.approx(1.0) and res.ap[name] == pytest.approx(1.0)
        n_pos = int(ey[:, c].sum())
        assert res.confusion[name] == Confusion(tn=len(ey) - n_pos, fp=0, fn=0, tp=n_pos)
        assert 0 < res.threshold[name] < 1
    assert res.undefined_labels == res.untrainable_labels == res.not_converged_labels == ()
    assert res.to_dict()["confusion"][NAMES[0]]["tp"] == res.confusion[NAMES[0]].tp


def test_threshold_maximises_youden_on_val():
    data = splits(signal=0.5)
    res = run(data)
    (tx, ty), (vx, vy), _ = data
    scaler = StandardScaler().fit(tx)
    for c, name in enumerate(NAMES):
        model = LogisticRegression(max_iter=1000).fit(scaler.transform(tx), ty[:, c])
        prob = model.predict_proba(scaler.transform(vx))[:, 1]
        y = vy[:, c]

        def youden(t, prob=prob, y=y):
            pred = prob >= t
            return pred[y == 1].mean() - pred[y == 0].mean()

        # Brute force over every candidate cut: the chosen one is optimal, and lies strictly
        # between val scores (midway), so round-off cannot move a val row across it.
        best = max(youden(t) for t in prob)
        assert youden(res.threshold[name]) == pytest.approx(best, abs=1e-12)
        assert np.min(np.abs(prob - res.threshold[name])) > 1e-9


def test_ignored_rows_do_not_matter():
    data = splits(ignore_rate=0.2)
    base = run(data)
    # Scramble the embeddings of rows whose Edema label is −1 in val and test: no change to
    # Edema's AUC / AP / threshold / confusion. (Train rows are not scrambled: all subsampled
    # train rows set the standardisation; the next test covers the train side.)
    (tx, ty), (vx, vy), (ex, ey) = data
    rng = np.random.default_rng(9)
    vx2, ex2 = vx.copy(), ex.copy()
    vx2[vy[:, 2] == -1] = 50 * rng.standard_normal(((vy[:, 2] == -1).sum(), vx.shape[1]))
    ex2[ey[:, 2] == -1] = 50 * rng.standard_normal(((ey[:, 2] == -1).sum(), ex.shape[1]))
    moved = fit_probe(tx, ty, vx2, vy, ex2, ey, NAMES, fraction=1.0, seed=0)
    for field in ("auc", "ap", "threshold", "confusion"):
        assert getattr(moved, field)["Edema"] == getattr(base, field)["Edema"]
    assert base.n_train["Edema"] == int((ty[:, 2] != -1).sum())


def test_ignored_train_rows_left_out_of_fit():
    data = splits(ignore_rate=0.2)
    (tx, ty), (vx, vy), (ex, ey) = data
    base = fit_probe(tx, ty, vx, vy, ex, ey, NAMES, fraction=1.0, seed=0)
    # Reverse the order of the embeddings of the train rows whose Edema label is −1. The
    # column means / stds (the standardisation) stay the same, so Edema, which never sees
    # those rows, must not move; the other labels see them with new embeddings, and do.
    hidden = np.flatnonzero(ty[:, 2] == -1)
    tx2 = tx.copy()
    tx2[hidden] = tx[hidden[::-1]]
    moved = fit_probe(tx2, ty, vx, vy, ex, ey, NAMES, fraction=1.0, seed=0)
    assert moved.auc["Edema"] == pytest.approx(base.auc["Edema"], abs=1e-12)
    assert moved.ap["Edema"] == pytest.approx(base.ap["Edema"], abs=1e-12)
    assert moved.threshold["Edema"] == pytest.approx(base.threshold["Edema"], abs=1e-9)
    assert moved.confusion["Edema"] == base.confusion["Edema"]
    assert moved.auc["Atelectasis"] != base.auc["Atelectasis"]


def test_one_class_subsample_is_untrainable():
    data = splits()
    (tx, ty), (vx, vy), (ex, ey) = data
    ty2 = ty.copy()
    ty2[:, 1] = 0  # Cardiomegaly: no positive in train
    res = fit_probe(tx, ty2, vx, vy, ex, ey, NAMES, fraction=1.0, seed=0)
    assert res.untrainable_labels == ("Cardiomegaly",)
    assert res.auc["Cardiomegaly"] is None and res.confusion["Cardiomegaly"] is None
    assert res.mean_auc == pytest.approx(np.mean([res.auc["Atelectasis"], res.auc["Edema"]]))
    # A one-row subsample holds one class for every label.
    one = run(data, fraction=1 / 300)
    assert one.n_train_rows == 1 and one.untrainable_labels == tuple(NAMES)
    assert one.mean_auc is None


def test_test_split_with_one_class_is_undefined_not_half():
    data = splits()
    (tx, ty), (vx, vy), (ex, ey) = data
    ey2 = ey.copy()
    ey2[:, 0] = 0
    res = fit_probe(tx, ty, vx, vy, ex, ey2, NAMES, fraction=1.0, seed=0)
    assert res.undefined_labels == ("Atelectasis",) and res.auc["Atelectasis"] is None
    assert res.mean_auc == pytest.approx(np.mean([res.auc["Cardiomegaly"], res.auc["Edema"]]))
    cm = res.confusion["Atelectasis"]  # still counted: only negatives
    assert cm.fn == cm.tp == 0 and cm.tn + cm.fp == len(ey)


def test_fraction_001_and_determinism():
    data = splits()
    a = run(data, fraction=0.01, seed=1)
    assert a.n_train_rows == 3
    assert a == run(data, fraction=0.01, seed=1)
    b = run(data, fraction=0.1, seed=1)
    assert b.n_train_rows == 30
    assert b == run(data, fraction=0.1, seed=1)
    assert b != run(data, fraction=0.1, seed=2)


def test_inputs_not_mutated_and_validated():
    data = splits(ignore_rate=0.1)
    copies = [(x.copy(), y.copy()) for x, y in data]
    run(data)
    for (x, y), (x0, y0) in zip(data, copies, strict=True):
        assert np.array_equal(x, x0) and np.array_equal(y, y0)
    (tx, ty), (vx, vy), (ex, ey) = data
    with pytest.raises(ValueError, match="only 1, 0 and -1"):
        fit_probe(tx, ty * 2, vx, vy, ex, ey, NAMES, fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="embedding widths differ"):
        fit_probe(tx, ty, vx[:, :5], vy, ex, ey, NAMES, fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="one column per name"):
        fit_probe(tx, ty, vx, vy, ex, ey, NAMES[:2], fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        fit_probe(tx, ty, vx, vy, ex, ey, NAMES, fraction=0.0, seed=0)


def test_test_scores_give_the_reported_auc():
    from lib.eval.metrics import binary_auc_ap

    data = splits(seed=7, ignore_rate=0.1)
    res = run(data)
    ex, ey = data[2]
    assert res.test_scores.shape == (len(ex), len(NAMES))
    for c, name in enumerate(NAMES):
        keep = ey[:, c] != -1
        auc, ap = binary_auc_ap(ey[keep, c], res.test_scores[keep, c])
        assert auc == pytest.approx(res.auc[name]) and ap == pytest.approx(res.ap[name])


def test_on_shared_labels_averages_every_fraction_over_the_same_labels():
    """A label the small fraction cannot fit leaves every fraction's mean, not only its own;
    the per-label values stay."""
    data = splits()
    (tx, ty), (vx, vy), (ex, ey) = data
    ty = ty.copy()
    small = subsample(len(tx), 0.1, 0)
    ty[small, 2] = 0  # Edema: no positive among the 10 % rows, positives elsewhere
    runs = {
        k: fit_probe(tx, ty, vx, vy, ex, ey, NAMES, fraction=f, seed=0)
        for k, f in (("10pct", 0.1), ("100pct", 1.0))
    }
    assert runs["10pct"].untrainable_labels == ("Edema",)
    assert runs["100pct"].mean_labels == tuple(NAMES)  # alone, it averages all three
    assert shared_labels(runs) == ("Atelectasis", "Cardiomegaly")
    shared = on_shared_labels(runs)
    for k, r in shared.items():
        assert r.mean_labels == ("Atelectasis", "Cardiomegaly")
        assert r.mean_auc == pytest.approx(np.mean([r.auc["Atelectasis"], r.auc["Cardiomegaly"]]))
        assert r.auc == runs[k].auc and r.to_dict()["mean_labels"] == list(r.mean_labels)
    assert shared["100pct"].auc["Edema"] is not None
