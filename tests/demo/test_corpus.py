import gzip
import hashlib
import io
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lib.config.params import DemoParams
from lib.data.mimic import (
    CHEXPERT_COLUMNS,
    CHEXPERT_FILE,
    DICOM_ID_PATTERN,
    LABELS,
    METADATA_COLUMNS,
    METADATA_FILE,
    MS_CXR_COLUMNS,
    REPORTS_ZIP,
    SPLIT_FILE,
    STUDY_ID_PATTERN,
    SUBJECT_ID_PATTERN,
    image_relpath,
)
from lib.data.reports import parse_report
from lib.demo import corpus as corpus_module
from lib.demo.boxes import DIFF_THRESHOLD
from lib.demo.corpus import (
    LABEL_RATES,
    build_tables,
    draw_states,
    grounding_rows,
    images_digest,
    render_task,
    write_corpus,
)
from lib.demo.synth_images import render_cxr
from lib.eval.box_scores import read_boxes
from tests.conftest import params_section


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "mimic"
    write_corpus(params_section(DemoParams, min_positive_rate=0.0, n_patients=40, workers=2), root)
    return root


@pytest.fixture(scope="module")
def big():
    """Tables (no pixels) of a corpus large enough for proportions."""
    return build_tables(params_section(DemoParams, min_positive_rate=0.0, n_patients=3000))


def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_columns_and_id_shapes(corpus):
    meta = pd.read_csv(corpus / METADATA_FILE, dtype=str, keep_default_na=False)
    assert tuple(meta.columns) == METADATA_COLUMNS
    assert meta["subject_id"].str.match(SUBJECT_ID_PATTERN).all()
    assert meta["study_id"].str.match(STUDY_ID_PATTERN).all()
    assert meta["dicom_id"].str.match(DICOM_ID_PATTERN).all()
    assert tuple(pd.read_csv(corpus / SPLIT_FILE).columns) == (
        "dicom_id",
        "study_id",
        "subject_id",
        "split",
    )
    chex = pd.read_csv(corpus / CHEXPERT_FILE)
    assert tuple(chex.columns) == CHEXPERT_COLUMNS
    assert set(np.unique(chex[list(LABELS)].fillna(9).to_numpy())) <= {1.0, 0.0, -1.0, 9}
    for r in meta.head(30).itertuples():
        img = corpus / image_relpath(int(r.subject_id), int(r.study_id), r.dicom_id)
        with Image.open(img) as im:
            assert im.format == "JPEG" and im.mode == "L"
            assert im.size == (int(r.Columns), int(r.Rows)) and min(im.size) == 256
    with zipfile.ZipFile(corpus / REPORTS_ZIP) as zf:
        names = zf.namelist()
        assert all(re.fullmatch(r"files/p1\d/p1\d{7}/s5\d{7}\.txt", n) for n in names)
        assert len(names) == meta["study_id"].nunique()


def test_sha256sums_list_every_file_as_mimic_does(corpus):
    """SHA256SUMS.txt (data.verify_checksums): `<sha256>  <relative path>` for every other
    file of the corpus, images included, each digest that of the file's bytes."""
    from lib.data.checksums import read_checksums

    sums = read_checksums(corpus / "SHA256SUMS.txt")
    files = {p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file()}
    assert set(sums) == files - {"SHA256SUMS.txt"}
    assert any(p.startswith("files/p1") and p.endswith(".jpg") for p in sums)
    for rel in sorted(sums)[:20]:
        assert sums[rel] == hashlib.sha256((corpus / rel).read_bytes()).hexdigest()


def test_split_is_patient_disjoint(corpus):
    sp = pd.read_csv(corpus / SPLIT_FILE)
    assert set(sp["split"]) == {"train", "validate", "test"}
    assert (sp.groupby("subject_id")["split"].nunique() == 1).all()


def test_deterministic_and_independent_of_workers(corpus, tmp_path):
    other = tmp_path / "again"
    write_corpus(params_section(DemoParams, min_positive_rate=0.0, n_patients=40, workers=1), other)
    assert tree_digest(other) == tree_digest(corpus)
    with gzip.open(corpus / METADATA_FILE) as fh:
        assert fh.read()  # readable gzip with a fixed header


def test_view_mix_matches_mimic(big):
    frac = big["metadata"]["ViewPosition"].fillna("").value_counts(normalize=True)
    for view, target in {"AP": 0.39, "PA": 0.255, "LATERAL": 0.22, "LL": 0.09, "": 0.04}.items():
        assert frac[view] == pytest.approx(target, abs=0.02), view
    rare = set(frac.index) - {"AP", "PA", "LATERAL", "LL", ""}
    assert {"AP AXIAL", "SWIMMERS"} & rare and frac[list(rare)].sum() < 0.01
    per_study = big["metadata"].groupby("study_id").size()
    assert per_study.min() == 1 and per_study.max() == 4
    assert big["metadata"].groupby("subject_id")["study_id"].nunique().mean() > 2


