"""The synthetic demo corpus: a directory in exactly the MIMIC-CXR-JPG v2 layout.

Each study draws a set of findings; its report states them (positive, negated or
hedged), the CheXpert file records what the report states (1 / 0 / -1 / blank),
and its images show the positive (strongly) and hedged (faintly) ones. Everything
is a pure function of ``DemoParams`` (seeded), so the corpus is byte-identical on
every machine and for any number of workers.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing as mp
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from lib.config.params import DemoParams
from lib.data.checksums import sha256sums_lines
from lib.data.mimic import (
    CHECKSUM_FILE,
    CHEXPERT_COLUMNS,
    CHEXPERT_FILE,
    FINDINGS,
    LABELS,
    METADATA_COLUMNS,
    METADATA_FILE,
    MS_CXR_COLUMNS,
    REPORTS_ZIP,
    SPLIT_FILE,
    image_relpath,
    report_relpath,
)
from lib.demo.boxes import diff_boxes
from lib.demo.synth_images import render_cxr
from lib.demo.synth_reports import write_report

# Probability that a study is free of any pathology (CheXpert "No Finding"): MIMIC's
# training split has 71,202 / 213,364 = 33 % No Finding among frontal images.
P_NORMAL = 0.33
# (positive, uncertain, negated) rate of each label over all studies. Positive rates
# follow the spec's training-split table (rare labels a little lower, since an abnormal
# study with nothing drawn gets one random finding); uncertain and negated mentions follow the
# shape of the real CheXpert file (pneumonia is often hedged, pneumothorax often negated).
LABEL_RATES: dict[str, tuple[float, float, float]] = {
    "Atelectasis": (0.202, 0.045, 0.02),
    "Cardiomegaly": (0.196, 0.027, 0.10),
    "Consolidation": (0.047, 0.019, 0.17),
    "Edema": (0.119, 0.058, 0.12),
    "Enlarged Cardiomediastinum": (0.031, 0.042, 0.06),
    "Fracture": (0.015, 0.003, 0.04),
    "Lung Lesion": (0.023, 0.005, 0.01),
    # Lung Opacity also follows its children (below), which bring it to ~22 %.
    "Lung Opacity": (0.11, 0.016, 0.02),
    "Pleural Effusion": (0.238, 0.025, 0.26),
    "Pleural Other": (0.005, 0.003, 0.001),
    "Pneumonia": (0.071, 0.08, 0.10),
    "Pneumothorax": (0.046, 0.005, 0.26),
    "Support Devices": (0.296, 0.001, 0.005),
}
# Opacity-type findings make "Lung Opacity" likely, as the CheXpert labeler's hierarchy does.
OPACITY_CHILDREN = ("Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Pneumonia")

# Study types: the ViewPosition of each image. Chosen so that, after 4 % of views are
# blanked and 0.5 % replaced by rare values, the image mix matches MIMIC-CXR-JPG:
# AP 39 %, PA 25.5 %, LATERAL 22 %, LL 9 %, blank 4 % (mean 1.7 images per study).
STUDY_TYPES: tuple[tuple[float, tuple[str, ...]], ...] = (
    (0.41, ("AP",)),
    (0.06, ("AP", "AP")),
    (0.26, ("PA", "LATERAL")),
    (0.13, ("PA", "LL")),
    (0.06, ("AP", "LATERAL")),
    (0.05, ("AP", "AP", "LATERAL")),
    (0.03, ("PA", "LATERAL", "PA", "LL")),
)
P_BLANK_VIEW = 0.04
P_RARE_VIEW = 0.005
RARE_VIEWS = ("AP AXIAL", "PA LLD", "AP LLD", "SWIMMERS", "XTABLE LATERAL", "LAO", "RAO")

VIEW_CODE_MEANING = {
    "PA": "postero-anterior",
    "AP": "antero-posterior",
    "LATERAL": "lateral",
    "LL": "left lateral",
    "XTABLE LATERAL": "lateral",
    "AP AXIAL": "antero-posterior",
    "PA LLD": "postero-anterior",
    "AP LLD": "antero-posterior",
    "LAO": "left anterior oblique",
    "RAO": "right anterior oblique",
}
# Original DICOM geometries seen in MIMIC-CXR (Rows, Columns); the demo keeps the aspect.
GEOMETRIES = ((3056, 2544), (2544, 3056), (3050, 2539), (2539, 3050), (2836, 2336), (3000, 3000))

JPEG_QUALITY = 90
# Id ranges of the demo corpus, as MIMIC-CXR's: subject_id 1xxxxxxx, study_id 5xxxxxxx.
DEMO_SUBJECTS = (10_000_000, 20_000_000)
DEMO_STUDIES = (50_000_000, 60_000_000)
# ZIP can store no date before 1980; a fixed stamp keeps the archive byte-identical.
ZIP_DATE = (2019, 9, 1, 0, 0, 0)


@dataclass(frozen=True)
class ImageTask:
    """Everything needed to render and write one image (picklable for worker processes)."""

    relpath: str
    view: str
    height: int
    width: int
    severity: tuple[tuple[str, float], ...]
    seed: tuple[int, int, int]
    # Label -> where the report puts it ("right lower", ...): the image draws it there.
    places: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GroundingTask:
    """One MS-CXR-format ground-truth phrase: a positive finding of a frontal val or test
    image."""

    image: ImageTask
    dicom_id: str
    label: str
    phrase: str
    split: str


# The MS-CXR-format file the demo writes (lib/eval/box_scores.py reads it): positive findings
# of the frontal images of the validate and test splits, each with the report's phrase and
# its boxes. Validate's are there to choose grounding settings on (results.md reports test).
# Which images get boxes draws nothing from the corpus's random stream (nor does boxing
# them, lib/demo/boxes.py), so the images, reports and labels do not depend on this list.
GROUNDING_SPLITS = ("validate", "test")
GROUNDING_VIEWS = ("PA", "AP")
# Findings left out of it: which bone the renderer breaks (a rib or the clavicle, which rib)
# is not tied to the report's words ("left fifth rib", "vertebral body"), so the box could
# hold another fracture than the phrase names. (MS-CXR has no fracture category either.)
GROUNDING_EXCLUDED = ("Fracture",)


def draw_states(
    rng: np.random.Generator, portable: bool, min_positive_rate: float = 0.0
) -> dict[str, str | None]:
    """Finding states of one study: 'pos', 'unc', 'neg' or None (not mentioned).

    ``min_positive_rate`` raises every label's positive rate over all studies to at least
    that value (``demo.min_positive_rate``; 0 keeps MIMIC-CXR's rates of LABEL_RATES).
    """
    normal = rng.random() < P_NORMAL
    states: dict[str, str | None] = {}
    for label in FINDINGS:
        p_pos, p_unc, p_neg = LABEL_RATES[label]
        p_pos = max(p_pos, min_positive_rate)
        if label == "Support Devices":
            # Portable (AP) studies are mostly ICU patients with lines and tubes.
            p_pos = min(0.9, p_pos * (1.5 if portable else 0.4))
        elif normal:
            p_pos = p_unc = 0.0
        else:
            p_pos, p_unc = p_pos / (1 - P_NORMAL), p_unc / (1 - P_NORMAL)
        u = rng.random()
        if u < p_pos:
            states[label] = "pos"
        elif u < p_pos + p_unc:
            states[label] = "unc"
        elif u < p_pos + p_unc + p_neg:
            states[label] = "neg"
        else:
            states[label] = None
    if not normal and not any(states[lb] in ("pos", "unc") for lb in FINDINGS[:-1]):
        states[FINDINGS[int(rng.integers(len(FINDINGS) - 1))]] = "pos"
    if any(states[c] == "pos" for c in OPACITY_CHILDREN) and rng.random() < 0.4:
        states["Lung Opacity"] = "pos"
    return states


def chexpert_row(states: dict[str, str | None]) -> dict[str, float]:
    """CheXpert values for what a report states (blank = NaN); No Finding as the labeler sets it."""
    code = {"pos": 1.0, "unc": -1.0, "neg": 0.0, None: np.nan}
    row = {label: code[states.get(label)] for label in FINDINGS}
    abnormal = any(states.get(lb) in ("pos", "unc") for lb in FINDINGS if lb != "Support Devices")
    row["No Finding"] = np.nan if abnormal else 1.0
    return row


def severities(states: dict[str, str | None], rng: np.random.Generator) -> dict[str, float]:
    """What the pixels show: positive findings clearly, hedged ones faintly."""
    out = {}
    for label, state in states.items():
        if state == "pos":
            out[label] = float(rng.uniform(0.6, 1.0))
        elif state == "unc":
            out[label] = float(rng.uniform(0.15, 0.4))
    return out


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    out: set[int] = set()
    while len(out) < n:
        out.update(int(v) for v in rng.integers(low, high, size=2 * (n - len(out))))
    return np.sort(rng.permutation(np.fromiter(out, dtype=np.int64))[:n])


def _dicom_id(rng: np.random.Generator) -> str:
    h = rng.bytes(20).hex()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def build_tables(
    params: DemoParams,
    subject_range: tuple[int, int] = DEMO_SUBJECTS,
    study_range: tuple[int, int] = DEMO_STUDIES,
) -> dict[str, Any]:
    """Draw the whole corpus (ids, views, findings, reports) without touching the disk.

    Subject and study ids are drawn from ``[low, high)`` of the given ranges (MIMIC's own by
    default); corpora drawn from disjoint ranges share no patient.
    """
    rng = np.random.default_rng(params.seed)
    n_pat = params.n_patients
    subjects = _unique_ints(rng, n_pat, *subject_range)
    n_studies = rng.geometric(1 / params.studies_per_patient, size=n_pat)
    study_ids = rng.permutation(_unique_ints(rng, int(n_studies.sum()), *study_range))

    # Patient-level official split: test first, then validate, the rest train.
    order = rng.permutation(n_pat)
    n_test = round(params.test_fraction * n_pat)
    n_val = round(params.validate_fraction * n_pat)
    patient_split = np.full(n_pat, "train", dtype=object)
    patient_split[order[:n_test]] = "test"
    patient_split[order[n_test : n_test + n_val]] = "validate"

    type_p = np.array([p for p, _ in STUDY_TYPES])
    meta_rows, split_rows, label_rows, reports, tasks = [], [], [], {}, []
    grounding: list[GroundingTask] = []
    shapes: Counter[str] = Counter()
    k = 0
    for pi, subject in enumerate(subjects):
        date = pd.Timestamp(2110, 1, 1) + pd.Timedelta(days=int(rng.integers(0, 365 * 90)))
        for _ in range(n_studies[pi]):
            study = int(study_ids[k])
            k += 1
            date += pd.Timedelta(days=int(rng.integers(1, 400)))
            views = list(STUDY_TYPES[rng.choice(len(STUDY_TYPES), p=type_p)][1])
            for i in range(len(views)):
                u = rng.random()
                if u < P_BLANK_VIEW:
                    views[i] = ""
                elif u < P_BLANK_VIEW + P_RARE_VIEW:
                    views[i] = RARE_VIEWS[int(rng.integers(len(RARE_VIEWS)))]
            portable = "AP" in views
            states = draw_states(rng, portable, params.min_positive_rate)
            report = write_report(
                states,
                frontal_views=[v for v in views if v in ("PA", "AP")],
                n_images=len(views),
                rng=rng,
            )
            shape = report.shape
            shapes[shape] += 1
            reports[report_relpath(int(subject), study)] = report.text
            stated = {} if shape == "placeholder" else states
            if rng.random() >= params.missing_label_fraction:
                label_rows.append(
                    {"subject_id": subject, "study_id": study, **chexpert_row(stated)}
                )
            sev = tuple(sorted(severities(states, rng).items()))
            procedure = (
                "CHEST (PORTABLE AP)" if portable and "PA" not in views else ("CHEST (PA AND LAT)")
            )
            time = f"{rng.integers(0, 24):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}"
            for view in views:
                dicom = _dicom_id(rng)
                rows, cols = GEOMETRIES[int(rng.integers(len(GEOMETRIES)))]
                height, width = _demo_size(rows, cols, params.image_size)
                meta_rows.append(
                    {
                        "dicom_id": dicom,
                        "subject_id": subject,
                        "study_id": study,
                        "PerformedProcedureStepDescription": procedure,
                        "ViewPosition": view,
                        "Rows": height,
                        "Columns": width,
                        "StudyDate": int(date.strftime("%Y%m%d")),
                        "StudyTime": float(f"{time}.{rng.integers(0, 1000):03d}"),
                        "ProcedureCodeSequence_CodeMeaning": procedure,
                        "ViewCodeSequence_CodeMeaning": VIEW_CODE_MEANING.get(view, ""),
                        "PatientOrientationCodeSequence_CodeMeaning": (
                            "Recumbent"
                            if view.startswith("AP") and rng.random() < 0.5
                            else "Erect"
                            if view
                            else ""
                        ),
                    }
                )
                split_rows.append(
                    {
                        "dicom_id": dicom,
                        "study_id": study,
                        "subject_id": subject,
                        "split": patient_split[pi],
                    }
                )
                tasks.append(
                    ImageTask(
                        relpath=image_relpath(int(subject), study, dicom),
                        view=view,
                        height=height,
                        width=width,
                        severity=sev,
                        seed=(params.seed, study, len(tasks)),
                        places=tuple(sorted(report.locations.items())),
                    )
                )
                if view in GROUNDING_VIEWS and patient_split[pi] in GROUNDING_SPLITS:
                    grounding += [
                        GroundingTask(
                            tasks[-1], dicom, label, report.phrases[label], str(patient_split[pi])
                        )
                        for label, state in states.items()
                        if state == "pos"
                        and label in report.phrases
                        and label not in GROUNDING_EXCLUDED
                    ]
    metadata = pd.DataFrame(meta_rows, columns=list(METADATA_COLUMNS))
    metadata["ViewPosition"] = metadata["ViewPosition"].replace("", None)
    return {
        "metadata": metadata,
        "split": pd.DataFrame(split_rows),
        "chexpert": pd.DataFrame(label_rows, columns=list(CHEXPERT_COLUMNS)),
        "reports": reports,
        "tasks": tasks,
        "grounding": grounding,
        "report_shapes": dict(sorted(shapes.items())),
    }


def _demo_size(rows: int, cols: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(rows, cols)
    return round(rows * scale), round(cols * scale)


def render_task(task: ImageTask) -> bytes:
    """JPEG bytes of one image (8-bit grayscale, as in MIMIC-CXR-JPG)."""
    rng = np.random.default_rng(list(task.seed))
    pixels = render_cxr(
        dict(task.severity), task.view, task.height, task.width, rng, dict(task.places)
    )
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def grounding_rows(g: GroundingTask) -> list[dict[str, Any]]:
    """The MS-CXR-format rows of one phrase: one per box of what drawing its finding
    changes in the image (lib/demo/boxes.py)."""
    task = g.image
    rng = np.random.default_rng(list(task.seed))
    places = dict(task.places)
    severity = dict(task.severity)
    full = render_cxr(severity, task.view, task.height, task.width, rng, places)
    del severity[g.label]
    rng = np.random.default_rng(list(task.seed))
    bare = render_cxr(severity, task.view, task.height, task.width, rng, places)
    return [
        {
            "dicom_id": g.dicom_id,
            "category_name": g.label,
            "label_text": g.phrase,
            "path": task.relpath,
            "x": x,
            "y": y,
            "w": w,
            "h": h,
            "image_width": task.width,
            "image_height": task.height,
            "split": g.split,
        }
        for x, y, w, h in diff_boxes(full, bare)
    ]


def _write_image(args: tuple[Path, ImageTask]) -> None:
    root, task = args
    path = root / task.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_task(task))


def write_csv_gz(df: pd.DataFrame, path: Path) -> None:
    """gzip-compressed CSV with a zero mtime in the header, so the bytes are reproducible."""
    data = df.to_csv(index=False).encode("utf-8")
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)


def write_reports_zip(reports: dict[str, str], path: Path) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(reports):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, reports[name].encode("utf-8"))


def write_corpus(
    params: DemoParams, root: Path, progress: bool = False, grounding: Path | None = None
) -> dict[str, Any]:
    """Write the whole corpus under ``root`` (which must not exist yet); return its summary.
    With ``grounding``, also the MS-CXR-format boxes of its val and test findings
    (`grounding_rows`) to that CSV."""
    tables = build_tables(params)
    root.mkdir(parents=True)
    write_csv_gz(tables["metadata"], root / METADATA_FILE)
    write_csv_gz(tables["split"], root / SPLIT_FILE)
    write_csv_gz(tables["chexpert"], root / CHEXPERT_FILE)
    write_reports_zip(tables["reports"], root / REPORTS_ZIP)
    jobs = [(root, t) for t in tables["tasks"]]
    if params.workers > 1:
        # fork keeps start-up cheap; each task seeds its own generator, so order is irrelevant.
        with mp.get_context("fork").Pool(params.workers) as pool:
            for _ in _progress(
                pool.imap_unordered(_write_image, jobs, chunksize=32), len(jobs), progress
            ):
                pass
    else:
        for job in _progress(jobs, len(jobs), progress):
            _write_image(job)
    summary = {**summarize(tables), "images_sha256": images_digest(root, tables["tasks"])}
    write_sha256sums(root)
    if grounding is not None:
        summary["grounding"] = write_grounding(tables["grounding"], grounding, params.workers)
    return summary


def write_grounding(tasks: list[GroundingTask], path: Path, workers: int) -> dict[str, Any]:
    """Write the MS-CXR-format CSV of ``tasks`` (in their order) to ``path``; its counts."""
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            per_task = pool.map(grounding_rows, tasks, chunksize=16)
    else:
        per_task = [grounding_rows(t) for t in tasks]
    rows = [row for rows in per_task for row in rows]
    df = pd.DataFrame(rows, columns=list(MS_CXR_COLUMNS))
    df.to_csv(path, index=False)
    return {
        "phrases": len(tasks),
        "phrases_without_box": sum(1 for r in per_task if not r),
        "boxes": len(df),
        "images": int(df["dicom_id"].nunique()),
        "phrases_per_split": dict(sorted(Counter(t.split for t in tasks).items())),
        "phrases_per_category": {
            k: int(v)
            for k, v in pd.Series([t.label for t in tasks]).value_counts().sort_index().items()
        },
    }


def write_sha256sums(root: Path) -> None:
    """SHA256SUMS.txt beside the corpus, as MIMIC-CXR-JPG ships it: every file's digest
    and path relative to ``root``, in path order (data.verify_checksums checks against it)."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    (root / CHECKSUM_FILE).write_text("".join(sha256sums_lines(root, files)), encoding="utf-8")


def images_digest(root: Path, tasks: list[ImageTask]) -> str:
    """SHA-256 over every image's path and bytes, in path order. It changes whenever the
    renderer draws other pixels, and it is in ``metrics/demo_data.json``, on which
    ``pack_images`` depends: DVC never hashes the image tree (CONTRIBUTING), so without it a
    renderer change would leave the pack holding the old pixels."""
    digest = hashlib.sha256()
    for relpath in sorted(t.relpath for t in tasks):
        digest.update(relpath.encode())
        digest.update((root / relpath).read_bytes())
    return digest.hexdigest()


def _progress(it: Any, total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(it, total=total, desc="demo images", unit="img", disable=not enabled)


def summarize(tables: dict[str, Any]) -> dict[str, Any]:
    """Counts that describe the corpus, for ``metrics/demo_data.json``."""
    meta, chex = tables["metadata"], tables["chexpert"]
    views = meta["ViewPosition"].fillna("(blank)").value_counts()
    n_studies = meta["study_id"].nunique()
    labels = {}
    for label in LABELS:
        col = chex[label]
        labels[label] = {
            "positive": int((col == 1).sum()),
            "uncertain": int((col == -1).sum()),
            "negative": int((col == 0).sum()),
            "blank": int(col.isna().sum()),
        }
    return {
        "patients": int(meta["subject_id"].nunique()),
        "studies": int(n_studies),
        "images": len(meta),
        "studies_without_labels": int(n_studies - len(chex)),
        "view_fraction": {v: round(int(c) / len(meta), 4) for v, c in views.items()},
        "report_shapes": tables["report_shapes"],
        "split_images": {
            k: int(v) for k, v in tables["split"]["split"].value_counts().sort_index().items()
        },
        "labels": labels,
    }
