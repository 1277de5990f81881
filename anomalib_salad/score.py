"""``salad-score``: score an archive of images, DICOM files and NIfTI volumes with an exported SALAD model.

Torch-free: it needs the OpenVINO Python package, NumPy and Pillow (and pydicom / nibabel for DICOM / NIfTI), and
reads every file with :mod:`anomalib_salad.reader`, the reader that training uses. Usage::

    salad-score --model exports/weights/openvino/model.xml --input /archive --output scores/
    salad-score ... --input "/archive/**/*.dcm" --window lung       # a glob; CT lung window
    salad-score ... --input files.txt --shard 2/4                   # a list file; the 2nd of 4 machines
    salad-score ... --resume                                        # go on after an interruption
    salad-score ... --scan-score mean-top-k --top-k 3               # a scan scores as its 3 highest slices
    salad-score merge --output scores/ part1/ part2/ part3/ part4/  # the 4 shards' folders as one

What it writes into ``--output``:

* ``scores.csv``: ``path,score,label,scan_kind,scan,study_uid,modality``, one row per 2-D image: a file, a DICOM
  frame (``path:frame:k``) or a NIfTI slice (``path:axis:index``). ``score`` is the exported graph's normalised
  score in ``[0, 1]``; the threshold fitted on the validation set maps to 0.5, so ``label`` is ``anomalous`` above
  it, else ``normal``. ``scan_kind`` and ``scan`` name the scan the image belongs to (see ``scans.csv``);
  ``study_uid`` and ``modality`` are the DICOM file's Study Instance UID and Modality (empty for other files).
* ``scans.csv``: ``scan,scan_kind,study_uid,series_uid,modality,slices,aggregate,score,label,top_slice,
  top_slice_score``, one row per scan, ordered by the first image of each. A scan is a DICOM series
  (``dicom_series``; ``scan`` is its Series Instance UID, and every file and frame of the series belongs to it,
  wherever it lies), a DICOM file without a Series Instance UID (``dicom_file``), a NIfTI volume
  (``nifti_volume``) or a PNG/JPEG/TIFF file (``image``: a scan of one slice); the last three are named by their
  path. ``slices`` counts the scan's rows in ``scores.csv``. ``score`` aggregates their scores as ``aggregate``
  (``--scan-score``) says: ``max`` (default), the highest; ``mean-top-K``, the mean of the K (``--top-k``)
  highest, or of all if the scan has fewer. ``label`` applies the model's threshold to that score in the same
  units as the per-image labels (``anomalous`` above it); with ``max`` a scan is anomalous exactly when one of
  its slices is. ``top_slice`` is the image with the highest score (its path, frame or slice index) and
  ``top_slice_score`` that score. The table is computed from the whole ``scores.csv`` at the end of every run
  that is not interrupted, so a resumed run counts every image once. One shard of several writes none (its
  series may continue in other shards): ``salad-score merge`` makes it from all of them.
* ``errors.csv``: ``path,reason`` for every file that could not be read or scored; the run goes on. (The images
  of such a file that were scored before it failed stay in ``scores.csv`` and count in their scan.)
* ``completed_files.txt``: the files whose every image is in ``scores.csv`` (what ``--resume`` skips).
* ``run.json``: the model, its label threshold, the input (and a hash of its file list), shard and reader
  settings; ``--resume`` and ``merge`` refuse to mix other ones in.
* ``overlays/`` with ``--overlays``: a heat-map PNG per image, mirroring the input's folders, and per NIfTI volume
  ``<name>.heatmap.nii.gz``: the anomaly maps resized to their slices and put back where the reader cut them
  (slices it skipped are 0), with the input's shape and affine, to open as an overlay on the scan in 3D Slicer
  or ITK-SNAP.

No output carries patient data: of a DICOM header only the pixel description, the LUT elements, the UIDs and the
Modality are read, so rows, error reasons, logs and file names hold paths, UIDs and the Modality, never a
patient's name, ID, birth date or another identifying element; a heat-map volume copies only the geometry of its
input's header (not its free-text fields).

Rows are appended and flushed as results arrive (in completion order, not input order), so a run that is
killed loses nothing written: ``--resume`` skips completed files and already written slices, drops a last row
cut off mid-line, and writes no row twice. ``--shard K/N`` keeps the files whose position in the sorted input
list is ``K-1`` modulo ``N``: N machines given the same input split it deterministically, each file exactly
once. ``salad-score merge --output DIR FOLDER...`` joins the output folders of all N finished shards of one run
into one ``scores.csv`` (sorted by path), ``errors.csv`` and ``scans.csv`` (a series split across shards counts
once, as in one run); given one finished folder, it recomputes ``scans.csv``, e.g. with another ``--scan-score``.
Images run through OpenVINO's ``AsyncInferQueue`` (one request per stream of the ``THROUGHPUT`` hint, so every
core is busy) while reader threads decode the next files.

Exit status: 0 if every file was scored, 1 if any file failed (see ``errors.csv``; also failures recorded by an
earlier run that ``--resume`` continued, or in a merged shard), 2 for wrong arguments, model or output folder,
130 if interrupted.

Reader settings must match training: ``--bit-depth`` for 16-bit PNG/TIFF (refused without it: 12-bit data read
as 16-bit would look 16x darker), ``--window`` for DICOM, ``--axis``/``--percentiles``/``--min-tissue`` for NIfTI;
``--reader-config`` reads them from a JSON file (:meth:`ReaderConfig.to_dict`).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import heapq
import io
import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image

from . import reader
from .deploy import CheckpointError, InputImageError, SaladInferencer, heatmap_overlay, prepare_input
from .reader import ImageReadError, ImageRef, ReaderConfig, ScanInfo

__all__ = [
    "SCAN_COLUMNS",
    "SCAN_SCORES",
    "SCORE_COLUMNS",
    "aggregate_scans",
    "label_threshold",
    "main",
    "merge",
    "parse_shard",
    "resolve_inputs",
    "scan_score",
    "select_shard",
]

SCORES, SCANS, ERRORS, COMPLETED, RUN = "scores.csv", "scans.csv", "errors.csv", "completed_files.txt", "run.json"
SCORE_COLUMNS = ("path", "score", "label", "scan_kind", "scan", "study_uid", "modality")
SCAN_COLUMNS = (
    "scan",
    "scan_kind",
    "study_uid",
    "series_uid",
    "modality",
    "slices",
    "aggregate",
    "score",
    "label",
    "top_slice",
    "top_slice_score",
)
SCAN_SCORES = ("max", "mean-top-k")
DEFAULT_TOP_K = 3
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")
EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Wrong arguments, input, model or output folder: the run does not start."""