def test_report_shapes_and_missing_labels(big):
    reports = list(big["reports"].values())
    parsed = [parse_report(t) for t in reports]
    no_impression = np.mean([p.impression == "" for p in parsed])
    neither = np.mean([p.impression == "" and p.findings == "" for p in parsed])
    assert no_impression == pytest.approx(0.12, abs=0.03)
    assert neither == pytest.approx(0.05, abs=0.02)
    assert 0 < sum(len(t.strip()) < 30 for t in reports) < 0.02 * len(reports)
    n_studies = big["metadata"]["study_id"].nunique()
    assert 0 < n_studies - len(big["chexpert"]) < 0.03 * n_studies


SEED_TRAIN_PREVALENCE = {  # the spec's table: positives / 213,364 training images
    "Atelectasis": 0.202,
    "Cardiomegaly": 0.196,
    "Consolidation": 0.047,
    "Edema": 0.119,
    "Enlarged Cardiomediastinum": 0.031,
    "Fracture": 0.019,
    "Lung Lesion": 0.027,
    "Lung Opacity": 0.225,
    "No Finding": 0.334,
    "Pleural Effusion": 0.238,
    "Pleural Other": 0.0085,
    "Pneumonia": 0.071,
    "Pneumothorax": 0.046,
    "Support Devices": 0.296,
}


def test_label_prevalence_near_the_seed(big):
    chex = big["chexpert"]
    for label, target in SEED_TRAIN_PREVALENCE.items():
        assert (chex[label] == 1).mean() == pytest.approx(target, abs=0.035), label
        assert (chex[label] == 1).mean() == pytest.approx(target, rel=0.35), label


def test_min_positive_rate_floors_the_rare_findings_only():
    """demo.min_positive_rate raises each finding's positive rate to the floor and leaves the
    common ones at MIMIC's rates; 0 is MIMIC's rates exactly (same draws)."""
    n = 20_000

    def rates(floor: float) -> dict[str, float]:
        rng = np.random.default_rng(7)
        draws = [draw_states(rng, i % 2 == 0, floor) for i in range(n)]
        return {lb: float(np.mean([d[lb] == "pos" for d in draws])) for lb in LABEL_RATES}

    mimic, floored = rates(0.0), rates(0.08)
    assert mimic == rates(0.0)
    for label, (p_pos, _, _) in LABEL_RATES.items():
        if label == "Support Devices":  # follows the view (portable studies), not the floor
            continue
        # "Lung Opacity" also follows its children; an abnormal study with nothing drawn gets
        # one random finding: both only add positives.
        assert floored[label] >= 0.08 - 0.01, label
        if p_pos >= 0.12:
            assert floored[label] == pytest.approx(mimic[label], abs=0.015), label
    assert floored["Pleural Other"] > 8 * mimic["Pleural Other"]


KEYWORDS = {  # words the CheXpert labeler reads as each finding
    "Pneumothorax": ("pneumothora",),
    "Pleural Effusion": ("effusion",),
    "Edema": ("edema", "congestion"),
    "Pneumonia": ("pneumonia", "infection", "infectious"),
    "Fracture": ("fracture", "osseous"),
}


def test_findings_are_in_the_words(big):
    """What the CheXpert file says is what the report says (keywords, independent of the
    report writer's templates)."""
    chex = big["chexpert"].set_index("study_id")
    text = {int(k.split("/s")[-1][:-4]): parse_report(v) for k, v in big["reports"].items()}
    for label, words in KEYWORDS.items():
        for study, value in chex[label].items():
            p = text[study]
            body = (p.findings + " " + p.impression + " " + p.last_paragraph).lower()
            if value in (1.0, 0.0, -1.0):
                assert any(w in body for w in words), (label, study, value, body)


def test_findings_are_in_the_pixels():
    """A linear model on 32x32 thumbnails of frontal images recovers the labels."""
    tables = build_tables(params_section(DemoParams, min_positive_rate=0.0, n_patients=350, seed=5))
    chex = tables["chexpert"].set_index("study_id")
    x, studies = [], []
    for task in tables["tasks"]:
        if task.view not in ("PA", "AP"):
            continue
        study = int(task.relpath.split("/s")[-1].split("/")[0])
        if study not in chex.index:
            continue
        img = Image.open(io.BytesIO(render_task(task))).resize((32, 32), Image.BILINEAR)
        x.append(np.asarray(img, dtype=np.float32).ravel() / 255)
        studies.append(study)
    x = np.stack(x)
    half = len(x) // 2
    for label in ("Cardiomegaly", "Pleural Effusion", "Support Devices"):
        y = (chex.loc[studies, label] == 1).to_numpy()
        model = LogisticRegression(C=0.05, max_iter=2000).fit(x[:half], y[:half])
        auc = roc_auc_score(y[half:], model.decision_function(x[half:]))
        assert auc > 0.75, (label, auc)


