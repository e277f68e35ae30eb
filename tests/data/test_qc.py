import json

import numpy as np
import pandas as pd
import pytest

from lib.errors import DataError
from lib.data.mimic import LABELS, image_relpath
from lib.config.params import QCParams
from lib.data.qc import MASTER_FIELDS, master_lines, read_listing, run_qc, write_jsonl

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
FINDINGS = "Moderate cardiomegaly. No pleural effusion or pneumothorax."


def make_case(tmp_path, n_per_split=3):
    """One image per study, one study per patient, every image on disk."""
    rows, reports = [], []
    i = 0
    for split in ("train", "val", "test"):
        for _ in range(n_per_split):
            subject, study, dicom = 10000000 + i, 50000000 + i, f"{i:08x}-0-0-0-0"
            rows.append(
                {
                    "dicom_id": dicom,
                    "subject_id": subject,
                    "study_id": study,
                    "view": "PA",
                    "split": split,
                    "labels_missing": False,
                    **{lb: int(lb == "Cardiomegaly") for lb in LABELS},
                }
            )
            reports.append(
                {
                    "subject_id": subject,
                    "study_id": study,
                    "status": "ok",
                    "encoding": "utf-8",
                    "report_chars": 200,
                    "findings": FINDINGS,
                    "impression": "Cardiomegaly.",
                    "text": FINDINGS + " Cardiomegaly.",
                    "text_source": "sections",
                }
            )
            path = tmp_path / image_relpath(subject, study, dicom)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(JPEG)
            i += 1
    return pd.DataFrame(rows), pd.DataFrame(reports)


def test_clean_case_keeps_everything(tmp_path):
    images, reports = make_case(tmp_path)
    kept, m = run_qc(images, reports, tmp_path, 30, QCParams())
    assert len(kept) == 9 and m["dropped_total"] == 0 and m["ready"]
    assert m["distribution"]["train"]["total"] == 3
    assert m["distribution"]["test"]["Cardiomegaly"] == 3
    assert m["distribution"]["val"]["Edema"] == 0


def test_each_drop_reason_is_counted(tmp_path):
    images, reports = make_case(tmp_path, n_per_split=4)
    train = images.index[images["split"] == "train"]
    (
        tmp_path / image_relpath(*images.loc[train[0], ["subject_id", "study_id", "dicom_id"]])
    ).unlink()
    (
        tmp_path / image_relpath(*images.loc[train[1], ["subject_id", "study_id", "dicom_id"]])
    ).write_bytes(b"PNG")
    reports.loc[4, "status"] = "missing"
    reports.loc[5, "report_chars"] = 17
    reports.loc[8, "text"] = ""
    reports.loc[9, "status"] = "unreadable"
    reports = reports.drop(index=10)  # no report row at all
    kept, m = run_qc(images, reports, tmp_path, 30, QCParams(max_missing_image_fraction=0.5))
    assert m["dropped"] == {
        "image_missing": 1,
        "image_unreadable": 1,
        "report_missing": 2,
        "report_too_short": 1,
        "report_unreadable": 1,
        "text_empty": 1,
    }
    assert len(kept) == 12 - 7
    assert m["missing_image_fraction"] == round(2 / 12, 6)


def test_exists_mode_accepts_any_nonempty_file(tmp_path):
    images, reports = make_case(tmp_path)
    r = images.iloc[0]
    (tmp_path / image_relpath(r.subject_id, r.study_id, r.dicom_id)).write_bytes(b"PNG")
    _, m = run_qc(images, reports, tmp_path, 30, QCParams(image_check="exists"))
    assert m["dropped_total"] == 0


def test_too_many_missing_images_fails_with_readable_report(tmp_path):
    images, reports = make_case(tmp_path)
    with pytest.raises(DataError, match=r"(?s)9 of 9 images.*data.root.*image_missing"):
        run_qc(images, reports, tmp_path / "elsewhere", 30, QCParams())


def test_empty_split_fails(tmp_path):
    images, reports = make_case(tmp_path)
    images = images[images["split"] != "val"]
    with pytest.raises(DataError, match="split 'val' is empty"):
        run_qc(images, reports, tmp_path, 30, QCParams())


def test_no_images_fails(tmp_path):
    images, reports = make_case(tmp_path)
    with pytest.raises(DataError, match="no images reached"):
        run_qc(images.iloc[:0], reports, tmp_path, 30, QCParams())


def test_listing_replaces_disk_checks(tmp_path):
    images, reports = make_case(tmp_path)
    listing_file = tmp_path / "IMAGE_FILENAMES"
    paths = [image_relpath(r.subject_id, r.study_id, r.dicom_id) for r in images.itertuples()]
    listing_file.write_text("\n".join(paths[1:]) + "\n")
    listing = read_listing(listing_file)
    _, m = run_qc(
        images,
        reports,
        tmp_path / "not-mounted",
        30,
        QCParams(max_missing_image_fraction=0.2),
        listing,
    )
    assert m["dropped"] == {"image_missing": 1}


def test_master_lines_shape_and_jsonl(tmp_path):
    images, reports = make_case(tmp_path)
    kept, _ = run_qc(images, reports, tmp_path, 30, QCParams())
    out = tmp_path / "master.jsonl"
    write_jsonl(master_lines(kept), out)
    lines = out.read_text().splitlines()
    assert len(lines) == 9
    rec = json.loads(lines[0])
    assert tuple(rec) == MASTER_FIELDS
    # the hand-assembled line is exactly what json.dumps would write for the same record
    assert lines[0] == json.dumps(rec, ensure_ascii=False)
    assert rec["image"] == image_relpath(rec["subject_id"], rec["study_id"], rec["dicom_id"])
    assert rec["labels"]["Cardiomegaly"] == 1 and set(rec["labels"]) == set(LABELS)
    assert rec["text"].startswith("Moderate cardiomegaly")
    assert isinstance(rec["subject_id"], int) and rec["labels_missing"] is False
    assert np.all([json.loads(x)["split"] in ("train", "val", "test") for x in lines])
