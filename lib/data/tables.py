"""Reading the MIMIC CSV files with checks, and counting every dropped row by reason."""

from __future__ import annotations

import gzip
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lib.errors import DataError

MAX_EXAMPLES = 10  # offending ids listed per reason in metrics files


class DropLog:
    """Counts dropped rows per reason and keeps a few example ids for each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def drop(self, df: pd.DataFrame, bad: pd.Series, reason: str, id_col: str) -> pd.DataFrame:
        """Return ``df`` without the rows where ``bad`` is true, recording them under ``reason``."""
        n = int(bad.sum())
        if n:
            self.counts[reason] += n
            ex = self.examples.setdefault(reason, [])
            ex.extend(str(v) for v in df.loc[bad, id_col].head(MAX_EXAMPLES - len(ex)))
        return df.loc[~bad]

    def note(self, reason: str, n: int, examples: Sequence[str] = ()) -> None:
        if n:
            self.counts[reason] += n
            ex = self.examples.setdefault(reason, [])
            ex.extend(list(examples)[: MAX_EXAMPLES - len(ex)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def metrics(self) -> dict[str, Any]:
        return {
            "dropped": dict(sorted(self.counts.items())),
            "dropped_total": self.total,
            "dropped_examples": {k: v for k, v in sorted(self.examples.items()) if v},
        }


def read_csv_checked(
    path: str | Path, columns: Sequence[str], params_key: str, **kwargs: Any
) -> pd.DataFrame:
    """Read a (gzipped) CSV, failing with a message that names the file, the missing
    columns and the params key that points at it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; set {params_key} in params.yaml to the directory "
            "that holds the MIMIC-CXR-JPG files"
        )
    try:
        df = pd.read_csv(path, **kwargs)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({err}); re-download it") from err
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: the file is empty; re-download it") from err
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a valid CSV ({err}); re-download it") from err
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)}. "
            f"Expected the MIMIC-CXR-JPG v2.0.0 columns {list(columns)}"
        )
    return df


def parse_ids(df: pd.DataFrame, cols: Sequence[str], log: DropLog) -> pd.DataFrame:
    """Convert id columns to int64, dropping (and counting) rows whose id is not an integer."""
    df = df.copy()
    for col in cols:
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | (num != num.round())
        df = log.drop(df, bad, f"invalid_{col}", col)  # examples show the bad values
        df[col] = num[~bad].astype("int64")
    return df
