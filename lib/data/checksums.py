"""MIMIC-CXR-JPG's SHA256SUMS.txt: the SHA-256 of every file of the release, one
``<sha256>  <relative path>`` line each (``sha256sum``'s format; paths such as
``files/p10/p10000032/s50414267/<dicom_id>.jpg``).

With ``data.verify_checksums: true`` the pack_images stage hashes the bytes of each image it
decodes (it reads them anyway) and fails the images whose digest differs, by reason, under
``pack.max_failed_fraction``: a flipped byte inside a JPEG still decodes, to wrong pixels.
DVC depends on this one file, never on the image tree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from lib.errors import DataError

CHECKSUM_MISMATCH = "checksum_mismatch"
NOT_IN_CHECKSUMS = "not_in_checksums"
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def read_checksums(path: Path) -> dict[str, str]:
    """Relative path -> lowercase SHA-256 hex digest, from a ``sha256sum`` listing."""
    if not path.is_file():
        raise DataError(
            f"{path}: checksum file not found; data.verify_checksums needs MIMIC-CXR-JPG's "
            "SHA256SUMS.txt in data.root (or set data.verify_checksums: false)"
        )
    sums: dict[str, str] = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            m = _LINE.match(line)
            if m is None:
                raise DataError(
                    f"{path}: line {n} is {line[:80]!r}, not '<sha256>  <relative path>'; "
                    "re-download SHA256SUMS.txt from the MIMIC-CXR-JPG release"
                )
            sums[m.group(2).removeprefix("./")] = m.group(1).lower()
    return sums


def checksum_problem(data: bytes, relpath: str, sums: Mapping[str, str]) -> tuple[str, str] | None:
    """(reason, error) if ``data`` is not the file SHA256SUMS.txt lists at ``relpath``."""
    expected = sums.get(relpath)
    if expected is None:
        return NOT_IN_CHECKSUMS, "not listed in SHA256SUMS.txt: cannot be verified"
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        return CHECKSUM_MISMATCH, f"SHA-256 {actual}, SHA256SUMS.txt says {expected}"
    return None


def sha256sums_lines(root: Path, relpaths: list[str]) -> list[str]:
    """``sha256sum``-format lines of ``relpaths`` (relative to ``root``), in the given order."""
    return [f"{hashlib.sha256((root / p).read_bytes()).hexdigest()}  {p}\n" for p in relpaths]
