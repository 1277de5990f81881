"""Image files checked up front: each unusable one named before any epoch, suspicious ones logged.

anomalib reads every image with ``Image.open(path).convert("RGB")`` and divides by 255. That clips 16-bit
grayscale files (Pillow mode ``I;16``, e.g. 12-bit medical exports) at 255, silently, and fails on a corrupt file
only when a batch reaches it, possibly hours into training and, for a truncated PNG or JPEG, with a message that
does not name the file ("image file is truncated"). Here:

* :func:`check_image_files` decodes every file once (in threads) through the reader and raises
  :class:`ImageFileError` naming every unusable file; it logs files that are readable but suspicious (nearly black,
  constant, transparent, much smaller than the network input, 16-bit data that seems to use fewer bits).
* :class:`ImageFileCheck`, a Lightning callback, does that for the datasets of any fit / validate / test / predict
  run; with anomalib's own datasets it also refuses 16-bit files, which they would clip.

16-bit files are divided by ``2**bit_depth - 1`` with ``bit_depth`` given by the user, 16 by default (the
container's full range). Neither the image's own maximum (it rescales every image differently, so the same
tissue gets different values and a uniformly brighter lesion disappears) nor a bit depth guessed per file or
per folder (an image or a prediction folder whose values happen to stay below 1024 would be scaled 4x
brighter than the training data) gives the same value to the same intensity in every file. The scan says
when the 16-bit files look like 12-bit data read at 16 bits, and which ``bit_depth`` to set.

Example:
    >>> from anomalib_salad.data.file_check import check_image_files
    >>> infos = check_image_files(["scans/a.png", "scans/b.dcm"], bit_depth=12)  # doctest: +SKIP
"""

import logging
import math
import os
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from torch.utils.data import DataLoader

from . import reader
from .reader import HIGH_BIT_DEPTH_MODES, ImageReadError, ImageRef, ReaderConfig, check_bit_depth

logger = logging.getLogger(__name__)

__all__ = [
    "ImageFileCheck",
    "ImageFileError",
    "ImageInfo",
    "check_image_files",
    "datasets_of",
    "image_file_problems",
    "inspect_image",
    "scan_image_files",
]

_COLOUR_MODES = frozenset({"L", "LA", "RGB", "RGBA", "F", *HIGH_BIT_DEPTH_MODES})
# Modes of ImageInfo for files whose reader output is already in [0, 1] (extrema are of that output).
_UNIT_RANGE_MODES = frozenset({"F", "DICOM", "NIfTI"})
MAX_LISTED = 100  # problems spelled out in one error message; the exception keeps them all
DARK_FRACTION = 1 / 8  # a file whose brightest pixel is below this fraction of full scale is "nearly black"


class ImageFileError(ValueError):
    """One or more image files cannot be used; the message names each of them.

    Args:
        message: The message.
        problems: One ``"path: reason"`` line per file (all of them, also those left out of the message).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def _full_scale(mode: str, bit_depth: int | None) -> float:
    """The value that reads as 1.0 in a file of this Pillow mode."""
    if mode in HIGH_BIT_DEPTH_MODES:
        return float(2 ** (bit_depth or 16) - 1)
    return 1.0 if mode in _UNIT_RANGE_MODES else 255.0


def _reason(path: str, error: Exception) -> str:
    """A short reason why ``path`` could not be read."""
    if isinstance(error, ImageReadError):
        return error.reason
    if isinstance(error, FileNotFoundError):
        return "file not found"
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    return reader.decode_reason(path, error)


# --------------------------------------------------------------------------------------------------------------
# Scanning many files
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What one full decode of an image file found.

    Attributes:
        path: The file.
        mode: Pillow mode (``"L"``, ``"RGB"``, ``"I;16"``, ...), or ``"DICOM"`` / ``"NIfTI"``; ``None`` if
            unreadable.
        size: ``(width, height)``, ``None`` if unreadable.
        extrema: Lowest and highest raw value over the colour channels (alpha excluded); for DICOM and NIfTI,
            of the reader's output in ``[0, 1]`` over all frames / kept slices.
        translucent: The file has an alpha channel that is not fully opaque (readers drop alpha).
        error: Why the file cannot be read; ``None`` if it can.
        note: Why it is suspiciously large (above Pillow's decompression-bomb warning limit), or ``None``.
    """

    path: str
    mode: str | None = None
    size: tuple[int, int] | None = None
    extrema: tuple[float, float] | None = None
    translucent: bool = False
    error: str | None = None
    note: str | None = None


