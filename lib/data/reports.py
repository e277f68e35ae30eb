"""MIMIC-CXR free-text reports: read them from the zip (or an unpacked tree) and
split them into sections the way the official MIT-LCP ``section_parser`` does.

Sectioning rules (those of the official parser):
- a header is an all-caps line start ``\\n <NAME>:`` followed by white space;
  the text before the first header is the ``preamble``;
- names are normalised through the parser's synonym table (``CONCLUSION`` →
  impression, ``COMPARISONS`` → comparison, misspellings …), then by the
  main-section names they contain, then by view descriptions meaning findings;
- empty findings/impression sections are dropped; when a report has neither,
  the last section minus its first paragraph becomes ``last_paragraph``;
- when a name occurs twice, the last occurrence wins.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lib.errors import DataError

_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
_WS = re.compile(r"\s+")
# Paths of report files inside the zip or tree: .../pXX/p<subject>/s<study>.txt
REPORT_MEMBER = re.compile(r"(?:^|/)p\d\d/p(\d+)/s(\d+)\.txt$")

# Synonyms of the official parser, with how often each occurs in MIMIC-CXR's reports.
SECTION_SYNONYMS: dict[str, str] = {
    "preamble": "preamble",
    "impression": "impression",
    "comparison": "comparison",
    "indication": "indication",
    "findings": "findings",
    "examination": "examination",
    "technique": "technique",
    "history": "history",
    "comparisons": "comparison",
    "clinical history": "history",
    "reason for examination": "indication",
    "notification": "notification",
    "reason for exam": "indication",
    "clinical information": "history",
    "exam": "examination",
    "clinical indication": "indication",
    "conclusion": "impression",
    "chest, two views": "findings",
    "recommendation(s)": "recommendations",
    "type of examination": "examination",
    "reference exam": "comparison",
    "patient history": "history",
    "addendum": "addendum",
    "comparison exam": "comparison",
    "date": "date",
    "comment": "comment",
    "findings and impression": "impression",
    "wet read": "wet read",
    "comparison film": "comparison",
    "recommendations": "recommendations",
    "findings/impression": "impression",
    "pfi": "history",
    "recommendation": "recommendations",
    "wetread": "wet read",
    "impresson": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "impession": "impression",
    "findings/ impression": "impression",
    "finding": "findings",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
    "idication": "indication",
    "reference findings": "findings",
    "comparision": "comparison",
    "comparsion": "comparison",
    "comparrison": "comparison",
    "comparisions": "comparison",
}
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
# Header names that describe the whole study are findings ("PA AND LATERAL VIEWS:").
_FINDINGS_HINT = re.compile(
    "chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and"
    "|two views|frontal view|pa view|ap view|one view|lateral view|bone window"
    "|frontal upright|frontal semi-upright|ribs|pa and lat"
)


@dataclass(frozen=True)
class ParsedReport:
    """The parts of one report the pipeline uses; white space is collapsed."""

    findings: str
    impression: str
    last_paragraph: str
    comparison: str

    def text(self, sections: Iterable[str]) -> tuple[str, str]:
        """(text, source): the named sections joined; if the report has neither findings nor
        impression, the official fallbacks (last paragraph, then comparison)."""
        if self.findings or self.impression:
            parts = [getattr(self, name) for name in sections]
            return " ".join(p for p in parts if p), "sections"
        if self.last_paragraph:
            return self.last_paragraph, "last_paragraph"
        if self.comparison:
            return self.comparison, "comparison"
        return "", "none"


def normalize_section_name(name: str) -> str:
    name = name.lower().strip()
    if name in SECTION_SYNONYMS:
        return SECTION_SYNONYMS[name]
    for main in _MAIN_SECTIONS:
        if main in name:
            return main
    if _FINDINGS_HINT.search(name):
        return "findings"
    return name


def split_sections(text: str) -> list[tuple[str, str]]:
    """(normalised name, raw content) of every section, in order of appearance."""
    match = _HEADER.search(text)
    if match is None:
        sections = [("full report", text)]
    else:
        sections = [("preamble", text[: match.start(1)])]
        while match is not None:
            name, start = match.group(1), match.end()
            # Resume the search after the header's own line, as the official parser does,
            # so a header-like phrase right after a header is not taken for a new section.
            skip = text.find("\n", start)
            match = _HEADER.search(text, skip if skip != -1 else start)
            end = len(text) if match is None else match.start()
            sections.append((name, text[start:end]))
    sections = [(normalize_section_name(n), c) for n, c in sections]
    sections = [
        (n, c) for n, c in sections if not (n in ("findings", "impression") and not c.strip())
    ]
    names = {n for n, _ in sections}
    if "findings" not in names and "impression" not in names:
        last_name, last = sections[-1]
        if "\n \n" in last:
            first, _, rest = last.partition("\n \n")
            sections[-1] = (last_name, first)
            sections.append(("last_paragraph", rest))
    return sections


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z0-9]")


def split_sentences(text: str) -> list[str]:
    """The sentences of a report text: cut after ".", "!" or "?" followed by whitespace;
    pieces without a letter or digit ("—", "...") are dropped. Never empty for a text that
    has a word: a text with no sentence end is one sentence; a text with no word gives []."""
    return [s.strip() for s in _SENTENCE_END.split(text) if _WORD.search(s)]


def parse_report(text: str) -> ParsedReport:
    last: dict[str, str] = {}
    for name, content in split_sections(text):
        last[name] = content  # the last occurrence of a name wins
    clean = {k: _WS.sub(" ", v).strip() for k, v in last.items()}
    return ParsedReport(
        findings=clean.get("findings", ""),
        impression=clean.get("impression", ""),
        last_paragraph=clean.get("last_paragraph", ""),
        comparison=clean.get("comparison", ""),
    )


def decode_report(raw: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 when valid, else Latin-1 (which decodes any byte string)."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


@dataclass(frozen=True)
class RawReport:
    """One report as found: bytes, or the reason it could not be read."""

    subject_id: int
    study_id: int
    location: str
    data: bytes | None
    error: str | None = None


class ReportSource:
    """Reports keyed by study, from ``mimic-cxr-reports.zip`` or an unpacked ``files/`` tree.

    Nothing is extracted to disk: zip members are read in memory.
    """

    def __init__(self, path: str | Path, params_key: str = "data.reports") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(
                f"{self.path}: reports not found; set {params_key} in params.yaml to "
                "mimic-cxr-reports.zip or to the directory holding its files/ tree"
            )
        self._zip: zipfile.ZipFile | None = None
        self.duplicates: list[str] = []
        if self.path.is_dir():
            base = self.path / "files" if (self.path / "files").is_dir() else self.path
            self._base = base
            self._index: dict[int, tuple[int, str]] | None = None
        else:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(
                    f"{self.path}: not a readable zip archive ({err}); set {params_key} to "
                    "mimic-cxr-reports.zip or to an unpacked reports directory"
                ) from err
            self._index = self._index_zip(self._zip)

    def _index_zip(self, zf: zipfile.ZipFile) -> dict[int, tuple[int, str]]:
        index: dict[int, tuple[int, str]] = {}
        for name in zf.namelist():
            m = REPORT_MEMBER.search(name)
            if m is None:
                continue
            subject, study = int(m.group(1)), int(m.group(2))
            if study in index:
                self.duplicates.append(name)
                continue
            index[study] = (subject, name)
        if not index:
            raise DataError(
                f"{self.path}: no report files (pXX/pNNNNNNNN/sNNNNNNNN.txt) inside the zip; "
                "is data.reports the MIMIC-CXR reports archive?"
            )
        return index

    def read(self, studies: Iterable[tuple[int, int]]) -> Iterator[RawReport]:
        """Yield one RawReport per (subject_id, study_id) asked for, in the order given."""
        for subject, study in studies:
            yield self._read_one(int(subject), int(study))

    def _read_one(self, subject: int, study: int) -> RawReport:
        if self._zip is None:
            s = str(subject)
            path = self._base / f"p{s[:2]}" / f"p{s}" / f"s{study}.txt"
            try:
                return RawReport(subject, study, str(path), path.read_bytes())
            except FileNotFoundError:
                return RawReport(subject, study, str(path), None, "missing")
            except OSError as err:
                return RawReport(subject, study, str(path), None, f"unreadable: {err}")
        assert self._index is not None
        found = self._index.get(study)
        if found is None:
            return RawReport(subject, study, "", None, "missing")
        member_subject, name = found
        if member_subject != subject:
            return RawReport(subject, study, name, None, "subject_mismatch")
        try:
            return RawReport(subject, study, name, self._zip.read(name))
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
            return RawReport(subject, study, name, None, f"unreadable: {err}")
        except (NotImplementedError, RuntimeError) as err:
            # An unsupported compression method (NotImplementedError), an encrypted member or
            # a compressor module missing from this Python (RuntimeError): as unreadable.
            return RawReport(subject, study, name, None, f"unreadable: {type(err).__name__}: {err}")

    def reopen(self) -> None:
        """Open a private handle on the zip (after fork: a shared file offset is unsafe)."""
        if self._zip is not None:
            self._zip = zipfile.ZipFile(self.path)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


PARALLEL_MIN_STUDIES = 20_000
CHUNK = 5_000
_worker_source: ReportSource | None = None

REPORT_COLUMNS = (
    "subject_id",
    "study_id",
    "status",
    "encoding",
    "report_chars",
    "findings",
    "impression",
    "text",
    "text_source",
)
Row = tuple[int, int, str, str, int, str, str, str, str]


def _parse_pairs(
    source: ReportSource, pairs: list[tuple[int, int]], sections: tuple[str, ...]
) -> tuple[pd.DataFrame, list[str], list[str]]:
    rows: list[Row] = []
    unreadable: list[str] = []
    latin1: list[str] = []
    for rep in source.read(pairs):
        if rep.data is None:
            status = rep.error or "missing"
            if status.startswith("unreadable"):
                unreadable.append(f"{rep.location}: {status}")
                status = "unreadable"
            rows.append((rep.subject_id, rep.study_id, status, "", 0, "", "", "", "none"))
            continue
        text, encoding = decode_report(rep.data)
        if encoding != "utf-8":
            latin1.append(rep.location)
        parsed = parse_report(text)
        body, text_source = parsed.text(sections)
        rows.append(
            (
                rep.subject_id,
                rep.study_id,
                "ok",
                encoding,
                len(_WS.sub(" ", text).strip()),
                parsed.findings,
                parsed.impression,
                body,
                text_source,
            )
        )
    # A DataFrame (Arrow-backed strings) crosses the process boundary as a few buffers,
    # several times cheaper than pickling ~10^5 tuples of Python strings.
    df = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    return df, unreadable, latin1


def _init_worker(source: ReportSource) -> None:
    global _worker_source
    source.reopen()
    _worker_source = source


def _parse_chunk(
    args: tuple[list[tuple[int, int]], tuple[str, ...]],
) -> tuple[pd.DataFrame, list[str], list[str]]:
    assert _worker_source is not None
    return _parse_pairs(_worker_source, *args)


def extract_reports(
    studies: pd.DataFrame, source: ReportSource, sections: tuple[str, ...], workers: int = 1
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per (subject_id, study_id): status, sections and the training ``text``.

    ``status`` is ``ok`` or why the report could not be used (``missing``,
    ``subject_mismatch``, ``unreadable``); such rows are kept here and dropped, counted,
    by the QC stage. With ``workers > 1`` large inputs are parsed in worker processes;
    the result is identical for any number of workers.
    """
    pairs = studies[["subject_id", "study_id"]].drop_duplicates().sort_values("study_id")
    pair_list = list(pairs.itertuples(index=False, name=None))
    if workers > 1 and len(pair_list) >= PARALLEL_MIN_STUDIES:
        chunks = [pair_list[i : i + CHUNK] for i in range(0, len(pair_list), CHUNK)]
        ctx = mp.get_context("fork")  # workers inherit the zip index; each reopens the file
        with ctx.Pool(workers, initializer=_init_worker, initargs=(source,)) as pool:
            parts = pool.map(_parse_chunk, [(c, sections) for c in chunks])
    else:
        parts = [_parse_pairs(source, pair_list, sections)]
    df = pd.concat([part[0] for part in parts], ignore_index=True)
    unreadable = [u for part in parts for u in part[1]]
    latin1 = [x for part in parts for x in part[2]]
    df["report_chars"] = df["report_chars"].astype("int64")
    ok = df["status"] == "ok"
    metrics: dict[str, Any] = {
        "studies": len(df),
        "status": {k: int(v) for k, v in df["status"].value_counts().sort_index().items()},
        "unreadable_examples": unreadable[:10],
        "decoded_as_latin1": len(latin1),
        "decoded_as_latin1_examples": latin1[:10],
        "duplicate_members_ignored": len(source.duplicates),
        "duplicate_member_examples": source.duplicates[:10],
        "text_source": {
            k: int(v) for k, v in df.loc[ok, "text_source"].value_counts().sort_index().items()
        },
        "with_findings": int((df.loc[ok, "findings"] != "").sum()),
        "with_impression": int((df.loc[ok, "impression"] != "").sum()),
        "without_findings_and_impression": int(
            ((df.loc[ok, "findings"] == "") & (df.loc[ok, "impression"] == "")).sum()
        ),
        "sections_used": list(sections),
        # Studies are not dropped here: QC drops unusable reports and counts them by reason.
        "dropped": {},
        "dropped_total": 0,
    }
    return df, metrics
