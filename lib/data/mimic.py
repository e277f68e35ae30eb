"""The MIMIC-CXR-JPG v2.0.0 layout: file names, columns, labels and id shapes.

Everything that knows how the real dataset is laid out lives here, so that the
synthetic demo corpus and the readers share one definition.
"""

from __future__ import annotations

import re

from lib.errors import DataError

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"
CHECKSUM_FILE = "SHA256SUMS.txt"  # `<sha256>  <relative path>` per file of the release
IMAGES_DIR = "files"

METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
OFFICIAL_SPLITS: tuple[str, ...] = ("train", "validate", "test")

# The 14 CheXpert labels, in the alphabetical order of the official CSV.
LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
NO_FINDING = "No Finding"
# The 13 findings: every label but No Finding (which says there is none).
FINDINGS: tuple[str, ...] = tuple(lb for lb in LABELS if lb != NO_FINDING)
CHEXPERT_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *LABELS)
# The patient of an image path in the MIMIC-CXR-JPG layout: files/pXX/pNNNNNNNN/sNNNNNNNN/...
SUBJECT_IN_PATH = r"(?:^|/)p\d{2}/p(\d{8})/"
# MS-CXR v1.1.0 (MS_CXR_Local_Alignment_v1.1.0.csv, phrase grounding on MIMIC-CXR images):
# one row per box, in pixels of the original image.
MS_CXR_COLUMNS: tuple[str, ...] = (
    "dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
    "image_width", "image_height", "split",
)  # fmt: skip

# Id shapes: subject 8 digits starting with 1, study 8 digits starting with 5,
# dicom_id five dash-separated groups of 8 hex digits.
SUBJECT_ID_PATTERN = r"^1\d{7}$"
STUDY_ID_PATTERN = r"^5\d{7}$"
DICOM_ID_PATTERN = r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$"


_DICOM_ID = re.compile(DICOM_ID_PATTERN)


def image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    """Path of one JPEG relative to the MIMIC-CXR-JPG root. ``dicom_id`` must have MIMIC's
    shape (filter_views drops and counts the rows whose ids do not): no id leaves data.root."""
    if not _DICOM_ID.fullmatch(dicom_id):
        raise DataError(
            f"dicom_id {dicom_id!r} (study_id {study_id}) is not a MIMIC-CXR dicom_id (five "
            "dash-separated groups of 8 hex digits); fix the metadata row or rerun "
            "`dvc repro filter_views`, which drops such rows"
        )
    s = str(int(subject_id))
    return f"{IMAGES_DIR}/p{s[:2]}/p{s}/s{int(study_id)}/{dicom_id}.jpg"


def report_relpath(subject_id: int, study_id: int) -> str:
    """Path of one report inside the reports zip (or an unpacked reports root)."""
    s = str(subject_id)
    return f"{IMAGES_DIR}/p{s[:2]}/p{s}/s{study_id}.txt"