# --------------------------------------------------------------------------------------------------------------
# Inputs and shards
# --------------------------------------------------------------------------------------------------------------


def _is_list_file(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES and not path.name.lower().endswith(reader.SUPPORTED_SUFFIXES)


def resolve_inputs(spec: str | Path) -> list[str]:
    """The files named by ``--input``, sorted and without duplicates.

    Args:
        spec: A folder (searched recursively for the formats the reader reads, see
            :func:`anomalib_salad.reader.list_files`), one image file, a list file (``.txt``, ``.lst``, ``.list``,
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


# --------------------------------------------------------------------------------------------------------------
# Output files: appended, flushed, resumable
# --------------------------------------------------------------------------------------------------------------


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


class _Appender:
    """A CSV (or plain text) file that is appended to and flushed after every row; thread-safe."""

    def __init__(self, path: Path, header: Sequence[str] | None) -> None:
        new = not path.is_file() or path.stat().st_size == 0
        self.handle: TextIO = path.open("a", newline="")
        self.lock = threading.Lock()
        self.last_sync = time.monotonic()
        if new and header is not None:
            self.write_row(header)

    def write_row(self, row: Sequence[Any]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(row)
        self.write_text(buffer.getvalue())

    def write_text(self, text: str) -> None:
        with self.lock:
            self.handle.write(text)  # one write per row: a killed process leaves at most one partial line
            self.handle.flush()
            if time.monotonic() - self.last_sync > 5:  # on disk now and then, not per row (a power cut loses <5 s)
                os.fsync(self.handle.fileno())
                self.last_sync = time.monotonic()

    def close(self) -> None:
        with self.lock:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()


@dataclass
class _State:
    """What earlier runs into the same folder wrote."""

    scored: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)


def _check_columns(path: Path) -> None:
    """A ``scores.csv`` to go on with or merge must have this version's columns (older ones lack the scan)."""
    with path.open(newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is not None and tuple(header) != SCORE_COLUMNS:
        msg = (
            f"{path} has the columns {','.join(header)}, not {','.join(SCORE_COLUMNS)}: it was written by an "
            "older salad-score; score into a new --output"
        )
        raise UsageError(msg)


def _write_table(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a whole CSV file atomically: a kill leaves the old file or the new one, never a part."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _prepare_output(output: Path, run_info: dict[str, Any], resume: bool) -> _State:
    output.mkdir(parents=True, exist_ok=True)
    existing = [name for name in (SCORES, SCANS, ERRORS, COMPLETED) if (output / name).is_file()]
    if existing and not resume:
        msg = f"{output} already holds {', '.join(existing)}: pass --resume to continue that run, or a new --output"
        raise UsageError(msg)
    if resume and (output / SCORES).is_file():
        _drop_partial_line(output / SCORES)  # a header cut off by a kill is no older format
        _check_columns(output / SCORES)
    run_file = output / RUN
    if resume and run_file.is_file():
        before = json.loads(run_file.read_text())
        changed = sorted(key for key in run_info if before.get(key) != run_info[key])
        if changed:
            details = "; ".join(f"{key}: {before.get(key)!r} -> {run_info[key]!r}" for key in changed)
            msg = f"--resume with other settings than the run in {output} ({details}); use a new --output"
            raise UsageError(msg)
    run_file.write_text(json.dumps(run_info, indent=2) + "\n")
    state = _State()
    if resume:
        for name in (SCORES, ERRORS, COMPLETED):
            _drop_partial_line(output / name)
        state.scored = set(_read_column(output / SCORES))
        state.failed = set(_read_column(output / ERRORS))
        if (output / COMPLETED).is_file():
            state.completed = set((output / COMPLETED).read_text().splitlines())
    return state


# --------------------------------------------------------------------------------------------------------------
# Scans: one row per DICOM series, NIfTI volume or image file, from the rows of scores.csv
# --------------------------------------------------------------------------------------------------------------


def _check_scan_score(method: str, top_k: int) -> None:
    if method not in SCAN_SCORES:
        msg = f"scan score must be one of {list(SCAN_SCORES)}, got {method!r}"
        raise ValueError(msg)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        msg = f"top_k must be an int >= 1, got {top_k!r}"
        raise ValueError(msg)


def scan_score(scores: Iterable[float], method: str = "max", top_k: int = DEFAULT_TOP_K) -> float:
    """The score of a scan from the scores of its slices (images: slices, frames or files).

    Args:
        scores: The slices' scores, at least one.
        method: ``"max"``: the highest score, so one anomalous slice makes the scan anomalous (a small lesion
            shows on few slices). ``"mean-top-k"``: the mean of the ``top_k`` highest scores, or of all of them
            when the scan has fewer: one noisy slice then counts ``1 / top_k``, while a lesion seen on
            ``top_k`` slices still counts fully. Defaults to ``"max"``.
        top_k: K of ``"mean-top-k"`` (``1`` gives ``"max"``). Defaults to 3.

    Returns:
        float: The scan's score, in the units of the slice scores (the model's threshold applies to it).

    Raises:
        ValueError: For an unknown method, ``top_k < 1`` or no scores.
    """
    _check_scan_score(method, top_k)
    values = list(scores)
    if not values:
        msg = "a scan needs at least one slice score"
        raise ValueError(msg)
    if method == "max":
        return max(values)
    return math.fsum(heapq.nlargest(top_k, values)) / min(top_k, len(values))  # fsum: exact in any order


class _Scan:
    """One scan's running aggregate: its row count, first row, top slice and highest scores."""

    def __init__(self) -> None:
        self.slices = 0
        self.first: Mapping[str, str] = {}  # the row of the smallest image id: the table's order, DICOM details
        self.top: tuple[float, bool, str] = (-math.inf, False, "")  # (score, anomalous, image id)
        self.highest: list[float] = []  # a min-heap of the highest scores

    def add(self, row: Mapping[str, str], keep: int) -> None:
        self.slices += 1
        item, score, anomalous = row["path"], float(row["score"]), row["label"] == "anomalous"
        if not self.first or item < self.first["path"]:
            self.first = row
        # Highest score first; on a tie the anomalous label (the score rounded to 6 decimals may hide the
        # difference the graph saw), then the smaller id: the same top slice for any row order.
        if (score, anomalous) > self.top[:2] or ((score, anomalous) == self.top[:2] and item < self.top[2]):
            self.top = (score, anomalous, item)
        if len(self.highest) < keep:
            heapq.heappush(self.highest, score)
        else:
            heapq.heappushpop(self.highest, score)


def aggregate_scans(
    rows: Iterable[Mapping[str, str]], method: str = "max", top_k: int = DEFAULT_TOP_K, threshold: float = 0.5
) -> list[dict[str, str]]:
    """The rows of ``scans.csv`` from rows of ``scores.csv``, in any order (results arrive in completion order).

    Rows are grouped by ``(scan_kind, scan)``: a DICOM series by its Series Instance UID, anything else by its file.
    Each row is counted as often as it is given: pass every image once (``scores.csv`` holds each once).

    Args:
        rows: Dicts with the keys of :data:`SCORE_COLUMNS` (values as ``scores.csv`` holds them).
        method: How slice scores make the scan's score: see :func:`scan_score`. Defaults to ``"max"``.
        top_k: K of ``"mean-top-k"``. Defaults to 3.
        threshold: The model's label threshold on the normalised score (:func:`label_threshold`), applied to the
            scan's score for ``"mean-top-k"``. With ``"max"`` the scan takes its top slice's label: the graph's
            own comparison of that very score. Defaults to 0.5.

    Returns:
        list[dict[str, str]]: One dict per scan with the keys of :data:`SCAN_COLUMNS`, ordered by the first
        (smallest) image id of each scan, so equal inputs give equal tables.

    Raises:
        ValueError: For an unknown method or ``top_k < 1``.
    """
    _check_scan_score(method, top_k)
    keep = 1 if method == "max" else top_k
    scans: dict[tuple[str, str], _Scan] = {}
    for row in rows:
        scans.setdefault((row["scan_kind"], row["scan"]), _Scan()).add(row, keep)
    table = []
    for (kind, key), scan in sorted(scans.items(), key=lambda entry: entry[1].first["path"]):
        top_score, top_anomalous, top_item = scan.top
        if method == "max":
            score, anomalous = top_score, top_anomalous
        else:
            score = math.fsum(scan.highest) / len(scan.highest)
            anomalous = score > threshold
        table.append(
            {
                "scan": key,
                "scan_kind": kind,
                "study_uid": scan.first["study_uid"],
                "series_uid": key if kind == "dicom_series" else "",
                "modality": scan.first["modality"],
                "slices": str(scan.slices),
                "aggregate": "max" if method == "max" else f"mean-top-{top_k}",
                "score": f"{score:.6f}",
                "label": "anomalous" if anomalous else "normal",
                "top_slice": top_item,
                "top_slice_score": f"{top_score:.6f}",
            }
        )
    return table


def _read_scores(path: Path) -> Iterator[dict[str, str]]:
    _check_columns(path)
    with path.open(newline="") as handle:
        yield from csv.DictReader(handle)


def _write_scans(output: Path, rows: Iterable[Mapping[str, str]], method: str, top_k: int, threshold: float) -> int:
    """``scans.csv`` from ``rows``; returns the number of scans."""
    table = aggregate_scans(rows, method, top_k, threshold)
    _write_table(output / SCANS, SCAN_COLUMNS, table)
    return len(table)


def label_threshold(model: Any) -> float:
    """The normalised score above which an exported graph labels an image anomalous.

    anomalib's graph computes ``pred_label = pred_score > t`` with ``t = 1 - image_sensitivity`` (0.5 by default):
    ``t`` is read from that comparison, so that scan labels use the threshold of the per-image labels. A graph
    without a ``pred_label`` output (or with another form of it) gets 0.5, the rule ``salad-score`` labels its
    images by.

    Args:
        model: An ``openvino.Model`` (not compiled: compilation may fold the comparison away).

    Returns:
        float: ``t``.
    """
    for output in model.outputs:
        if "pred_label" not in output.get_names():
            continue
        node = output.get_node().input_value(0).get_node()  # the Result's producer
        if node.get_type_name() != "Greater" or "pred_score" not in node.input_value(0).get_names():
            break
        constant = node.input_value(1).get_node()
        if constant.get_type_name() == "Constant" and constant.get_data().size == 1:
            return float(constant.get_data().reshape(-1)[0])
    return 0.5


# --------------------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over files if tqdm is installed and wanted, else a line every 10 s on stderr."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.bar = None
        self.lock = threading.Lock()
        self.images = 0
        self.failed = 0
        self.start = self.last = time.monotonic()
        self.total, self.done, self.enabled = total, done, enabled
        if enabled:
            try:
                from tqdm import tqdm  # noqa: PLC0415  (optional: an edge install may lack it)
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=done, unit="file", dynamic_ncols=True, file=sys.stderr)

    def image_done(self) -> None:
        with self.lock:
            self.images += 1

    def file_done(self, failed: bool = False) -> None:
        with self.lock:  # called from the main thread and from OpenVINO's callback threads
            self.done += 1
            self.failed += failed
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(images=self.images, errors=self.failed, refresh=False)
            elif self.enabled and time.monotonic() - self.last > 10:
                self.last = time.monotonic()
                line = f"{self.done}/{self.total} files, {self.rate():.1f} images/s, {self.failed} errors"
                print(line, file=sys.stderr)

    def rate(self) -> float:
        return self.images / max(time.monotonic() - self.start, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root) if root else path.lstrip(os.sep)


def _overlay_path(item: str, root: str, folder: Path) -> Path:
    """``folder/<item relative to root, ':' -> '_'>.png``: unique per item, mirroring the input's folders."""
    return folder / (_relative(item, root).replace(":", "_").lstrip("./") + ".png")


def _heatmap_volume_path(path: str, root: str, folder: Path) -> Path:
    """``folder/<volume relative to root, without .nii(.gz)>.heatmap.nii.gz``, beside its slices' PNGs."""
    relative = _relative(path, root)
    stem = relative[: -len(".nii.gz")] if relative.lower().endswith(".nii.gz") else os.path.splitext(relative)[0]
    return folder / (stem.lstrip("./") + ".heatmap.nii.gz")


def _resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """The map at the image's size, resized as :func:`~anomalib_salad.deploy.heatmap_overlay` does."""
    resized = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


class _HeatVolume:
    """The anomaly maps of a NIfTI volume's slices, put back where the reader cut them, written as one volume."""

    def __init__(self, path: str) -> None:
        import nibabel  # noqa: PLC0415  (a NIfTI input has it)

        self.source = nibabel.load(path)
        self.shape = tuple(self.source.shape)
        # The reader's rule: (X, Y) is one slice (X, Y, 1); (X, Y, Z, 1) is the volume (X, Y, Z).
        grid = self.shape[:3] if len(self.shape) > 2 else (*self.shape, 1)
        self.voxels = np.zeros(grid, np.float32)  # slices the reader skipped stay 0

    def add(self, item: str, anomaly_map: np.ndarray, size: tuple[int, int]) -> None:
        """Put the map of slice ``item`` (``path:axis:index``; its image of ``size``) into the volume."""
        ref = ImageRef.parse(item)
        plane = reader.slice_to_plane(_resize_map(anomaly_map, *size))
        self.voxels[(slice(None),) * int(ref.axis) + (ref.index,)] = plane  # type: ignore[arg-type]

    def save(self, target: Path) -> None:
        """Write ``target`` (``.nii.gz``) atomically, with the source's shape and affine."""
        import nibabel  # noqa: PLC0415

        volume = nibabel.Nifti1Image(self.voxels.reshape(self.shape), self.source.affine)
        # Only the geometry is copied: the header's text fields (descrip, aux_file, db_name) may name a patient.
        if hasattr(self.source, "get_qform"):
            for getter, setter in (("get_qform", volume.set_qform), ("get_sform", volume.set_sform)):
                matrix, code = getattr(self.source, getter)(coded=True)
                if matrix is not None:
                    setter(matrix, code=int(code))
            volume.header.set_xyzt_units(*self.source.header.get_xyzt_units())
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name[: -len('.nii.gz')]}.partial.nii.gz")  # nibabel gzips by suffix
        nibabel.save(volume, partial)
        os.replace(partial, target)


@dataclass(frozen=True)
class _Job:
    """What an infer request carries to its callback."""

    path: str
    item: str
    scan: ScanInfo
    image: np.ndarray | None  # kept for the overlays only
    write_row: bool  # False: already in scores.csv, scored again for its NIfTI volume's heat map only


class _Scorer:
    """Feeds decoded images to an ``AsyncInferQueue`` and writes each result as it arrives."""

    def __init__(
        self,
        compiled_model: Any,
        requests: int,
        writers: dict[str, _Appender],
        state: _State,
        progress: _Progress,
        overlays: tuple[Path, str, float] | None,
    ) -> None:
        import openvino as ov  # noqa: PLC0415

        self.queue = ov.AsyncInferQueue(compiled_model, requests)
        self.queue.set_callback(self._done)
        self.names = [next(iter(output.get_names())) for output in compiled_model.outputs]
        self.writers, self.state, self.progress, self.overlays = writers, state, progress, overlays
        self.pending: dict[str, int] = {}  # images of a file in flight, +1 while it is being queued
        self.failed: set[str] = set()
        self.volumes: dict[str, _HeatVolume] = {}  # NIfTI heat maps being filled, by file
        self.lock = threading.Lock()
        self.running = threading.Condition()  # counts images whose callback has not finished
        self.in_flight = 0
        self.failures: list[BaseException] = []

    def submit(self, path: str, scan: ScanInfo, images: Iterator[tuple[str, np.ndarray]]) -> None:
        """Queue the images of one file that are not in ``scores.csv`` yet (blocks while every request is busy).

        With overlays, the slices of a NIfTI volume that an interrupted run already scored are run again (their
        rows are not written twice), so that its heat-map volume is whole.

        Raises:
            Exception: Whatever converting one of its images raised; the file is then not marked complete (rows
                already queued are still written, and ``--resume`` skips the file as failed).
        """
        with self.lock:
            self.pending[path] = 1  # held until every image is queued, so that the file cannot complete early
        try:
            if self.overlays is not None and scan.kind == "nifti_volume":
                volume = _HeatVolume(path)
                with self.lock:
                    self.volumes[path] = volume
            for item, image in images:
                write_row = item not in self.state.scored
                if not write_row and path not in self.volumes:
                    continue
                # The reader's float32 (H, W, 3): the queue's NHWC model.
                batch, _ = prepare_input(image, "HWC")
                with self.lock:
                    self.pending[path] += 1
                with self.running:
                    self.in_flight += 1
                job = _Job(path, item, scan, image if self.overlays else None, write_row)
                self.queue.start_async({0: batch}, job)
        except BaseException:
            with self.lock:
                self.failed.add(path)
            raise
        finally:
            self._release(path)

    def _done(self, request: Any, job: _Job) -> None:
        try:
            outputs = {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self.names)}
            score = float(outputs["pred_score"].reshape(-1)[0])
            label = outputs["pred_label"].reshape(-1)[0] if "pred_label" in outputs else score > 0.5
            if self.overlays is not None and job.image is not None:
                folder, root, alpha = self.overlays
                anomaly_map = outputs["anomaly_map"].reshape(outputs["anomaly_map"].shape[-2:])
                target = _overlay_path(job.item, root, folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(heatmap_overlay(job.image, anomaly_map, alpha=alpha)).save(target)
                with self.lock:
                    volume = self.volumes.get(job.path)
                if volume is not None:
                    volume.add(job.item, anomaly_map, job.image.shape[:2])
            if job.write_row:
                scan = job.scan
                row = [job.item, f"{score:.6f}", "anomalous" if bool(label) else "normal"]
                self.writers[SCORES].write_row([*row, scan.kind, scan.key, scan.study_uid, scan.modality])
                self.progress.image_done()
            self._release(job.path)
        except BaseException as error:
            self.failures.append(error)
        finally:
            with self.running:
                self.in_flight -= 1
                self.running.notify_all()

    def _release(self, path: str) -> None:
        """One queued image (or the queuing itself) of ``path`` is done; the last one marks the file complete."""
        with self.lock:
            self.pending[path] -= 1
            if self.pending[path]:
                return
            del self.pending[path]
            volume = self.volumes.pop(path, None)
            if path in self.failed:
                return  # counted as failed by the caller of submit()
        if volume is not None and self.overlays is not None:
            folder, root, _ = self.overlays
            volume.save(_heatmap_volume_path(path, root, folder))  # before the file counts as complete
        self.progress.file_done()
        if path not in self.state.completed:
            self.writers[COMPLETED].write_text(path + "\n")

    def wait(self) -> None:
        """Wait for every queued image, callbacks included (``wait_all`` alone may return before a callback ends)."""
        self.queue.wait_all()
        with self.running:
            self.running.wait_for(lambda: self.in_flight == 0)
        if self.failures:
            raise self.failures[0]


def _reader_config(args: argparse.Namespace) -> ReaderConfig:
    config = ReaderConfig.from_json(args.reader_config) if args.reader_config else ReaderConfig()
    percentiles = None
    if args.percentiles:
        percentiles = tuple(float(value) for value in args.percentiles.replace("/", ",").split(","))
    return config.replace(
        bit_depth=args.bit_depth,
        window=args.window,
        axis=args.axis,
        percentiles=percentiles,
        min_tissue=args.min_tissue,
        require_bit_depth=True,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``salad-score``."""
    parser = argparse.ArgumentParser(
        prog="salad-score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="salad-score merge --output DIR FOLDER...: join the output folders of all shards of a run into one "
        "(see salad-score merge --help)",
    )
    parser.add_argument("--model", required=True, type=Path, help="model.xml (with model.bin) or model.onnx")
    parser.add_argument("--input", required=True, help="a folder (recursive), a file, a list file or a glob")
    parser.add_argument("--output", required=True, type=Path, help="folder for scores.csv, errors.csv, overlays/")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    parser.add_argument("--shard", metavar="K/N", help="score only the K-th of N deterministic parts (1-based)")
    parser.add_argument(
        "--overlays",
        action="store_true",
        help="write a heat-map overlay PNG per image, and a heat-map volume (.heatmap.nii.gz) per NIfTI volume",
    )
    parser.add_argument("--alpha", type=float, default=0.4, help="heat-map opacity in the overlays (default 0.4)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    parser.add_argument(
        "--precision",
        default="f32",
        choices=["f32", "bf16", "f16", "default"],
        help="INFERENCE_PRECISION_HINT; 'default' lets OpenVINO choose (bf16 on CPUs with AVX512-BF16/AMX: faster, "
        "scores drift ~1e-2). Default f32 (matches torch)",
    )
    parser.add_argument("--requests", type=int, default=0, help="parallel infer requests (default: OpenVINO's optimum)")
    parser.add_argument("--readers", type=int, default=0, help="file-reading threads (default: min(4, CPUs))")
    reading = parser.add_argument_group("reader settings (use those of training)")
    reading.add_argument("--bit-depth", type=int, help="bits stored in 16-bit PNG/TIFF files (required for them)")
    reading.add_argument("--window", help="DICOM VOI: file (default), range, a preset (brain, lung, ...) or C,W")
    reading.add_argument("--axis", type=int, choices=[0, 1, 2], help="NIfTI slicing axis (default 2)")
    reading.add_argument("--percentiles", metavar="LOW,HIGH", help="NIfTI normalisation percentiles (0.5,99.5)")
    reading.add_argument("--min-tissue", type=float, help="NIfTI: skip slices with less tissue (default 0.01)")
    reading.add_argument("--reader-config", type=Path, help="JSON file with reader settings (flags override it)")
    _add_scan_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    scans = parser.add_argument_group("scans.csv: one row per DICOM series, NIfTI volume or image file")
    scans.add_argument(
        "--scan-score",
        choices=SCAN_SCORES,
        default="max",
        help="a scan's score from its slices' scores: 'max' (default), the highest; 'mean-top-k', the mean of the "
        "--top-k highest (of all slices if the scan has fewer). The scan's label is the model's threshold applied "
        "to this score, as for one image",
    )
    scans.add_argument("--top-k", type=int, metavar="K", help=f"K of --scan-score mean-top-k (default {DEFAULT_TOP_K})")


def _scan_method(args: argparse.Namespace) -> tuple[str, int]:
    if args.top_k is not None and args.scan_score != "mean-top-k":
        msg = f"--top-k is the K of --scan-score mean-top-k, not of {args.scan_score!r}"
        raise UsageError(msg)
    top_k = DEFAULT_TOP_K if args.top_k is None else args.top_k
    if top_k < 1:
        msg = f"--top-k must be at least 1, got {top_k}"
        raise UsageError(msg)
    return args.scan_score, top_k


def _setup(args: argparse.Namespace) -> tuple[ReaderConfig, list[str], list[str], _State, SaladInferencer]:
    try:
        config = _reader_config(args)
    except (ValueError, OSError) as error:
        raise UsageError(f"reader settings: {error}") from error
    _scan_method(args)
    part, total = parse_shard(args.shard)
    files = resolve_inputs(args.input)
    shard = select_shard(files, part, total)
    run_info = {
        "model": str(args.model.resolve()),
        "input": str(args.input),
        "shard": f"{part}/{total}",
        "reader": config.to_dict(),
        # Shards are positions in the sorted list: another list (files added or removed) would shift them.
        "input_files": len(files),
        "input_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(),
    }
    try:
        properties = {"PERFORMANCE_HINT": "THROUGHPUT"}
        precision = None if args.precision == "default" else args.precision
        inferencer = SaladInferencer(args.model, device=args.device, precision_hint=precision, config=properties)
    except (FileNotFoundError, CheckpointError, RuntimeError) as error:
        raise UsageError(str(error)) from error
    # The graph as read, before compilation folds its label comparison away.
    run_info["label_threshold"] = label_threshold(inferencer._model)
    state = _prepare_output(args.output, run_info, args.resume)
    return config, files, shard, state, inferencer


def _score(
    args: argparse.Namespace, config: ReaderConfig, shard: list[str], state: _State, inferencer: SaladInferencer
) -> int:
    todo = [path for path in shard if path not in state.completed and path not in state.failed]
    compiled = inferencer.compiled_for("f32", "NHWC")
    requests = args.requests or max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    readers = args.readers or min(4, os.cpu_count() or 1)
    writers = {
        SCORES: _Appender(args.output / SCORES, SCORE_COLUMNS),
        ERRORS: _Appender(args.output / ERRORS, ["path", "reason"]),
        COMPLETED: _Appender(args.output / COMPLETED, None),
    }
    progress = _Progress(len(shard), len(shard) - len(todo), enabled=not args.no_progress)
    root = os.path.commonpath([os.path.abspath(path) for path in shard]) if shard else ""
    root = os.path.dirname(root) if os.path.isfile(root) else root
    overlays = (args.output / "overlays", root, args.alpha) if args.overlays else None
    scorer = _Scorer(compiled, requests, writers, state, progress, overlays)
    failed_now = 0
    depth = 2 * (readers + requests)  # files decoded ahead, in input order, while the infer requests run
    paths = iter(todo)
    ahead: deque[tuple[str, Future]] = deque()
    try:
        with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="salad-read") as pool:

            def top_up() -> None:
                while len(ahead) < depth and (path := next(paths, None)) is not None:
                    ahead.append((path, pool.submit(reader.iter_scan_images, path, config)))

            top_up()
            while ahead:
                path, future = ahead.popleft()
                top_up()
                try:
                    scorer.submit(path, *future.result())
                except Exception as error:
                    failed_now += 1
                    reason = str(error).removeprefix(f"{path}: ")
                    if not isinstance(error, ImageReadError | InputImageError):
                        reason = f"{type(error).__name__}: {reason}"
                    writers[ERRORS].write_row([path, reason])
                    progress.file_done(failed=True)
            scorer.wait()
    except KeyboardInterrupt:
        scorer.wait()  # results already computed are still written
        print(f"\ninterrupted: rerun with --resume to continue ({args.output})", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        progress.close()
        for writer in writers.values():
            writer.close()
    failed_total = len(state.failed) + failed_now
    print(
        f"scored {progress.images} image(s) from {len(todo) - failed_now} file(s) in {progress.rate():.1f} images/s "
        f"-> {args.output / SCORES}"
        + (f"; {failed_total} file(s) failed -> {args.output / ERRORS}" if failed_total else ""),
        file=sys.stderr,
    )
    part, total = parse_shard(args.shard)
    if total == 1:
        method, top_k = _scan_method(args)
        threshold = json.loads((args.output / RUN).read_text())["label_threshold"]
        scans = _write_scans(args.output, _read_scores(args.output / SCORES), method, top_k, threshold)
        print(f"{scans} scan(s) -> {args.output / SCANS}", file=sys.stderr)
    else:  # its series may go on in other shards
        print(
            f"shard {part}/{total}: scans.csv comes from 'salad-score merge' over all {total} shards", file=sys.stderr
        )
    return EXIT_FAILED_FILES if failed_total else EXIT_OK


# --------------------------------------------------------------------------------------------------------------
# salad-score merge
# --------------------------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[list[str]]:
    """The rows of a CSV file after its header (none if it is missing)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.reader(handle))[1:]


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line] if path.is_file() else []