_CACHE: dict[tuple[str, ReaderConfig | None], tuple[tuple[int, int], ImageInfo]] = {}  # -> ((size, mtime), info)
_LOGGED: set[str] = set()  # warnings already logged in this process


def inspect_image(path: str | Path, config: ReaderConfig | None = None) -> ImageInfo:
    """Decode one file fully and summarise it; never raises for a bad file.

    The result is cached per path and file size / modification time, so scanning the same dataset again
    (fit, then test, then predict) costs one ``stat`` per file.

    Args:
        path: The image file, or the id of a DICOM frame or NIfTI slice (``path:axis:index``).
        config: Reader settings for DICOM and NIfTI files (window, axis, ...); PNG/TIFF files are summarised
            raw, ``bit_depth`` is applied when their problems are judged. Defaults to ``None`` (the defaults).

    Returns:
        ImageInfo: Mode (Pillow's, or ``"DICOM"`` / ``"NIfTI"`` with extrema of the reader's ``[0, 1]`` output),
        size, value range, alpha, or the reason it cannot be read.
    """
    path = str(path)
    file = ImageRef.parse(path).path
    try:
        stat = os.stat(file)
    except OSError as error:
        reason = "file not found" if isinstance(error, FileNotFoundError) else f"cannot be opened ({error})"
        return ImageInfo(path, error=reason)
    medical = reader.file_format(file) != "image"
    cache_key = (path, config.replace(bit_depth=None) if medical and config else None)
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(cache_key)
    if cached is not None and cached[0] == key:
        return cached[1]
    info = _inspect_with_reader(path, config) if medical else _inspect_uncached(path)
    _CACHE[cache_key] = (key, info)
    return info


def _inspect_with_reader(path: str, config: ReaderConfig | None) -> ImageInfo:
    """A DICOM file (every frame) or NIfTI volume (every kept slice), or one frame / slice, through the reader."""
    ref = ImageRef.parse(path)
    mode = "DICOM" if reader.file_format(ref.path) == "dicom" else "NIfTI"
    try:
        if ref.axis is None:
            images = [image for _, image in reader.read_images(ref.path, config)]
        else:
            images = [reader.read_image(ref, config)]
    except (ImageReadError, ValueError) as error:
        return ImageInfo(path, error=_reason(path, error))
    extrema = (min(float(image.min()) for image in images), max(float(image.max()) for image in images))
    height, width = images[0].shape[:2]
    return ImageInfo(path, mode, (width, height), extrema)


def _inspect_uncached(path: str) -> ImageInfo:
    try:
        with Image.open(path) as image:
            image.load()  # a full decode: truncated data only shows here
            mode, size, bands = image.mode, image.size, image.getbands()
            # NumPy rather than getextrema, which refuses some modes (e.g. big-endian 16-bit "I;16B").
            colour = image if mode in _COLOUR_MODES else image.convert("RGB")
            values = np.asarray(colour)
            if values.ndim == 3:
                values = values[..., [i for i, band in enumerate(colour.getbands()) if band != "A"]]
            extrema = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
            translucent = "A" in bands and int(np.asarray(image.getchannel("A")).min(initial=255)) < 255
    except Exception as error:  # report every failure with the file's name, whatever Pillow raised
        return ImageInfo(path, error=_reason(path, error))
    # Pillow's own DecompressionBombWarning names no file (and catch_warnings is not thread-safe): restate it.
    pixels, limit = size[0] * size[1], Image.MAX_IMAGE_PIXELS
    note = None
    if limit and pixels > limit:
        note = f"{pixels} pixels, above Pillow's decompression-bomb warning limit of {limit}"
    return ImageInfo(path, mode, size, extrema, translucent, note=note)


