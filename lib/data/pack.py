"""Pack every image of the master file once into a memory-mapped uint8 array.

MIMIC-CXR-JPG images are ~2,500 × 3,000 px JPEGs of ~1.5 MB; a model sees them at 224 px.
Decoding them on every epoch of every model starves the GPU (the spec's 72 img/s), so the
``pack_images`` stage decodes each image once, with ``lib.data.images.load_image`` (JPEG draft mode,
the same preprocessing as the direct path, bit for bit), into ``images.npy``: (N, S, S)
uint8 in master-file order, read through ``np.load(mmap_mode="r")``. Training and evaluation
then gather batches from the page cache. On a GPU, ``pack.decoder: nvjpeg`` decodes batches
with nvJPEG instead (``lib.data.jpeg_batch``): the same preprocessing within 3 grey levels, not
bit for bit; ``index.json`` records which decoder made the pack.

The work is done in chunks written in place into a state directory; ``ok.npy`` records every
decoded row, so a killed run, resumed with any ``pack.chunk_size``, decodes exactly the rows
not yet ``ok``. Rows that failed are retried on every resume (a repaired file then decodes).
Unreadable or corrupt images, and with ``data.verify_checksums`` images whose SHA-256 is not
the one in SHA256SUMS.txt, are counted by reason and listed; their rows are zeros and flagged
not ``ok``, and readers leave them out.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from lib.data.checksums import checksum_problem
from lib.data.images import load_image
from lib.data.master import Split
from lib.errors import DataError
from lib.io import atomic_path, write_json, write_npy

if TYPE_CHECKING:  # torch is imported where it is used: reading a split's rows (eval@X,
    import torch  # pixel_probe) does not pay for importing it

IMAGES = "images.npy"
INDEX = "index.json"
OK = "ok.npy"
DICOM = "dicom.npy"

# Decoding errors of a corrupt, truncated or foreign file (PIL raises these).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
UNREADABLE = "unreadable"  # failure reason of a file that is missing or does not decode

Decoded = tuple[int, np.ndarray | None, str, str]  # row, pixels or None, reason, error


@dataclass(frozen=True)
class PackResult:
    n_images: int
    image_size: int
    failed: list[dict[str, str]]  # {"image", "reason", "error"} per image left out
    images_resumed: int  # rows an earlier, interrupted run of the same pack had decoded


def pack_images(
    root: Path,
    images: Sequence[str],
    dicom: Sequence[str],
    size: int,
    state_dir: Path,
    run_id: str,
    workers: int,
    chunk_size: int = 1024,
    progress: Callable[[int], Any] | None = None,
    device: torch.device | None = None,
    batch_size: int = 64,
    checksums: Mapping[str, str] | None = None,
) -> PackResult:
    """Decode ``images`` (paths relative to ``root``) into ``state_dir/images.npy``.

    Resumes in ``state_dir`` when its ``run_id`` matches (same master file, root, size,
    decoder and checksum setting), decoding every row not yet ``ok``; the finished state
    directory holds images.npy, ok.npy, dicom.npy and index.json. ``progress`` is called
    with the number of images finished after each chunk.

    ``checksums`` (relative path -> SHA-256, from SHA256SUMS.txt): each file's bytes are
    hashed before decoding; a mismatch or an unlisted file fails that image by reason.

    Without ``device``, ``workers`` threads decode with ``load_image`` (Pillow, draft mode).
    With one, ``workers`` threads read the files and ``lib.data.jpeg_batch.decode_batch`` decodes
    ``batch_size`` JPEGs at a time on it (nvJPEG on CUDA): faster on a GPU, but not
    bit-identical to ``load_image`` (see lib/data/jpeg_batch.py); files that are not JPEGs still
    go through ``load_image``.
    """
    n = len(images)
    if n == 0:
        raise DataError("the master file lists no images to pack")
    state_dir.mkdir(parents=True, exist_ok=True)
    meta_path = state_dir / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    resume = meta.get("run_id") == run_id and all((state_dir / f).is_file() for f in (IMAGES, OK))
    if not resume:
        for p in state_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        np.lib.format.open_memmap(
            state_dir / IMAGES, mode="w+", dtype=np.uint8, shape=(n, size, size)
        ).flush()
        write_npy(state_dir / OK, np.zeros(n, dtype=bool))
        write_json(meta_path, {"run_id": run_id})
    out = np.load(state_dir / IMAGES, mmap_mode="r+")
    ok = np.load(state_dir / OK)
    if out.shape != (n, size, size) or ok.shape != (n,):
        raise DataError(
            f"{state_dir}: the resumable pack holds {out.shape[0]} rows for {n} images; "
            f"remove it (rm -rf {state_dir}) and rerun `dvc repro pack_images`"
        )
    # The rows still to decode: never decoded, or failed before (retried: a file replaced
    # since then decodes now). Done rows are tracked, not chunks, so any chunk_size resumes.
    todo = np.flatnonzero(~ok)
    resumed = n - len(todo)
    if progress and resumed:
        progress(resumed)

    def decode_bytes(i: int, data: bytes | None) -> Decoded:
        try:
            if data is None:
                return i, load_image(root / images[i], size), "", ""
            return i, load_image(io.BytesIO(data), size), "", ""
        except DECODE_ERRORS as err:
            return i, None, UNREADABLE, f"{type(err).__name__}: {err}"

    def verified(i: int, data: bytes) -> Decoded | None:
        """The failure of an image whose bytes are not those of SHA256SUMS.txt, else None."""
        problem = checksum_problem(data, images[i], checksums) if checksums is not None else None
        return None if problem is None else (i, None, *problem)

    def decode(i: int) -> Decoded:
        if checksums is None:
            return decode_bytes(i, None)
        try:
            data = (root / images[i]).read_bytes()
        except OSError as err:
            return i, None, UNREADABLE, f"{type(err).__name__}: {err}"
        return verified(i, data) or decode_bytes(i, data)

    def read(i: int) -> bytes:
        try:
            return (root / images[i]).read_bytes()
        except OSError:
            return b""  # not a JPEG to decode_batch: decode() reports the error

    def decode_on_device(pool: ThreadPoolExecutor, rows: np.ndarray) -> Iterator[Decoded]:
        from lib.data.jpeg_batch import decode_batch  # only the pack_images stage needs it

        # Threads read up to two batches ahead while the device decodes (bounded memory).
        ahead: deque[Future[bytes]] = deque()
        following = 0
        for start in range(0, len(rows), batch_size):
            while following < len(rows) and len(ahead) < 2 * batch_size:
                ahead.append(pool.submit(read, int(rows[following])))
                following += 1
            idx = [int(i) for i in rows[start : start + batch_size]]
            blobs = [ahead.popleft().result() for _ in idx]
            bad = {i: v for i, b in zip(idx, blobs, strict=True) if b and (v := verified(i, b))}
            keep = [(i, b) for i, b in zip(idx, blobs, strict=True) if i not in bad]
            decoded = decode_batch([b for _, b in keep], size, device) if keep else []
            yield from bad.values()
            for (i, _), r in zip(keep, decoded, strict=True):
                if r is None:  # not a JPEG, or unreadable: Pillow's path decodes or reports it
                    yield decode(i)
                elif isinstance(r, str):
                    yield i, None, UNREADABLE, r
                else:
                    yield i, r, "", ""

    failures: dict[int, dict[str, str]] = {}  # row -> its failure in this run
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(todo), chunk_size):
            rows = todo[start : start + chunk_size]
            chunk = (
                pool.map(decode, rows.tolist()) if device is None else decode_on_device(pool, rows)
            )
            for i, pixels, reason, error in chunk:
                if pixels is None:
                    out[i] = 0
                    ok[i] = False
                    failures[i] = {"image": images[i], "reason": reason, "error": error}
                else:
                    out[i] = pixels
                    ok[i] = True
            out.flush()
            write_npy(state_dir / OK, ok)  # after the pixels: a row is ok only once written
            if progress:
                progress(len(rows))
    # Every row not ok was tried in this run: each is decoded or counted as failed.
    failed = [failures[int(i)] for i in np.flatnonzero(~ok)]
    del out
    write_npy(state_dir / DICOM, np.asarray(dicom, dtype=np.bytes_))  # ASCII ids, 1 byte/char
    write_json(
        state_dir / INDEX,
        {
            "n_images": n,
            "image_size": size,
            "decoder": "pillow-draft" if device is None else f"torchvision-{device.type}",
            "n_failed": len(failed),
            "failed": failed,
            "checksums_verified": checksums is not None,
        },
    )
    return PackResult(n, size, failed, resumed)


@dataclass
class Pack:
    """A finished pack: the memory-mapped images and which rows are usable."""

    images: np.ndarray  # (N, S, S) uint8, read-only memmap
    ok: np.ndarray  # (N,) bool
    row_of: dict[str, int]  # dicom_id -> row
    image_size: int
    path: Path

    @classmethod
    def open(cls, path: Path) -> Pack:
        for name in (IMAGES, OK, DICOM, INDEX):
            if not (path / name).is_file():
                raise DataError(f"{path / name}: not found; run `dvc repro pack_images` first")
        images = np.load(path / IMAGES, mmap_mode="r")
        dicom = np.load(path / DICOM).astype(str)
        ok = np.load(path / OK)
        if not (len(images) == len(dicom) == len(ok)):
            raise DataError(
                f"{path}: images, ok and dicom lengths differ; repack with "
                "`dvc repro -s -f pack_images`"
            )
        return cls(images, ok, {d: i for i, d in enumerate(dicom.tolist())}, images.shape[1], path)

    def rows(self, split: Split) -> np.ndarray:
        """(N,) pack rows of a split's images, in the split's order."""
        try:
            return np.fromiter(
                (self.row_of[d] for d in split.dicom), dtype=np.int64, count=len(split)
            )
        except KeyError as err:
            raise DataError(
                f"{self.path}: image {err.args[0]} of the master file is not in the pack; the "
                "pack is stale, rerun `dvc repro pack_images`"
            ) from None

    def usable(self, split: Split) -> Split:
        """The split without the images the pack could not decode (same order)."""
        keep = self.ok[self.rows(split)]
        return split if keep.all() else split.subset(np.flatnonzero(keep))

    def pixels(self, split: Split, size: int) -> PackedPixels:
        """Batch access to a split's images; ``size`` is the model's input size."""
        if size != self.image_size:
            raise DataError(
                f"{self.path}: images are packed at {self.image_size} px but the model takes "
                f"{size} px; set data.image_size: {size} in params.yaml (the pack is rebuilt)"
            )
        rows = self.rows(split)
        bad = ~self.ok[rows]
        if bad.any():
            raise DataError(
                f"{self.path}: {int(bad.sum())} images of this split could not be decoded "
                f"(e.g. {split.dicom[int(np.flatnonzero(bad)[0])]}); leave them out with "
                "Pack.usable(split), or fix them under data.root and `dvc repro pack_images`"
            )
        return PackedPixels(self.images, rows)


class PackedPixels:
    """``pixels[idx]`` → (B, S, S) uint8 tensor, gathered from the memmap in one copy.

    Stands in for the in-memory (N, S, S) tensor of ``lib.data.images.load_images``.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.rows = images, rows
        self.shape = (len(rows), *images.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        import torch

        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        rows = self.rows[idx]
        # Gather in ascending row order (sequential reads), then restore the batch order.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return torch.from_numpy(out)


def pack_run_id(
    master: Path, root: Path, size: int, decoder: str, verify_checksums: bool = False
) -> str:
    """Identifies a pack_images run by everything that shapes its rows: its state is resumed
    only by the same run (pack.chunk_size and pack.workers shape none)."""
    st = master.stat()
    blob = f"{master.resolve()}|{st.st_size}|{st.st_mtime_ns}|{root.resolve()}|{size}|{decoder}"
    blob += f"|verify={verify_checksums}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def decode_device(decoder: str, params_file: Path) -> torch.device | None:
    """The GPU for ``pack.decoder: nvjpeg``; None for the CPU decoder."""
    if decoder != "nvjpeg":
        return None
    import torch

    if not torch.cuda.is_available():
        raise DataError(
            f"pack.decoder = nvjpeg needs a CUDA GPU and none is visible; set "
            f"pack.decoder: pillow in {params_file} (it decodes on the CPU cores)"
        )
    return torch.device("cuda")


def pack_metrics(result: PackResult) -> dict[str, Any]:
    return {
        "images": result.n_images,
        "image_size": result.image_size,
        "failed": len(result.failed),
        "failed_fraction": round(len(result.failed) / result.n_images, 6),
        "failed_by_reason": dict(sorted(Counter(f["reason"] for f in result.failed).items())),
        "failed_images": result.failed,
    }


def check_failed(result: PackResult, max_fraction: float, root: Path, listed_in: Path) -> None:
    """Too many unreadable images stop the stage (all of them are listed in ``listed_in``)."""
    fraction = len(result.failed) / result.n_images
    if fraction > max_fraction:
        examples = "; ".join(f"{f['image']}: {f['error']}" for f in result.failed[:5])
        reasons = dict(sorted(Counter(f["reason"] for f in result.failed).items()))
        raise DataError(
            f"{len(result.failed)} of {result.n_images} images under {root} could not be "
            f"decoded or verified ({fraction:.2%} > pack.max_failed_fraction = "
            f"{max_fraction}; by reason {reasons}), e.g. {examples}. Replace the damaged "
            f"files (all are listed in {listed_in}) and run `dvc repro -s -f pack_images` "
            "(-f because DVC does not track the image files, -s to rerun this stage alone; "
            "it retries only the failed images), or raise pack.max_failed_fraction to leave "
            "them out"
        )


def publish(state_dir: Path, out: Path) -> None:
    """Move the finished state directory to ``out`` (a rename on one file system: no copy
    of the pack), without its resume record."""
    (state_dir / "run.json").unlink()
    with atomic_path(out) as tmp:
        shutil.move(state_dir, tmp)


def default_workers(workers: int) -> int:
    """pack.workers: 0 means every core."""
    return workers if workers > 0 else (os.cpu_count() or 1)