def _shards_of_one_run(folders: Sequence[Path]) -> tuple[list[dict[str, Any]], int]:
    """The ``run.json`` of each folder, checked to be the finished shards 1..N of one run; returns them and N."""
    runs = []
    for folder in folders:
        if not (folder / RUN).is_file() or not (folder / SCORES).is_file():
            msg = f"{folder} holds no salad-score run (run.json and scores.csv)"
            raise UsageError(msg)
        _check_columns(folder / SCORES)
        runs.append(json.loads((folder / RUN).read_text()))
    for key in ("model", "input_sha256", "reader", "label_threshold"):
        values = sorted({json.dumps(run.get(key), sort_keys=True) for run in runs})
        if len(values) > 1:
            msg = f"the folders are not shards of one run: their {key} differ ({' vs '.join(values)})"
            raise UsageError(msg)
    shards = [parse_shard(run["shard"]) for run in runs]
    totals = sorted({total for _, total in shards})
    if len(totals) > 1:
        msg = f"the folders split the input differently: shards {sorted(run['shard'] for run in runs)}"
        raise UsageError(msg)
    total = totals[0]
    parts = [part for part, _ in shards]
    twice = sorted({part for part in parts if parts.count(part) > 1})
    missing = sorted(set(range(1, total + 1)) - set(parts))
    if twice or missing:
        problems = [f"shard {part}/{total} given twice" for part in twice]
        problems += [f"shard {part}/{total} missing" for part in missing]
        msg = f"{'; '.join(problems)}: pass the output folder of every shard once"
        raise UsageError(msg)
    for folder, (part, _) in zip(folders, shards, strict=True):
        expected = len(range(part - 1, int(runs[0]["input_files"]), total))
        done = len(set(_read_lines(folder / COMPLETED)) | {row[0] for row in _read_rows(folder / ERRORS)})
        if done < expected:
            msg = f"shard {part}/{total} in {folder} is not finished ({done} of {expected} files): --resume it"
            raise UsageError(msg)
    return runs, total