def _problem(info: ImageInfo, bit_depth: int | None, reads_high_bit_depth: bool) -> str | None:
    """Why the reader would fail on or garble this file, or ``None``."""
    if info.error is not None:
        return info.error
    mode, (low, high) = info.mode, info.extrema
    if mode in HIGH_BIT_DEPTH_MODES or mode == "F":
        if not reads_high_bit_depth:
            return (
                f"{mode} image with values {low:g}..{high:g}: anomalib's reader clips it at 255. Read it with "
                "anomalib_salad.data.CheckedFolder (CLI: --data anomalib_salad.data.CheckedFolder, "
                "--data.bit_depth for 12-bit data) or convert it to 8-bit first"
            )
        full_scale = _full_scale(mode, bit_depth)
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > full_scale:
            limit = f"bit_depth={bit_depth}" if bit_depth and mode != "F" else mode
            return (
                f"values {low:g}..{high:g} do not fit {limit} (0..{full_scale:g}); set bit_depth to the bits the "
                "file stores, or window and rescale it to unsigned 8/16-bit first"
            )
    return None


def _bits_hint(high: float) -> str:
    """The standard bit depth (10, 12, 14, 16) that holds ``high``, as advice."""
    needed = max(1, math.ceil(math.log2(high + 1)))
    standard = next((bits for bits in (10, 12, 14, 16) if bits >= needed), 16)
    return f"; if they hold {standard}-bit data in a 16-bit container, set bit_depth={standard}"


def _warnings(
    infos: Sequence[ImageInfo], bit_depth: int | None, min_side: int | None
) -> list[tuple[str, str, list[ImageInfo]]]:
    """Readable but suspicious files, grouped: ``[(kind, reason, files), ...]``."""
    readable = [i for i in infos if i.error is None]
    groups: list[tuple[str, str, list[ImageInfo]]] = []
    dark = [
        i
        for i in readable
        if i.mode not in _UNIT_RANGE_MODES
        and i.extrema[0] < i.extrema[1] < _full_scale(i.mode, bit_depth) * DARK_FRACTION
    ]
    dark_8bit = [i for i in dark if i.mode not in HIGH_BIT_DEPTH_MODES]
    if dark_8bit:
        top = max(i.extrema[1] for i in dark_8bit)
        groups.append(
            ("dark", f"look nearly black: no pixel above {top:g} of 255 (check the export's windowing)", dark_8bit)
        )
    dark_16bit = [i for i in dark if i.mode in HIGH_BIT_DEPTH_MODES]
    if dark_16bit:
        top = max(i.extrema[1] for i in dark_16bit)
        hint = _bits_hint(top) if bit_depth is None else ""
        groups.append(
            (
                "dark",
                f"are 16-bit files read as 0..{_full_scale('I;16', bit_depth):g} but no pixel exceeds "
                f"{top:g}, so they look nearly black to the model{hint}",
                dark_16bit,
            )
        )
    flat = [i for i in readable if i.mode == "DICOM" and 0 < i.extrema[1] - i.extrema[0] < DARK_FRACTION]
    if flat:
        groups.append(
            (
                "dark",
                f"use less than 1/{1 / DARK_FRACTION:.0f} of the intensity range after the VOI step "
                "(no window in the file, so the full stored range is used?); set a window, e.g. "
                "window='brain', 'lung' or 'center,width'",
                flat,
            )
        )
    constant = [i for i in readable if i.extrema[0] == i.extrema[1]]
    if constant:
        groups.append(("constant", "are constant: every pixel has the same value (an empty export?)", constant))
    translucent = [i for i in readable if i.translucent]
    if translucent:
        groups.append(
            (
                "alpha",
                "have transparent pixels; the alpha channel is ignored and the stored colour is used",
                translucent,
            )
        )
    small = [i for i in readable if min_side and min(i.size) * 2 < min_side]
    if small:
        groups.append(
            (
                "small",
                f"are smaller than half the {min_side}x{min_side} network input, so upscaled more "
                "than 2x (thumbnails?)",
                small,
            )
        )
    huge = [i for i in readable if i.note]
    if huge:
        groups.append(("huge", f"are very large ({huge[0].note})", huge))
    return groups


