import json

import numpy as np
import pandas as pd
import pytest

from lib.config.params import QCParams
from lib.data.mimic import LABELS, image_relpath
from lib.data.qc import (
    MASTER_FIELDS,
    master_lines,
    read_holdout,
    read_listing,
    run_qc,
    write_jsonl,
)
from lib.errors import DataError, ParamsError
from tests.conftest import params_section

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
FINDINGS = "Moderate cardiomegaly. No pleural effusion or pneumothorax."


def make_case(tmp_path, n_per_split=3):
    """One image per study, one study per patient, every image on disk."""
    rows, reports = [], []
    i = 0
    for split in ("train", "val", "test"):
        for _ in range(n_per_split):
            subject, study, dicom = 10000000 + i, 50000000 + i, f"{i:08x}" + "-00000000" * 4
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
    kept, m = run_qc(images, reports, tmp_path, 30, params_section(QCParams))
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
    params = params_section(
        QCParams, max_missing_image_fraction=0.5, max_missing_report_fraction=0.5
    )
    kept, m = run_qc(images, reports, tmp_path, 30, params)
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
    assert m["missing_report_fraction"] == round(3 / 12, 6)  # missing x2, unreadable
    assert m["missing_label_fraction"] == 0.0


def test_label_file_matching_no_study_stops_qc(tmp_path):
    """A CheXpert file whose study ids match nothing gives every image all-zero labels
    (issue 27.2): QC stops with the counts, the key and the fix."""
    images, reports = make_case(tmp_path, n_per_split=4)
    with pytest.raises(DataError) as err:
        run_qc(images.assign(labels_missing=True), reports, tmp_path, 30, params_section(QCParams))
    msg = str(err.value)
    assert "12 of 12 images (100.00%) have no CheXpert label row" in msg
    assert "qc.max_missing_label_fraction = 0.1" in msg and "chexpert.csv.gz" in msg
    # The demo's share (1 of 100 images, demo.missing_label_fraction) passes the default.
    images, reports = make_case(tmp_path / "demo", n_per_split=34)
    images.loc[0, "labels_missing"] = True
    _, m = run_qc(images, reports, tmp_path / "demo", 30, params_section(QCParams))
    assert m["ready"] and m["missing_label_fraction"] == round(1 / 102, 6)


def test_reports_zip_missing_members_stops_qc(tmp_path):
    """A reports archive missing 40% of its members (issue 27.2) stops QC instead of
    training on the rest: counts, the key, the fix."""
    images, reports = make_case(tmp_path, n_per_split=5)
    gone = [0, 2, 5, 7, 10, 12]  # two of each split
    with pytest.raises(DataError) as err:
        run_qc(images, reports.drop(index=gone), tmp_path, 30, params_section(QCParams))
    msg = str(err.value)
    assert "6 of 15 images (40.00%) have no readable report" in msg
    assert "qc.max_missing_report_fraction = 0.05" in msg and "data.reports" in msg
    params = params_section(QCParams, max_missing_report_fraction=0.5)
    kept, m = run_qc(images, reports.drop(index=gone), tmp_path, 30, params)
    assert len(kept) == 9 and m["dropped"] == {"report_missing": 6}


def test_exists_mode_accepts_any_nonempty_file(tmp_path):
    images, reports = make_case(tmp_path)
    r = images.iloc[0]
    (tmp_path / image_relpath(r.subject_id, r.study_id, r.dicom_id)).write_bytes(b"PNG")
    _, m = run_qc(images, reports, tmp_path, 30, params_section(QCParams, image_check="exists"))
    assert m["dropped_total"] == 0


def test_too_many_missing_images_fails_with_readable_report(tmp_path):
    images, reports = make_case(tmp_path)
    with pytest.raises(DataError, match=r"(?s)9 of 9 images.*data.root.*image_missing"):
        run_qc(images, reports, tmp_path / "elsewhere", 30, params_section(QCParams))


def test_empty_split_fails(tmp_path):
    images, reports = make_case(tmp_path)
    images = images[images["split"] != "val"]
    with pytest.raises(DataError, match="split 'val' is empty"):
        run_qc(images, reports, tmp_path, 30, params_section(QCParams))


def test_no_images_fails(tmp_path):
    images, reports = make_case(tmp_path)
    with pytest.raises(DataError, match="no images reached"):
        run_qc(images.iloc[:0], reports, tmp_path, 30, params_section(QCParams))


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
        params_section(QCParams, max_missing_image_fraction=0.2),
        listing,
    )
    assert m["dropped"] == {"image_missing": 1}


def test_master_lines_shape_and_jsonl(tmp_path):
    images, reports = make_case(tmp_path)
    kept, _ = run_qc(images, reports, tmp_path, 30, params_section(QCParams))
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


def test_holdout_patients_leave_train_and_val_but_not_test(tmp_path):
    images, reports = make_case(tmp_path, n_per_split=3)
    by_split = images.groupby("split")["subject_id"].apply(list)
    holdout = {by_split["train"][0], by_split["val"][1], by_split["test"][2], 99999999}
    kept, m = run_qc(images, reports, tmp_path, 30, params_section(QCParams), holdout=holdout)
    assert m["dropped"] == {"holdout_patient": 2}
    assert m["holdout_patients"] == 4 and m["holdout_patients_found"] == 3
    assert m["holdout_patients_in_test"] == 1
    assert by_split["test"][2] in set(kept["subject_id"])
    assert not {by_split["train"][0], by_split["val"][1]} & set(kept["subject_id"])


def test_read_holdout_takes_ids_a_subject_column_or_ms_cxr_paths(tmp_path):
    plain = tmp_path / "ids.txt"
    plain.write_text("10000032\n\n10000764\n")
    assert read_holdout(plain) == {10000032, 10000764}
    one_column = tmp_path / "one.csv"
    one_column.write_text("subject_id\n10000032\n")
    assert read_holdout(one_column) == {10000032}
    table = tmp_path / "ids.csv"
    table.write_text("subject_id,note\n10000032,a\n10000980,b\n")
    assert read_holdout(table) == {10000032, 10000980}
    ms = tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv"
    ms.write_text(
        "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"
        "d1,Edema,edema,files/p10/p10000032/s50414267/d1.jpg,1,1,5,5,64,64,test\n"
        "d2,Edema,edema,files/p15/p15000001/s51000000/d2.jpg,1,1,5,5,64,64,train\n"
    )
    assert read_holdout(ms) == {10000032, 15000001}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("10000032\nabc\n", "line 2 is 'abc'"),
        ("subject_id,x\n1000x,1\n", "non-numeric"),
        ("path,x\nimages/a.jpg,1\n", "not a MIMIC-CXR-JPG image path"),
        ("who,what\n1,2\n", "'subject_id' or a 'path' column"),
    ],
)
def test_read_holdout_errors_name_the_problem(tmp_path, text, needle):
    f = tmp_path / "h.csv"
    f.write_text(text)
    with pytest.raises(DataError, match=needle):
        read_holdout(f)
    with pytest.raises(DataError, match="not found"):
        read_holdout(tmp_path / "missing.txt")


@pytest.mark.parametrize("key", ["max_missing_label_fraction", "max_missing_report_fraction"])
def test_missing_limits_must_be_fractions(key):
    with pytest.raises(ParamsError, match=f"qc.{key} = 1.5"):
        params_section(QCParams, **{key: 1.5})