def merge(
    folders: Sequence[str | Path], output: str | Path, method: str = "max", top_k: int = DEFAULT_TOP_K
) -> tuple[int, int, int]:
    """Join the output folders of all shards of one run into one ``scores.csv``, ``errors.csv`` and ``scans.csv``.

    ``scans.csv`` is computed from the joined rows, so a series split across shards is aggregated once, exactly as
    one run over the whole input would. ``output`` then holds what such a run leaves (``run.json`` says shard
    ``1/1``, plus ``merged_from``). One finished folder of a whole run is merged alone to recompute its
    ``scans.csv`` with another ``method``.

    Args:
        folders: The ``--output`` folder of each shard ``1/N`` .. ``N/N``, in any order, each finished.
        output: A folder without results yet (not one of ``folders``).
        method: ``"max"`` or ``"mean-top-k"``: see :func:`scan_score`. Defaults to ``"max"``.
        top_k: K of ``"mean-top-k"``. Defaults to 3.

    Returns:
        tuple[int, int, int]: The number of images, scans and failed files.

    Raises:
        UsageError: If the folders are not the finished shards of one run (other model, input, reader settings or
            split; a shard missing, given twice or not finished), an image is in two of them, or ``output`` already
            holds results.
    """
    folders, output = [Path(folder) for folder in folders], Path(output)
    try:
        _check_scan_score(method, top_k)
    except ValueError as error:
        raise UsageError(str(error)) from error
    runs, _ = _shards_of_one_run(folders)
    if output.resolve() in {folder.resolve() for folder in folders}:
        msg = f"--output {output} is one of the folders to merge: give a new one"
        raise UsageError(msg)
    existing = [name for name in (SCORES, SCANS, ERRORS, COMPLETED) if (output / name).is_file()]
    if existing:
        msg = f"{output} already holds {', '.join(existing)}: give a new --output"
        raise UsageError(msg)
    rows: dict[str, dict[str, str]] = {}
    where: dict[str, Path] = {}
    for folder in folders:
        for row in _read_scores(folder / SCORES):
            if row["path"] in rows:
                msg = f"{row['path']} is scored in both {where[row['path']]} and {folder}"
                raise UsageError(msg)
            rows[row["path"]], where[row["path"]] = row, folder
    errors = sorted(row for folder in folders for row in _read_rows(folder / ERRORS))
    completed = sorted({path for folder in folders for path in _read_lines(folder / COMPLETED)})
    output.mkdir(parents=True, exist_ok=True)
    _write_table(output / SCORES, SCORE_COLUMNS, [rows[path] for path in sorted(rows)])
    _write_table(
        output / ERRORS, ("path", "reason"), [dict(zip(("path", "reason"), row, strict=False)) for row in errors]
    )
    (output / COMPLETED).write_text("".join(f"{path}\n" for path in completed))
    scans = _write_scans(output, rows.values(), method, top_k, runs[0].get("label_threshold", 0.5))
    merged_from = [str(folder) for folder in folders]
    (output / RUN).write_text(json.dumps({**runs[0], "shard": "1/1", "merged_from": merged_from}, indent=2) + "\n")
    return len(rows), scans, len(errors)