def _log_warnings(
    infos: Sequence[ImageInfo],
    bit_depth: int | None,
    min_side: int | None,
    what: str,
    kinds: Iterable[str] | None = None,
) -> None:
    """Log each group of suspicious files once per process (a datamodule and a callback may scan alike)."""
    for kind, reason, files in _warnings(infos, bit_depth, min_side):
        if kinds is not None and kind not in kinds:
            continue
        examples = ", ".join(i.path for i in files[:5]) + (", ..." if len(files) > 5 else "")
        message = f"{len(files)} of {len(infos)} {what} {reason}: {examples}"
        if message not in _LOGGED:
            _LOGGED.add(message)
            logger.warning(message)


def _error(problems: Sequence[str], total: int, what: str) -> ImageFileError:
    """One error naming every unusable file (the first ``MAX_LISTED`` in the message, all in ``.problems``)."""
    more = len(problems) - MAX_LISTED
    tail = f"\n  ... and {more} more (all are in the exception's .problems)" if more > 0 else ""
    msg = f"{len(problems)} of {total} {what} cannot be used:\n  " + "\n  ".join(problems[:MAX_LISTED]) + tail
    return ImageFileError(msg, problems)


def scan_image_files(
    paths: Iterable[str | Path], threads: int | None = None, config: ReaderConfig | None = None
) -> list[ImageInfo]:
    """:func:`inspect_image` for every file, in threads (Pillow decodes without the GIL).

    Args:
        paths: The image files (or frame / slice ids).
        threads: Decoding threads. Defaults to ``min(8, os.cpu_count())``.
        config: Reader settings for DICOM and NIfTI files. Defaults to ``None`` (the defaults).

    Returns:
        list[ImageInfo]: One entry per file, in order.
    """
    paths = [str(p) for p in paths]
    threads = threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda path: inspect_image(path, config), paths))
    return [inspect_image(p, config) for p in paths]


def image_file_problems(
    infos: Iterable[ImageInfo], bit_depth: int | None = None, reads_high_bit_depth: bool = True
) -> list[str]:
    """One ``"path: reason"`` line per file that cannot be used (see :func:`check_image_files`)."""
    bit_depth = check_bit_depth(bit_depth)
    return [f"{i.path}: {p}" for i in infos if (p := _problem(i, bit_depth, reads_high_bit_depth)) is not None]


def check_image_files(
    paths: Iterable[str | Path],
    bit_depth: int | None = None,
    *,
    reads_high_bit_depth: bool = True,
    min_side: int | None = None,
    what: str = "image files",
    threads: int | None = None,
    config: ReaderConfig | None = None,
) -> list[ImageInfo]:
    """Decode every file once and fail with a message naming each file that cannot be used.

    Files that can be read but look wrong (nearly black, constant, transparent, much smaller than the network
    input, 16-bit data that seems to use fewer bits than it is read with) are logged as warnings, not refused.

    Args:
        paths: The image files.
        bit_depth: Bits stored per pixel in 16-bit grayscale files, as passed to
            :func:`~anomalib_salad.data.folder.read_image_tensor`. Defaults to ``None`` (16).
        reads_high_bit_depth: Whether the reader that will load these files handles 16-bit files (the datasets of
            :mod:`anomalib_salad.data.folder` do); ``False`` for anomalib's own reader, which clips them, so they
            become errors. Defaults to ``True``.
        min_side: Side of the network input, to warn about images upscaled more than 2x. Defaults to ``None``.
        what: How the files are called in messages, e.g. ``"training images"``. Defaults to ``"image files"``.
        threads: Decoding threads. Defaults to ``min(8, os.cpu_count())``.
        config: Reader settings for DICOM and NIfTI files (window, axis, ...). Defaults to ``None``.

    Returns:
        list[ImageInfo]: One entry per file, in order.

    Raises:
        ImageFileError: If any file cannot be read, or would be clipped, or does not fit ``bit_depth``.
    """
    bit_depth = check_bit_depth(bit_depth)
    infos = scan_image_files(paths, threads, config)
    problems = image_file_problems(infos, bit_depth, reads_high_bit_depth)
    if problems:
        raise _error(problems, len(infos), what)
    _log_warnings(infos, bit_depth, min_side, what)
    return infos


# --------------------------------------------------------------------------------------------------------------
# Lightning callback for any datamodule or data loader
# --------------------------------------------------------------------------------------------------------------


