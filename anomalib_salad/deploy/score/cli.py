"""``salad-score``: score an archive of images, DICOM files and NIfTI volumes with an exported SALAD model.

Torch-free: it needs the OpenVINO Python package, NumPy and Pillow (and pydicom / nibabel for DICOM / NIfTI), and
reads every file with :mod:`anomalib_salad.data.reader`, the reader that training uses. Usage::

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
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from ...data.reader import ReaderConfig
from ..inferencer import CheckpointError, SaladInferencer
from .files import ERRORS, RunState, UsageError, parse_shard, prepare_output, resolve_inputs, select_shard
from .scans import add_scan_arguments, label_threshold, merge, scan_method
from .scoring import EXIT_FAILED_FILES, EXIT_OK, score_shard

__all__ = ["EXIT_USAGE", "main", "parse_args"]

EXIT_USAGE = 2


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
    add_scan_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _setup(args: argparse.Namespace) -> tuple[ReaderConfig, list[str], list[str], RunState, SaladInferencer]:
    try:
        config = _reader_config(args)
    except (ValueError, OSError) as error:
        raise UsageError(f"reader settings: {error}") from error
    scan_method(args)
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
    state = prepare_output(args.output, run_info, args.resume)
    return config, files, shard, state, inferencer


def _merge_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="salad-score merge",
        description="Join the output folders of the N shards of one salad-score run (--shard 1/N .. N/N, each "
        "finished) into one scores.csv, errors.csv and scans.csv: a series split across shards is aggregated once, "
        "as in one run. Given the folder of one whole run, recompute its scans.csv (e.g. with another --scan-score).",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER", help="the --output folder of each shard")
    parser.add_argument("--output", required=True, type=Path, help="a new folder for the merged tables")
    add_scan_arguments(parser)
    args = parser.parse_args(argv)
    try:
        images, scans, failed = merge(args.folders, args.output, *scan_method(args))
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
    return score_shard(args, config, shard, state, inferencer)


if __name__ == "__main__":
    sys.exit(main())