def _merge_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="salad-score merge",
        description="Join the output folders of the N shards of one salad-score run (--shard 1/N .. N/N, each "
        "finished) into one scores.csv, errors.csv and scans.csv: a series split across shards is aggregated once, "
        "as in one run. Given the folder of one whole run, recompute its scans.csv (e.g. with another --scan-score).",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER", help="the --output folder of each shard")
    parser.add_argument("--output", required=True, type=Path, help="a new folder for the merged tables")
    _add_scan_arguments(parser)
    args = parser.parse_args(argv)
    try:
        images, scans, failed = merge(args.folders, args.output, *_scan_method(args))
    except UsageError as error:
        print(f"salad-score merge: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"merged {len(args.folders)} folder(s): {images} image(s), {scans} scan(s) -> {args.output}"
        + (f"; {failed} file(s) failed -> {args.output / ERRORS}" if failed else ""),
        file=sys.stderr,
    )
    return EXIT_FAILED_FILES if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``salad-score``.

    Args:
        argv: Arguments instead of ``sys.argv[1:]``; ``merge ...`` runs :func:`merge`.

    Returns:
        int: Exit status (see the module docstring).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return _merge_main(argv[1:])
    args = parse_args(argv)
    try:
        config, files, shard, state, inferencer = _setup(args)
    except UsageError as error:
        print(f"salad-score: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{args.model} on {args.device} ({inferencer.precision}); shard {args.shard or '1/1'}: {len(shard)} of "
        f"{len(files)} file(s)" + (f", {len(state.completed) + len(state.failed)} done before" if args.resume else ""),
        file=sys.stderr,
    )
    return _score(args, config, shard, state, inferencer)


if __name__ == "__main__":
    sys.exit(main())