def datasets_of(loaders: Any) -> Iterator[Any]:
    """The datasets behind a data loader or a (nested) list / dict of them."""
    if isinstance(loaders, DataLoader):
        yield loaders.dataset
    elif isinstance(loaders, dict):
        for value in loaders.values():
            yield from datasets_of(value)
    elif isinstance(loaders, list | tuple):
        for value in loaders:
            yield from datasets_of(value)


def _image_paths(dataset: Any) -> list[str] | None:
    """Image files of an anomalib dataset (``samples.image_path``) or ``PredictDataset``, else ``None``.

    Frame and slice ids count as their file, once: a file is decoded whole when it is scanned.
    """
    samples = getattr(dataset, "samples", None)
    if samples is not None and "image_path" in getattr(samples, "columns", ()):
        paths = samples.image_path
    else:
        paths = getattr(dataset, "image_filenames", None)
        if paths is None:
            return None
    return list(dict.fromkeys(ImageRef.parse(p).path for p in paths))


class ImageFileCheck(Callback):
    """Scan every dataset a run will read, before its first batch; name every unusable image file.

    At ``setup`` it scans the datamodule's train, validation and test sets together and raises one
    :class:`ImageFileError` for all of them; at the start of each loop it scans data loaders passed directly
    (e.g. ``anomalib predict --data <folder>``). The datasets of :mod:`anomalib_salad.data.folder` read 16-bit
    files correctly; anomalib's own would clip them at 255, so there such files are refused, with advice. Datasets
    that ``CheckedFolder`` has already checked only get the warning about images much smaller than the network
    input (the datamodule does not know the model). Each dataset is scanned once per callback, each file once per
    process unless it changes.

    Args:
        threads: Decoding threads. Defaults to ``min(8, os.cpu_count())``.

    Example:
        >>> from anomalib.engine import Engine
        >>> engine = Engine(callbacks=[ImageFileCheck()])  # doctest: +SKIP
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._checked: weakref.WeakSet = weakref.WeakSet()

    def _check(self, datasets: Sequence[tuple[str, Any]], pl_module: LightningModule) -> None:
        """Scan ``[(split, dataset), ...]``; raise one error naming every unusable file of all of them."""
        min_side = getattr(getattr(pl_module, "model", None), "image_size", None)
        problems, total = [], 0
        for split, dataset in datasets:
            paths = _image_paths(dataset)
            if paths is None or dataset in self._checked:
                continue
            infos = scan_image_files(paths, self.threads, getattr(dataset, "reader_config", None))
            total += len(infos)
            bit_depth = getattr(dataset, "bit_depth", None)
            name = f" of dataset {dataset.name!r}" if isinstance(getattr(dataset, "name", None), str) else ""
            what = f"{split} images{name}"
            if getattr(dataset, "files_checked", False):
                _log_warnings(infos, bit_depth, min_side, what, kinds={"small"})
            else:
                found = image_file_problems(infos, bit_depth, getattr(dataset, "reads_high_bit_depth", False))
                problems += found
                if not found:
                    _log_warnings(infos, bit_depth, min_side, what)
        if problems:
            splits = "/".join(split for split, _ in datasets)
            raise _error(problems, total, f"{splits} images")
        self._checked.update(dataset for _, dataset in datasets if _image_paths(dataset) is not None)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Scan the datamodule's datasets (Lightning sets the datamodule up just before this hook)."""
        del stage
        datamodule = trainer.datamodule
        if datamodule is not None:
            splits = [(split, getattr(datamodule, f"{split}_data", None)) for split in ("train", "val", "test")]
            self._check([(split, dataset) for split, dataset in splits if dataset is not None], pl_module)

    def _check_loaders(self, loaders: Any, pl_module: LightningModule, split: str) -> None:
        self._check([(split, dataset) for dataset in datasets_of(loaders)], pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Scan training loaders passed without a datamodule."""
        self._check_loaders(trainer.train_dataloader, pl_module, "train")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Scan validation loaders passed without a datamodule."""
        self._check_loaders(trainer.val_dataloaders, pl_module, "val")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Scan test loaders passed without a datamodule."""
        self._check_loaders(trainer.test_dataloaders, pl_module, "test")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Scan predict loaders, e.g. ``anomalib predict --data <folder>``."""
        self._check_loaders(trainer.predict_dataloaders, pl_module, "predict")
