"""Training data: the master file, image preprocessing, and study-aware batches."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib.errors import DataError
from lib.data.mimic import LABELS


@dataclass(frozen=True)
class Split:
    """The rows of one split of the master file, as arrays aligned by index."""

    images: list[str]  # paths relative to the data root
    study: np.ndarray  # (N,) int64
    subject: np.ndarray  # (N,) int64
    texts: list[str]  # (N,) report text of each image's study
    labels: np.ndarray  # (N, 14) int8, 1 / 0 / -1 (ignore)
    dicom: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> Split:
        """The rows ``idx`` (an index array), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            images=[self.images[i] for i in idx],
            study=self.study[idx],
            subject=self.subject[idx],
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            dicom=[self.dicom[i] for i in idx],
        )


def read_master(path: str | Path) -> dict[str, Split]:
    """The master JSONL file, split by ``split`` (train / val / test)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: master file not found; run `dvc repro qc` first")
    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            rows[rec["split"]].append(rec)
    return {
        name: Split(
            images=[r["image"] for r in recs],
            study=np.array([r["study_id"] for r in recs], dtype=np.int64),
            subject=np.array([r["subject_id"] for r in recs], dtype=np.int64),
            texts=[r["text"] for r in recs],
            labels=np.array(
                [[r["labels"][lb] for lb in LABELS] for r in recs], dtype=np.int8
            ).reshape(len(recs), len(LABELS)),
            dicom=[r["dicom_id"] for r in recs],
        )
        for name, recs in rows.items()
    }


def resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) with the shorter side = ``size``, the aspect ratio kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def load_image(path: str | Path, size: int) -> np.ndarray:
    """(size, size) uint8: grayscale, shorter side resized to ``size`` (bicubic), centre crop.

    JPEG draft mode lets the decoder skip detail it would throw away (DCT scaling by
    1/2..1/8), which is several times faster on full-size MIMIC images.
    """
    with Image.open(path) as im:
        im.draft("L", (size, size))
        im = im.convert("L")
        nw, nh = resize_shape(*im.size, size)
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8)


def load_images(root: Path, relpaths: Sequence[str], size: int, threads: int = 8) -> torch.Tensor:
    """(N, size, size) uint8 tensor of every image (decoded in threads: PIL releases the GIL)."""
    missing = [p for p in relpaths[:1000] if not (root / p).is_file()]
    if missing:
        raise DataError(
            f"{root / missing[0]}: image not found; is data.root the directory the master file "
            "was built from?"
        )
    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(lambda p: load_image(root / p, size), relpaths))
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, size, size)


def to_model_input(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (B, H, W) → float (B, 3, H, W) normalised; grayscale repeated over channels."""
    x = pixels.float().div_(255).unsqueeze(1).expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def study_aware_batches(
    study: np.ndarray, batch_size: int, seed: int, epoch: int, drop_last: bool = True
) -> list[np.ndarray]:
    """Shuffled batches in which no two images share a study.

    Images of one study share one report, so inside a batch they would be each other's
    false negatives. An image whose study is already in the current batch waits for the
    next one; the order depends only on (seed, epoch), so a resumed run sees the same batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(study))
    batches: list[np.ndarray] = []
    pending: list[int] = []
    current: list[int] = []
    seen: set[int] = set()
    queue: Iterator[int] = iter(order.tolist())
    while True:
        placed = False
        for i, idx in enumerate(pending):
            if study[idx] not in seen:
                current.append(pending.pop(i))
                seen.add(int(study[current[-1]]))
                placed = True
                break
        if not placed:
            nxt = next(queue, None)
            if nxt is None:
                break
            if study[nxt] in seen:
                pending.append(nxt)
                continue
            current.append(nxt)
            seen.add(int(study[nxt]))
        if len(current) == batch_size:
            batches.append(np.array(current))
            current, seen = [], set()
    # Images still pending share a study with the last partial batch; like that batch (with
    # drop_last) they sit this epoch out and come back in another order next epoch.
    if current and not drop_last:
        batches.append(np.array(current))
    return batches
