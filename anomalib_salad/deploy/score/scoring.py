"""The scoring loop of ``salad-score``: reader threads decode files while OpenVINO scores their images.

Images run through OpenVINO's ``AsyncInferQueue`` (one request per stream of the ``THROUGHPUT`` hint, so every
core is busy) while reader threads decode the next files, in input order; each result is written as it arrives.
A file that fails is recorded in ``errors.csv`` and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...data import reader
from ...data.reader import ImageReadError, ReaderConfig, ScanInfo
from ..inferencer import InputImageError, SaladInferencer, prepare_input
from ..overlay import HeatVolume, heatmap_overlay
from .files import COMPLETED, ERRORS, RUN, SCANS, SCORE_COLUMNS, SCORES, Appender, RunState, parse_shard, read_scores
from .scans import scan_method, write_scans

__all__ = ["EXIT_FAILED_FILES", "EXIT_INTERRUPTED", "EXIT_OK", "score_shard"]

EXIT_OK, EXIT_FAILED_FILES, EXIT_INTERRUPTED = 0, 1, 130


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
        writers: dict[str, Appender],
        state: RunState,
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
        self.volumes: dict[str, HeatVolume] = {}  # NIfTI heat maps being filled, by file
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
                volume = HeatVolume(path)
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


def score_shard(
    args: argparse.Namespace, config: ReaderConfig, shard: list[str], state: RunState, inferencer: SaladInferencer
) -> int:
    """Score the files of ``shard`` not done yet; write ``scans.csv`` at the end unless the input is split.

    Args:
        args: ``salad-score``'s arguments.
        config: Reader settings.
        shard: This shard's files, in input order.
        state: What earlier runs into ``args.output`` did (``--resume``).
        inferencer: The exported model.

    Returns:
        int: Exit status: 0, 1 if any file failed, 130 if interrupted.
    """
    todo = [path for path in shard if path not in state.completed and path not in state.failed]
    compiled = inferencer.compiled_for("f32", "NHWC")
    requests = args.requests or max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    readers = args.readers or min(4, os.cpu_count() or 1)
    writers = {
        SCORES: Appender(args.output / SCORES, SCORE_COLUMNS),
        ERRORS: Appender(args.output / ERRORS, ["path", "reason"]),
        COMPLETED: Appender(args.output / COMPLETED, None),
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
    _write_scan_table(args)
    return EXIT_FAILED_FILES if failed_total else EXIT_OK


def _write_scan_table(args: argparse.Namespace) -> None:
    """``scans.csv`` from the whole ``scores.csv`` of a run that is not one shard of several."""
    part, total = parse_shard(args.shard)
    if total == 1:
        method, top_k = scan_method(args)
        threshold = json.loads((args.output / RUN).read_text())["label_threshold"]
        scans = write_scans(args.output, read_scores(args.output / SCORES), method, top_k, threshold)
        print(f"{scans} scan(s) -> {args.output / SCANS}", file=sys.stderr)
    else:  # its series may go on in other shards
        print(
            f"shard {part}/{total}: scans.csv comes from 'salad-score merge' over all {total} shards", file=sys.stderr
        )
