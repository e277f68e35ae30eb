"""What embed@X writes and eval@X / compare read: one dataclass per file, with save/load.

NumPy only: reading embeddings needs no torch (the model side is lib/eval/embed_model.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.data.master import Split, first_per_study
from lib.data.splits import SPLITS
from lib.errors import DataError


@dataclass(frozen=True)
class Embeddings:
    """``embeddings.npz``: global embeddings of every split's images and of the test
    reports (one per study), row-aligned with the master file, and of the zero-shot prompts
    (``eval.*prompt*``), so that evaluation needs no model."""

    FILE = "embeddings.npz"

    images: dict[str, np.ndarray]  # split -> (N, d) float32, L2-normalised
    dicom: dict[str, np.ndarray]  # split -> (N,) dicom ids: the rows' identity
    test_tokens_kept: np.ndarray  # (N_test,) patch tokens the image path kept
    test_mask_mass: np.ndarray  # (N_test,) sum of the mask z (NaN without masking)
    report_study: np.ndarray  # (R,) test study ids, one report each
    report_emb: np.ndarray  # (R, d) float32
    inverse_temperature: float  # exp(logit_scale) of the checkpoint
    prompt_emb: np.ndarray | None = None  # (14, d) positive prompt per label
    negative_prompt_emb: np.ndarray | None = None  # (14, d); None: positive prompts only

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for name in SPLITS:
            arrays[f"{name}_image"] = self.images[name]
            arrays[f"{name}_dicom"] = self.dicom[name]
        arrays["test_tokens_kept"] = self.test_tokens_kept
        arrays["test_mask_mass"] = self.test_mask_mass
        arrays["test_report_study"] = self.report_study
        arrays["test_report_emb"] = self.report_emb
        arrays["inverse_temperature"] = np.float32(self.inverse_temperature)
        if self.prompt_emb is not None:
            arrays["prompt_emb"] = self.prompt_emb
            d = self.prompt_emb.shape[1]
            neg = self.negative_prompt_emb
            arrays["negative_prompt_emb"] = np.zeros((0, d), np.float32) if neg is None else neg
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Embeddings:
        return cls(
            images={name: arrays[f"{name}_image"] for name in SPLITS},
            dicom={name: arrays[f"{name}_dicom"] for name in SPLITS},
            test_tokens_kept=arrays["test_tokens_kept"],
            test_mask_mass=arrays["test_mask_mass"],
            report_study=arrays["test_report_study"],
            report_emb=arrays["test_report_emb"],
            inverse_temperature=float(arrays["inverse_temperature"]),
            prompt_emb=arrays.get("prompt_emb"),
            negative_prompt_emb=(
                arrays["negative_prompt_emb"]
                if "negative_prompt_emb" in arrays and len(arrays["negative_prompt_emb"])
                else None
            ),
        )

    def prompts(self, source: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(positive, negative or None) prompt embeddings; ``source`` names the folder."""
        if self.prompt_emb is None:
            raise DataError(
                f"{source}/{self.FILE}: no prompt embeddings (written by an older embed stage); "
                "rerun `dvc repro` (embed stage)"
            )
        return self.prompt_emb, self.negative_prompt_emb

    def save(self, folder: Path) -> None:
        np.savez(folder / self.FILE, **self.to_arrays())

    @classmethod
    def load(cls, folder: Path) -> Embeddings:
        return cls.from_arrays(_read_npz(folder / cls.FILE, "embed"))

    def check_aligned(self, splits: Mapping[str, Split]) -> None:
        """Stale embeddings (another master file or pack) fail here, not as wrong numbers."""
        for name in SPLITS:
            check_aligned(self.dicom[name].tolist(), splits[name].dicom, f"{name}_image")
        if not np.array_equal(self.report_study, study_reports(splits["test"])[0]):
            raise DataError(
                "test_report_emb: its studies do not match the master file's test split; the "
                "embeddings are stale, rerun `dvc repro` (embed stage)"
            )


@dataclass(frozen=True)
class ExplainMaps:
    """``explain.npz``: the test images of the explainability figure, with each one's
    label, keyword and Patch-IB maps."""

    FILE = "explain.npz"

    row: np.ndarray  # (E,) int64 row in the test split
    dicom: np.ndarray  # (E,)
    image: np.ndarray  # (E,) image path relative to data.root
    label: np.ndarray  # (E,)
    keyword: np.ndarray  # (E,)
    mask: np.ndarray  # (E, gh, gw) mask z on the patch grid (NaN without masking)
    kept: np.ndarray  # (E, gh, gw) tokens kept
    attention: np.ndarray  # (E, gh, gw) keyword-to-patch attention
    grid: np.ndarray  # (2,) patch grid (gh, gw)

    def save(self, folder: Path) -> None:
        np.savez(folder / self.FILE, **self.__dict__)

    @classmethod
    def load(cls, folder: Path) -> ExplainMaps:
        return cls(**_read_npz(folder / cls.FILE, "embed"))


def study_reports(split: Split) -> tuple[np.ndarray, list[str]]:
    """One report per study, in order of first appearance: (study ids, texts)."""
    rows = first_per_study(split.study)
    return split.study[rows], [split.texts[i] for i in rows]


def check_aligned(dicom: Iterable[str], expected: list[str], what: str) -> None:
    """Embeddings must be row-aligned with the master file they were computed from."""
    got = list(dicom)
    if got != expected:
        raise DataError(
            f"{what}: its rows ({len(got)} images) do not match the master file's "
            f"({len(expected)}); the embeddings are stale, rerun `dvc repro` (embed stage)"
        )


def _read_npz(path: Path, stage: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: not found; run `dvc repro` ({stage} stage) first")
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


# Written by embed@X with eval.finetune (lib/eval/finetune.py): test logits by fraction key.
FINETUNE_FILE = "finetune.npz"
FINETUNE_META = "finetune.json"


def load_finetune(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, object]]]:
    """(fine-tuned test logits by fraction key, their metadata) from embed@X's ``folder``;
    both empty when eval.finetune was off."""
    if not (folder / FINETUNE_FILE).is_file():
        return {}, {}
    with np.load(folder / FINETUNE_FILE) as npz:
        scores = {k: npz[k] for k in npz.files}
    meta = json.loads((folder / FINETUNE_META).read_text(encoding="utf-8"))
    return scores, meta
