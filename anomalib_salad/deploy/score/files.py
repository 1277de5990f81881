"""The files ``salad-score`` reads and writes: its input list and shards, and the output folder.

The input is a folder, a file, a list file or a glob, sorted, and split into shards by position. Rows of the output
tables are appended and flushed as they come, so a killed run loses nothing written and ``--resume`` goes on where
it stopped; whole tables are written atomically.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ...data import reader

__all__ = [
    "COMPLETED",
    "ERRORS",
    "RUN",
    "SCANS",
    "SCORES",
    "SCORE_COLUMNS",
    "Appender",
    "RunState",
    "UsageError",
    "check_columns",
    "parse_shard",
    "prepare_output",
    "read_lines",
    "read_rows",
    "read_scores",
    "resolve_inputs",
    "select_shard",
    "write_table",
]

SCORES, SCANS, ERRORS, COMPLETED, RUN = "scores.csv", "scans.csv", "errors.csv", "completed_files.txt", "run.json"
SCORE_COLUMNS = ("path", "score", "label", "scan_kind", "scan", "study_uid", "modality")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


class UsageError(ValueError):
    """Wrong arguments, input, model or output folder: the run does not start."""


def _is_list_file(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES and not path.name.lower().endswith(reader.SUPPORTED_SUFFIXES)


def resolve_inputs(spec: str | Path) -> list[str]:
    """The files named by ``--input``, sorted and without duplicates.

    Args:
        spec: A folder (searched recursively for the formats the reader reads, see
            :func:`anomalib_salad.data.reader.list_files`), one image file, a list file (``.txt``, ``.lst``, ``.list``,
            ``.csv``: one path per line, ``#`` comments, relative paths from the list's folder), or a glob
            (``**`` descends into folders).

    Returns:
        list[str]: File paths.

    Raises:
        UsageError: If nothing matches.
    """
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        files = [str(file) for file in reader.list_files(path)]
    elif path.is_file() and _is_list_file(path):
        files = []
        for line in path.read_text().splitlines():
            entry = line.strip()
            if entry and not entry.startswith("#"):
                files.append(entry if os.path.isabs(entry) else str(path.parent / entry))
    elif path.is_file():
        files = [text]
    else:
        files = [match for match in glob.glob(text, recursive=True) if os.path.isfile(match)]
    files = sorted(set(files))
    if not files:
        msg = f"--input {text!r} names no file (a folder, a file, a list file {list(LIST_SUFFIXES)} or a glob)"
        raise UsageError(msg)
    return files


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)`` with ``1 <= K <= N``; ``None`` is ``(1, 1)``.

    Raises:
        UsageError: For anything else.
    """
    if text is None:
        return (1, 1)
    try:
        part, total = (int(value) for value in text.split("/"))
    except ValueError:
        part = total = 0
    if not 1 <= part <= total:
        msg = f"--shard must be K/N with 1 <= K <= N (e.g. 2/4), got {text!r}"
        raise UsageError(msg)
    return (part, total)


def select_shard(files: Sequence[str], part: int, total: int) -> list[str]:
    """Files whose position in ``files`` (sorted) is ``part - 1`` modulo ``total``: disjoint shards that cover all.

    Args:
        files: Sorted file paths (as :func:`resolve_inputs` returns them).
        part: Shard number, 1-based.
        total: Number of shards.

    Returns:
        list[str]: This shard's files, in order.
    """
    return [path for index, path in enumerate(files) if index % total == part - 1]


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that was not finished (a run killed mid-write): its image is scored again."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def _read_column(path: Path, column: int = 0) -> list[str]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return [row[column] for row in rows[1:] if len(row) > column]


class Appender:
    """A CSV (or plain text) file that is appended to and flushed after every row; thread-safe."""

    def __init__(self, path: Path, header: Sequence[str] | None) -> None:
        new = not path.is_file() or path.stat().st_size == 0
        self.handle: TextIO = path.open("a", newline="")
        self.lock = threading.Lock()
        self.last_sync = time.monotonic()
        if new and header is not None:
            self.write_row(header)

    def write_row(self, row: Sequence[Any]) -> None:
        """Append one CSV row."""
        buffer = io.StringIO()
        csv.writer(buffer).writerow(row)
        self.write_text(buffer.getvalue())

    def write_text(self, text: str) -> None:
        """Append ``text`` (whole lines) in one write, flushed; synced to disk every few seconds."""
        with self.lock:
            self.handle.write(text)  # one write per row: a killed process leaves at most one partial line
            self.handle.flush()
            if time.monotonic() - self.last_sync > 5:  # on disk now and then, not per row (a power cut loses <5 s)
                os.fsync(self.handle.fileno())
                self.last_sync = time.monotonic()

    def close(self) -> None:
        """Flush, sync and close the file."""
        with self.lock:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()


@dataclass
class RunState:
    """What earlier runs into the same folder wrote."""

    scored: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)


def check_columns(path: Path) -> None:
    """A ``scores.csv`` to go on with or merge must have this version's columns (older ones lack the scan)."""
    with path.open(newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is not None and tuple(header) != SCORE_COLUMNS:
        msg = (
            f"{path} has the columns {','.join(header)}, not {','.join(SCORE_COLUMNS)}: it was written by an "
            "older salad-score; score into a new --output"
        )
        raise UsageError(msg)


def write_table(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a whole CSV file atomically: a kill leaves the old file or the new one, never a part."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def prepare_output(output: Path, run_info: dict[str, Any], resume: bool) -> RunState:
    """Create ``output`` and write ``run.json``; with ``resume``, check the earlier run's settings and read its state.

    Raises:
        UsageError: If ``output`` holds results and ``resume`` is not set, if they have older columns, or if the
            earlier run had other settings.
    """
    output.mkdir(parents=True, exist_ok=True)
    existing = [name for name in (SCORES, SCANS, ERRORS, COMPLETED) if (output / name).is_file()]
    if existing and not resume:
        msg = f"{output} already holds {', '.join(existing)}: pass --resume to continue that run, or a new --output"
        raise UsageError(msg)
    if resume and (output / SCORES).is_file():
        _drop_partial_line(output / SCORES)  # a header cut off by a kill is no older format
        check_columns(output / SCORES)
    run_file = output / RUN
    if resume and run_file.is_file():
        before = json.loads(run_file.read_text())
        changed = sorted(key for key in run_info if before.get(key) != run_info[key])
        if changed:
            details = "; ".join(f"{key}: {before.get(key)!r} -> {run_info[key]!r}" for key in changed)
            msg = f"--resume with other settings than the run in {output} ({details}); use a new --output"
            raise UsageError(msg)
    run_file.write_text(json.dumps(run_info, indent=2) + "\n")
    state = RunState()
    if resume:
        for name in (SCORES, ERRORS, COMPLETED):
            _drop_partial_line(output / name)
        state.scored = set(_read_column(output / SCORES))
        state.failed = set(_read_column(output / ERRORS))
        if (output / COMPLETED).is_file():
            state.completed = set((output / COMPLETED).read_text().splitlines())
    return state


def read_scores(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a ``scores.csv`` as dicts, after checking its columns."""
    check_columns(path)
    with path.open(newline="") as handle:
        yield from csv.DictReader(handle)


def read_rows(path: Path) -> list[list[str]]:
    """The rows of a CSV file after its header (none if it is missing)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.reader(handle))[1:]


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a text file (none if it is missing)."""
    return [line for line in path.read_text().splitlines() if line] if path.is_file() else []