def test_image_digest_follows_the_pixels(corpus):
    """metrics/demo_data.json's digest (a dep of pack_images) changes with any image."""
    tasks = build_tables(params_section(DemoParams, min_positive_rate=0.0, n_patients=40))["tasks"]
    before = images_digest(corpus, tasks)
    assert before == images_digest(corpus, tasks)
    path = corpus / tasks[0].relpath
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-2] + b"\x00\xd9")
        assert images_digest(corpus, tasks) != before
    finally:
        path.write_bytes(original)


def test_grounding_leaves_out_the_findings_it_cannot_box_faithfully(big):
    labels = {g.label for g in big["grounding"]}
    assert "Fracture" not in labels and len(labels) == 12


def test_grounding_tasks_are_positive_findings_of_frontal_val_and_test_images(big):
    split = big["split"].set_index("dicom_id")["split"]
    meta = big["metadata"].set_index("dicom_id")
    label = big["chexpert"].set_index("study_id")
    tasks = big["grounding"]
    assert len(tasks) > 500
    assert {g.split for g in tasks} == {"validate", "test"}
    for g in tasks[:400]:
        assert split[g.dicom_id] == g.split
        assert meta.loc[g.dicom_id, "ViewPosition"] in ("PA", "AP")
        study = int(meta.loc[g.dicom_id, "study_id"])
        if study in label.index:  # a few studies have no label row (missing_label_fraction)
            assert label.loc[study, g.label] == 1.0
        assert g.phrase and g.label in dict(g.image.severity)


def test_val_boxes_leave_the_corpus_and_the_test_boxes_as_they_were(monkeypatch):
    """Boxing the validate split's findings too draws nothing from the corpus's random
    stream: every table and image task (so every pixel) is the same as with test boxes
    only, and so are the test phrases, in order."""
    params = params_section(DemoParams, n_patients=200, min_positive_rate=0.0)
    both = build_tables(params)
    monkeypatch.setattr(corpus_module, "GROUNDING_SPLITS", ("test",))
    test_only = build_tables(params)
    for name in ("metadata", "split", "chexpert"):
        pd.testing.assert_frame_equal(both[name], test_only[name])
    assert both["reports"] == test_only["reports"] and both["tasks"] == test_only["tasks"]
    assert [g for g in both["grounding"] if g.split == "test"] == test_only["grounding"]
    assert any(g.split == "validate" for g in both["grounding"])


def test_grounding_boxes_hold_what_the_finding_changes(tmp_path):
    tables = build_tables(params_section(DemoParams, min_positive_rate=0.0, n_patients=200))
    # The first 40 test phrases (the same as before val got boxes: lines and tubes can span
    # most of the film, and a val catheter's boxes cover 92 % of it).
    tasks = [g for g in tables["grounding"] if g.split == "test"][:40]
    for g in tasks:
        rows = grounding_rows(g)
        assert rows, (g.label, g.phrase)
        t = g.image
        full = render_cxr(dict(t.severity), t.view, t.height, t.width,
                          np.random.default_rng(list(t.seed)), dict(t.places))  # fmt: skip
        rest = {k: v for k, v in t.severity if k != g.label}
        bare = render_cxr(rest, t.view, t.height, t.width,
                          np.random.default_rng(list(t.seed)), dict(t.places))  # fmt: skip
        changed = np.abs(full.astype(int) - bare.astype(int)) > DIFF_THRESHOLD
        inside = np.zeros_like(changed)
        for r in rows:
            inside[r["y"] : r["y"] + r["h"], r["x"] : r["x"] + r["w"]] = True
        assert (changed & inside).sum() >= 0.9 * changed.sum(), (g.label, rows)
        assert inside.mean() < 0.9  # a box, not the whole film
        assert {r["label_text"] for r in rows} == {g.phrase}


def test_grounding_file_is_ms_cxr_format_and_readable(tmp_path):
    out = tmp_path / "ms_cxr.csv"
    summary = write_corpus(
        params_section(DemoParams, min_positive_rate=0.0, n_patients=60, workers=1),
        tmp_path / "root",
        grounding=out,
    )
    boxes = read_boxes(out)  # the evaluation's own reader and checks
    assert list(boxes.columns) == list(MS_CXR_COLUMNS)
    assert len(boxes) > 0 and set(boxes["split"]) == {"validate", "test"}
    per_split = summary["grounding"]["phrases_per_split"]
    assert set(per_split) == {"validate", "test"}
    assert sum(per_split.values()) == summary["grounding"]["phrases"]
    for _, row in boxes.iterrows():
        assert (tmp_path / "root" / row.path).is_file()
