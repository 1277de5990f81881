"""``salad-score``: score an archive of images, DICOM files and NIfTI volumes with an exported SALAD model.

Torch-free: it needs the OpenVINO Python package, NumPy and Pillow (and pydicom / nibabel for DICOM / NIfTI), and
reads every file with :mod:`anomalib_salad.reader`, the reader that training uses. Usage::

    salad-score --model exports/weights/openvino/model.xml --input /archive --output scores/
    salad-score ... --input "/archive/**/*.dcm" --window lung       # a glob; CT lung window
    salad-score ... --input files.txt --shard 2/4                   # a list file; the 2nd of 4 machines
    salad-score ... --resume                                        # go on after an interruption

What it writes into ``--output``:

* ``scores.csv``: ``path,score,label``, one row per 2-D image: a file, a DICOM frame (``path:frame:k``) or a
  NIfTI slice (``path:axis:index``). ``score`` is the exported graph's normalised score in ``[0, 1]``; the
  threshold fitted on the validation set maps to 0.5, so ``label`` is ``anomalous`` above it, else ``normal``.
* ``errors.csv``: ``path,reason`` for every file that could not be read or scored; the run goes on.
* ``completed_files.txt``: the files whose every image is in ``scores.csv`` (what ``--resume`` skips).
* ``run.json``: the model, input (and a hash of its file list), shard and reader settings; ``--resume``
  refuses to mix other ones in.
* ``overlays/`` with ``--overlays``: a heat-map PNG per image, mirroring the input's folders.

Rows are appended and flushed as results arrive (in completion order, not input order), so a run that is
killed loses nothing written: ``--resume`` skips completed files and already written slices, drops a last row
cut off mid-line, and writes no row twice. ``--shard K/N`` keeps the files whose position in the sorted input
list is ``K-1`` modulo ``N``: N machines given the same input split it deterministically, each file exactly
once. Images run through OpenVINO's ``AsyncInferQueue`` (one request per stream of the ``THROUGHPUT`` hint,
so every core is busy) while reader threads decode the next files.

Exit status: 0 if every file was scored, 1 if any file failed (see ``errors.csv``; also failures recorded by an
earlier run that ``--resume`` continued), 2 for wrong arguments, model or output folder, 130 if interrupted.

Reader settings must match training: ``--bit-depth`` for 16-bit PNG/TIFF (refused without it: 12-bit data read
as 16-bit would look 16x darker), ``--window`` for DICOM, ``--axis``/``--percentiles``/``--min-tissue`` for NIfTI;
``--reader-config`` reads them from a JSON file (:meth:`ReaderConfig.to_dict`).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image

from . import reader
from .deploy import CheckpointError, InputImageError, SaladInferencer, heatmap_overlay, prepare_input
from .reader import ImageReadError, ReaderConfig

__all__ = ["main", "parse_shard", "resolve_inputs", "select_shard"]

SCORES, ERRORS, COMPLETED, RUN = "scores.csv", "errors.csv", "completed_files.txt", "run.json"
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


def _prepare_output(output: Path, run_info: dict[str, Any], resume: bool) -> _State:
    output.mkdir(parents=True, exist_ok=True)
    existing = [name for name in (SCORES, ERRORS, COMPLETED) if (output / name).is_file()]
    if existing and not resume:
        msg = f"{output} already holds {', '.join(existing)}: pass --resume to continue that run, or a new --output"
        raise UsageError(msg)
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


def _overlay_path(item: str, root: str, folder: Path) -> Path:
    """``folder/<item relative to root, ':' -> '_'>.png``: unique per item, mirroring the input's folders."""
    relative = os.path.relpath(item, root) if root else item.lstrip(os.sep)
    return folder / (relative.replace(":", "_").lstrip("./") + ".png")


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
        self.lock = threading.Lock()
        self.running = threading.Condition()  # counts images whose callback has not finished
        self.in_flight = 0
        self.failures: list[BaseException] = []

    def submit(self, path: str, images: Iterator[tuple[str, np.ndarray]]) -> None:
        """Queue the images of one file that are not in ``scores.csv`` yet (blocks while every request is busy).

        Raises:
            Exception: Whatever converting one of its images raised; the file is then not marked complete (rows
                already queued are still written, and ``--resume`` skips the file as failed).
        """
        with self.lock:
            self.pending[path] = 1  # held until every image is queued, so that the file cannot complete early
        try:
            for item, image in images:
                if item in self.state.scored:
                    continue
                # The reader's float32 (H, W, 3): the queue's NHWC model.
                batch, _ = prepare_input(image, "HWC")
                with self.lock:
                    self.pending[path] += 1
                with self.running:
                    self.in_flight += 1
                self.queue.start_async({0: batch}, (path, item, image if self.overlays else None))
        except BaseException:
            with self.lock:
                self.failed.add(path)
            raise
        finally:
            self._release(path)

    def _done(self, request: Any, userdata: tuple[str, str, np.ndarray | None]) -> None:
        path, item, image = userdata
        try:
            outputs = {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self.names)}
            score = float(outputs["pred_score"].reshape(-1)[0])
            label = outputs["pred_label"].reshape(-1)[0] if "pred_label" in outputs else score > 0.5
            if self.overlays is not None and image is not None:
                folder, root, alpha = self.overlays
                target = _overlay_path(item, root, folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                anomaly_map = outputs["anomaly_map"].reshape(outputs["anomaly_map"].shape[-2:])
                Image.fromarray(heatmap_overlay(image, anomaly_map, alpha=alpha)).save(target)
            self.writers[SCORES].write_row([item, f"{score:.6f}", "anomalous" if bool(label) else "normal"])
            self.progress.image_done()
            self._release(path)
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
            if path in self.failed:
                return  # counted as failed by the caller of submit()
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
        prog="salad-score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, type=Path, help="model.xml (with model.bin) or model.onnx")
    parser.add_argument("--input", required=True, help="a folder (recursive), a file, a list file or a glob")
    parser.add_argument("--output", required=True, type=Path, help="folder for scores.csv, errors.csv, overlays/")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    parser.add_argument("--shard", metavar="K/N", help="score only the K-th of N deterministic parts (1-based)")
    parser.add_argument("--overlays", action="store_true", help="write a heat-map overlay PNG per image")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _setup(args: argparse.Namespace) -> tuple[ReaderConfig, list[str], list[str], _State, SaladInferencer]:
    try:
        config = _reader_config(args)
    except (ValueError, OSError) as error:
        raise UsageError(f"reader settings: {error}") from error
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
        SCORES: _Appender(args.output / SCORES, ["path", "score", "label"]),
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
                    ahead.append((path, pool.submit(reader.iter_images, path, config)))

            top_up()
            while ahead:
                path, future = ahead.popleft()
                top_up()
                try:
                    scorer.submit(path, future.result())
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
    return EXIT_FAILED_FILES if failed_total else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``salad-score``.

    Args:
        argv: Arguments instead of ``sys.argv[1:]``.

    Returns:
        int: Exit status (see the module docstring).
    """
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
