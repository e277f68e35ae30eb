"""The QBA reader (lib/vqa/reader.py) on hand-made folders: what it reads, from qa/ and from
qa.zip, and malformed files (missing fields, empty answers, unknown image ids, bad JSON)
counted by reason, with a clear error above vqa_data.max_malformed_fraction."""

from __future__ import annotations

import pytest

from lib.errors import DataError
from lib.vqa.reader import check_layout, read_qba
from tests.vqa.qba_fixture import answer, make_qba, question, study_questions, write_study, zip_qa


def test_reads_every_question_with_its_tags(tmp_path):
    make_qba(tmp_path, n_studies=4)
    data = read_qba(tmp_path, 0.0)
    assert data.files == 4 and data.scene_files == 4 and len(data.questions) == 20
    assert not data.malformed and data.qa_source == "qa"
    where = next(q for q in data.questions if q["question_type"] == "D03_where_is_finding")
    assert where["region"] == "left lower lung zone" and where["entity"] == "pleural effusion"
    assert where["localization"] == {"img000": [[20.0, 30.0, 90.0, 120.0]]}
    severe = next(q for q in data.questions if q["question_type"] == "D05_how_severe")
    assert severe["severity"] == "mild"
    has = [q for q in data.questions if q["question_type"] == "has_finding"]
    assert [q["positive"] for q in has] == [1, 0, 1, 0]
    assert len(data.observations) == 4 and data.observations[0]["box"] == [20, 30, 90, 120]


def test_reads_qa_zip_as_the_dataset_ships_it(tmp_path):
    make_qba(tmp_path, n_studies=3)
    zip_qa(tmp_path)
    data = read_qba(tmp_path, 0.0)
    assert data.qa_source == "qa.zip" and len(data.questions) == 15
    assert data.questions[0]["file"].startswith("qa.zip:")


def _with_bad_study(root, questions=None, raw=None):
    make_qba(root, n_studies=4)  # 20 good questions
    return write_study(root, 10000001, 50000001, questions or [], raw=raw)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"question_id": "x", "question": "?", "answers": []}, "missing_field"),
        (question("x", "D02_has_finding", "Is there edema?", answer("")), "empty_answers"),
        ({**question("x", "D02_has_finding", "?", answer("No.")), "answers": []}, "empty_answers"),
        (
            question(
                "x",
                "D03_where_is_finding",
                "Where?",
                answer("Left.", localization={"no-such-image": {"bboxes": [[0, 0, 1, 1]]}}),
            ),
            "unknown_image_id",
        ),
        (
            {**question("x", "D02_has_finding", "?", answer("No.")), "quality": {"grade": "Z"}},
            "missing_grade",
        ),
    ],
)
def test_a_malformed_question_is_dropped_and_counted(tmp_path, bad, reason):
    good = study_questions("img001", "edema", "bilateral lungs", yes=True)
    path = _with_bad_study(tmp_path, [*good, bad])
    data = read_qba(tmp_path, 0.1)
    assert data.malformed == {reason: 1}
    assert data.first_bad[reason].endswith(path.name)
    assert len(data.questions) == 20  # the 4 studies' 20 and the 5 good ones of the rewritten
    # ... study 1 was rewritten with its 5 good questions and the bad one
    assert sum(q["study_id"] == 50000001 for q in data.questions) == 5


def test_a_file_that_is_not_json_counts_once(tmp_path):
    _with_bad_study(tmp_path, raw="{not json")
    data = read_qba(tmp_path, 0.5)
    assert data.malformed == {"bad_json": 1} and len(data.questions) == 15


def test_above_the_threshold_the_error_names_the_file_and_the_fix(tmp_path):
    bad = [{"question_id": f"x{i}", "question": "?"} for i in range(5)]
    path = _with_bad_study(tmp_path, bad)
    with pytest.raises(DataError) as e:
        read_qba(tmp_path, 0.05)
    msg = str(e.value)
    assert str(path.name) in msg and "missing_field" in msg
    assert "vqa_data.max_malformed_fraction" in msg and "docs/vqa.md" in msg


def test_a_missing_qa_folder_fails_naming_it(tmp_path):
    make_qba(tmp_path, n_studies=2)
    for p in sorted((tmp_path / "qa").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (tmp_path / "qa").rmdir()
    assert any("neither qa/ nor qa.zip" in m for m in check_layout(tmp_path))
    with pytest.raises(DataError, match="neither qa/ nor qa.zip.*point data.vqa"):
        read_qba(tmp_path, 0.0)


def test_missing_metadata_columns_are_named(tmp_path):
    make_qba(tmp_path, n_studies=2)
    meta = tmp_path / "metadata/image_metadata.csv"
    meta.write_text(meta.read_text().replace("width", "cols"), encoding="utf-8")
    with pytest.raises(DataError, match=r"image_metadata.csv: missing columns \['width'\]"):
        read_qba(tmp_path, 0.0)
