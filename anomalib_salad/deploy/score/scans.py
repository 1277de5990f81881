"""The per-scan table of ``salad-score`` (``scans.csv``) and ``salad-score merge``.

A scan is a DICOM series (by its Series Instance UID, wherever its files lie), a DICOM file without one, a NIfTI
volume or an image file; its score aggregates the scores of its slices (``max`` or ``mean-top-k``) and its label
applies the model's threshold to that score. The table is computed from all rows of ``scores.csv`` at once, so a
resumed run, or the merged shards of one run, count every image once.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .files import (
    COMPLETED,
    ERRORS,
    RUN,
    SCANS,
    SCORE_COLUMNS,
    SCORES,
    UsageError,
    check_columns,
    parse_shard,
    read_lines,
    read_rows,
    read_scores,
    write_table,
)

__all__ = [
    "DEFAULT_TOP_K",
    "SCAN_COLUMNS",
    "SCAN_SCORES",
    "add_scan_arguments",
    "aggregate_scans",
    "check_scan_score",
    "label_threshold",
    "merge",
    "scan_method",
    "scan_score",
    "write_scans",
]

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


def check_scan_score(method: str, top_k: int) -> None:
    """Raise ``ValueError`` unless ``method`` is one of :data:`SCAN_SCORES` and ``top_k`` an int >= 1."""
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
    check_scan_score(method, top_k)
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
    check_scan_score(method, top_k)
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


def write_scans(output: Path, rows: Iterable[Mapping[str, str]], method: str, top_k: int, threshold: float) -> int:
    """``scans.csv`` from ``rows``; returns the number of scans."""
    table = aggregate_scans(rows, method, top_k, threshold)
    write_table(output / SCANS, SCAN_COLUMNS, table)
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


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--scan-score`` and ``--top-k`` options, shared by ``salad-score`` and ``salad-score merge``."""
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


def scan_method(args: argparse.Namespace) -> tuple[str, int]:
    """``(method, top_k)`` from the parsed scan options.

    Raises:
        UsageError: If ``--top-k`` is given without ``mean-top-k`` or is below 1.
    """
    if args.top_k is not None and args.scan_score != "mean-top-k":
        msg = f"--top-k is the K of --scan-score mean-top-k, not of {args.scan_score!r}"
        raise UsageError(msg)
    top_k = DEFAULT_TOP_K if args.top_k is None else args.top_k
    if top_k < 1:
        msg = f"--top-k must be at least 1, got {top_k}"
        raise UsageError(msg)
    return args.scan_score, top_k


def _shards_of_one_run(folders: Sequence[Path]) -> tuple[list[dict[str, Any]], int]:
    """The ``run.json`` of each folder, checked to be the finished shards 1..N of one run; returns them and N."""
    runs = []
    for folder in folders:
        if not (folder / RUN).is_file() or not (folder / SCORES).is_file():
            msg = f"{folder} holds no salad-score run (run.json and scores.csv)"
            raise UsageError(msg)
        check_columns(folder / SCORES)
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
        done = len(set(read_lines(folder / COMPLETED)) | {row[0] for row in read_rows(folder / ERRORS)})
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
        check_scan_score(method, top_k)
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
        for row in read_scores(folder / SCORES):
            if row["path"] in rows:
                msg = f"{row['path']} is scored in both {where[row['path']]} and {folder}"
                raise UsageError(msg)
            rows[row["path"]], where[row["path"]] = row, folder
    errors = sorted(row for folder in folders for row in read_rows(folder / ERRORS))
    completed = sorted({path for folder in folders for path in read_lines(folder / COMPLETED)})
    output.mkdir(parents=True, exist_ok=True)
    write_table(output / SCORES, SCORE_COLUMNS, [rows[path] for path in sorted(rows)])
    write_table(
        output / ERRORS, ("path", "reason"), [dict(zip(("path", "reason"), row, strict=False)) for row in errors]
    )
    (output / COMPLETED).write_text("".join(f"{path}\n" for path in completed))
    scans = write_scans(output, rows.values(), method, top_k, runs[0].get("label_threshold", 0.5))
    merged_from = [str(folder) for folder in folders]
    (output / RUN).write_text(json.dumps({**runs[0], "shard": "1/1", "merged_from": merged_from}, indent=2) + "\n")
    return len(rows), scans, len(errors)
