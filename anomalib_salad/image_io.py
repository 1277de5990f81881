"""Image files that anomalib 2.7 reads wrongly or fails on deep in a data-loader worker, caught up front.

anomalib reads every image with ``Image.open(path).convert("RGB")`` and divides by 255. That

* clips 16-bit grayscale files (Pillow mode ``I;16``, e.g. 12-bit medical exports) at 255: almost every
  pixel becomes white, silently;
* fails on a corrupt file only when a batch reaches it, possibly hours into training and, for a truncated
  PNG or JPEG, with a message that does not name the file ("image file is truncated").

This module adds:

* :func:`check_image_files`: decodes every file once (in threads) and raises :class:`ImageFileError` that
  names every unusable file, before any epoch; it also logs files that are readable but suspicious
  (nearly black, constant, transparent, much smaller than the network input).
* :func:`read_image_tensor`: the project's one reader (:mod:`anomalib_salad.reader`, torch-free) as a tensor:
  anomalib's values for 8-bit files (bit-identical), 16-bit grayscale scaled by ``2**bit_depth - 1`` instead
  of clipped, DICOM (modality LUT, VOI window, MONOCHROME1, frames) and NIfTI slices; every failure names the
  file.
* :class:`CheckedFolder` / :class:`MedicalFolder` / :class:`CheckedPredictDataset`: anomalib's ``Folder``
  datamodule and ``PredictDataset`` reading through :func:`read_image_tensor`, accepting DICOM and NIfTI
  (split per file, then cut into frames / slices named ``path:axis:index``) and scanning their files at setup.
* :class:`ImageFileCheck`: a Lightning callback that scans the datasets of any fit / validate / test /
  predict run; with anomalib's own datasets it also refuses 16-bit files, which they would clip.
* :class:`ReaderVisualizer`: anomalib's image visualizer, reading the originals it draws through the same
  reader (anomalib's opens them with Pillow, which fails on DICOM files and slice ids).

16-bit files are divided by ``2**bit_depth - 1`` with ``bit_depth`` given by the user, 16 by default (the
container's full range). Neither the image's own maximum (it rescales every image differently, so the same
tissue gets different values and a uniformly brighter lesion disappears) nor a bit depth guessed per file or
per folder (an image or a prediction folder whose values happen to stay below 1024 would be scaled 4x
brighter than the training data) gives the same value to the same intensity in every file. The scan says
when the 16-bit files look like 12-bit data read at 16 bits, and which ``bit_depth`` to set.

Example:
    >>> from anomalib_salad.image_io import CheckedFolder
    >>> datamodule = CheckedFolder(name="scans", root="scans", normal_dir="train/normal",
    ...                            abnormal_dir="test/abnormal", normal_test_dir="test/normal",
    ...                            bit_depth=12, seed=0)  # doctest: +SKIP
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
import torch
from anomalib import TaskType
from anomalib.data import ImageItem, PredictDataset
from anomalib.data.datamodules.image.folder import Folder
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.utils import LabelName, Split, read_mask
from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.item_visualizer import visualize_image_item
from lightning.pytorch import Callback, LightningModule, Trainer
from pandas import DataFrame
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.tv_tensors import Image as TVImage
from torchvision.tv_tensors import Mask

from . import reader
from .reader import HIGH_BIT_DEPTH_MODES, ImageReadError, ImageRef, ReaderConfig

logger = logging.getLogger(__name__)

__all__ = [
    "CheckedFolder",
    "CheckedFolderDataset",
    "CheckedPredictDataset",
    "ImageFileCheck",
    "ImageFileError",
    "ImageInfo",
    "MedicalFolder",
    "ReaderVisualizer",
    "check_image_files",
    "image_file_problems",
    "inspect_image",
    "read_image_tensor",
    "scan_image_files",
]

_COLOUR_MODES = frozenset({"L", "LA", "RGB", "RGBA", "F", *HIGH_BIT_DEPTH_MODES})
# Modes of ImageInfo for files whose reader output is already in [0, 1] (extrema are of that output).
_UNIT_RANGE_MODES = frozenset({"F", "DICOM", "NIfTI"})
# Folder's listing matches suffixes: ".gz" lets ".nii.gz" through (other .gz files are dropped afterwards).
MEDICAL_EXTENSIONS = tuple(sorted({*IMG_EXTENSIONS, *reader.DICOM_SUFFIXES, ".nii", ".gz"}))
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


def _check_bit_depth(bit_depth: int | None) -> int | None:
    return reader.check_bit_depth(bit_depth)


def _reader_config(config: ReaderConfig | None, bit_depth: int | None = None) -> ReaderConfig:
    """``config`` (default settings if ``None``) with ``bit_depth`` set when given."""
    return (config or reader.DEFAULT).replace(bit_depth=_check_bit_depth(bit_depth))


def _full_scale(mode: str, bit_depth: int | None) -> float:
    """The value that reads as 1.0 in a file of this Pillow mode."""
    if mode in HIGH_BIT_DEPTH_MODES:
        return float(2 ** (bit_depth or 16) - 1)
    return 1.0 if mode in _UNIT_RANGE_MODES else 255.0


# --------------------------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------------------------


def read_image_tensor(path: str | Path, bit_depth: int | None = None, config: ReaderConfig | None = None) -> TVImage:
    """Read an image as anomalib's datasets expect it: ``(3, H, W)`` float32 RGB in ``[0, 1]``.

    This is :func:`anomalib_salad.reader.read_image` as a tensor. 8-bit files (grayscale, RGB, palette, with or
    without alpha, which is dropped) give exactly what ``anomalib.data.utils.read_image(path, as_tensor=True)``
    gives. 16-bit grayscale files are divided by ``2**bit_depth - 1`` instead of being clipped at 255; float
    files must already lie in ``[0, 1]``. DICOM files, their frames (``path:frame:k``) and NIfTI slices
    (``path:axis:index``) are read by the rules of :mod:`anomalib_salad.reader`.

    Args:
        path: The image file, or the id of a frame or slice.
        bit_depth: Bits stored per pixel in 16-bit grayscale files (e.g. ``12`` for 12-bit exports in a 16-bit
            PNG); ignored for 8-bit files. ``None`` keeps ``config``'s (the container's 16 bits by default).
            Defaults to ``None``.
        config: Reader settings (DICOM window, NIfTI axis, ...). Defaults to ``None`` (the defaults).

    Returns:
        TVImage: ``(3, H, W)`` float32 in ``[0, 1]``.

    Raises:
        ImageFileError: If the file cannot be decoded, or its values do not fit ``bit_depth``; the message names
            the file.
    """
    config = _reader_config(config, bit_depth)
    try:
        array = reader.read_image(path, config)
    except ImageReadError as error:
        raise ImageFileError(str(error)) from error
    return TVImage(torch.from_numpy(array).permute(2, 0, 1).contiguous())


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
                "anomalib_salad.image_io.CheckedFolder (CLI: --data anomalib_salad.image_io.CheckedFolder, "
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
    bit_depth = _check_bit_depth(bit_depth)
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
        bit_depth: Bits stored per pixel in 16-bit grayscale files, as passed to :func:`read_image_tensor`.
            Defaults to ``None`` (16).
        reads_high_bit_depth: Whether the reader that will load these files handles 16-bit files (this module's
            does); ``False`` for anomalib's own reader, which clips them, so they become errors. Defaults to
            ``True``.
        min_side: Side of the network input, to warn about images upscaled more than 2x. Defaults to ``None``.
        what: How the files are called in messages, e.g. ``"training images"``. Defaults to ``"image files"``.
        threads: Decoding threads. Defaults to ``min(8, os.cpu_count())``.
        config: Reader settings for DICOM and NIfTI files (window, axis, ...). Defaults to ``None``.

    Returns:
        list[ImageInfo]: One entry per file, in order.

    Raises:
        ImageFileError: If any file cannot be read, or would be clipped, or does not fit ``bit_depth``.
    """
    bit_depth = _check_bit_depth(bit_depth)
    infos = scan_image_files(paths, threads, config)
    problems = image_file_problems(infos, bit_depth, reads_high_bit_depth)
    if problems:
        raise _error(problems, len(infos), what)
    _log_warnings(infos, bit_depth, min_side, what)
    return infos


# --------------------------------------------------------------------------------------------------------------
# anomalib datasets and datamodule that read through read_image_tensor
# --------------------------------------------------------------------------------------------------------------


def _expand_items(paths: Iterable[str], config: ReaderConfig) -> list[list[str]]:
    """The item ids of each file: itself, its DICOM frames, or its kept NIfTI slices."""
    expanded = []
    for path in paths:
        try:
            expanded.append(reader.list_items(path, config))
        except ImageReadError as error:
            raise ImageFileError(str(error), [str(error)]) from error
    return expanded


class CheckedFolderDataset(FolderDataset):
    """anomalib's ``FolderDataset`` reading images with :func:`read_image_tensor` (16-bit aware, names files).

    Samples are files until :meth:`expand_items` replaces each DICOM file by its frames and each NIfTI volume
    by its kept slices (ids ``path:frame:k`` / ``path:axis:index``); :class:`CheckedFolder` does that after
    splitting, so that frames and slices of one file never land in two splits.

    Args:
        *args: ``FolderDataset`` arguments.
        bit_depth: Bits stored per pixel in 16-bit grayscale files. Defaults to ``None`` (16).
        reader_config: Reader settings (DICOM window, NIfTI axis, ...). Defaults to ``None`` (the defaults).
        **kwargs: ``FolderDataset`` keyword arguments.
    """

    reads_high_bit_depth = True

    def __init__(
        self, *args, bit_depth: int | None = None, reader_config: ReaderConfig | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.reader_config = _reader_config(reader_config, bit_depth)
        self.bit_depth = self.reader_config.bit_depth
        self.items_expanded = False
        names = self._samples.image_path.str.lower()
        # Folder's suffix filter needs ".gz" to let ".nii.gz" in; other gzip files are not images.
        self._samples = self._samples[~names.str.endswith(".gz") | names.str.endswith(".nii.gz")]

    @property
    def samples(self) -> DataFrame:
        """The samples; ``image_path`` holds a file or a frame / slice id."""
        return FolderDataset.samples.fget(self)

    @samples.setter
    def samples(self, samples: DataFrame) -> None:
        # anomalib's setter checks that each image_path exists; for a frame or slice id the file behind it must.
        if not isinstance(samples, DataFrame) or not {"image_path", "split"} <= set(samples.columns):
            msg = f"samples must be a pandas.DataFrame with (at least) columns image_path and split, got {samples!r}"
            raise ValueError(msg)
        missing = [p for p in samples.image_path if not Path(ImageRef.parse(p).path).exists()]
        if missing:
            msg = f"missing file path(s) in samples: {missing[:5]}"
            raise FileNotFoundError(msg)
        self._samples = samples

    def expand_items(self) -> None:
        """Replace each file by the 2-D images in it (once); single images stay as they are."""
        if self.items_expanded:
            return
        samples = self.samples
        ids = _expand_items(samples.image_path, self.reader_config)
        rows = samples.index.repeat([len(items) for items in ids])
        expanded = samples.loc[rows].reset_index(drop=True)
        expanded["image_path"] = [item for items in ids for item in items]
        self._samples = expanded
        self.items_expanded = True

    def __getitem__(self, index: int) -> ImageItem:
        """``AnomalibDataset.__getitem__`` with the image read by :func:`read_image_tensor`."""
        sample = self.samples.iloc[index]
        image_path, mask_path, label_index = sample.image_path, sample.mask_path, sample.label_index
        image = read_image_tensor(image_path, config=self.reader_config)
        gt_mask = None
        if self.task == TaskType.SEGMENTATION:
            if label_index == LabelName.NORMAL:
                gt_mask = Mask(torch.zeros(image.shape[-2:])).to(torch.uint8)
            elif label_index == LabelName.ABNORMAL:
                gt_mask = read_mask(mask_path, as_tensor=True)
        if self.augmentations:
            if self.task == TaskType.CLASSIFICATION:
                image = self.augmentations(image)
            else:
                temp_mask = gt_mask if gt_mask is not None else Mask(torch.zeros(image.shape[-2:])).to(torch.uint8)
                image, augmented_mask = self.augmentations(image, temp_mask)
                gt_mask = augmented_mask if gt_mask is not None else None
        gt_label = None if label_index == LabelName.UNKNOWN else torch.tensor(label_index)
        return ImageItem(image=image, gt_mask=gt_mask, gt_label=gt_label, image_path=image_path, mask_path=mask_path)


def _predict_files(path: str | Path) -> list[str]:
    """Files under ``path``, or ``[path]`` for a file or an item id."""
    path = Path(path)
    if path.is_dir():
        files = [str(file) for file in reader.list_files(path)]
    elif path.is_file() or ImageRef.parse(path).axis is not None:
        files = [str(path)]
    else:
        msg = f"Prediction input not found: {path}"
        raise FileNotFoundError(msg)
    if not files:
        msg = f"No readable files (suffixes {list(reader.SUPPORTED_SUFFIXES)}, or DICOM) in {path}"
        raise FileNotFoundError(msg)
    return files


class CheckedPredictDataset(PredictDataset):
    """anomalib's ``PredictDataset`` (an image, a DICOM file or NIfTI volume, or a folder) reading with the reader.

    Pass it as ``Engine.predict(model, dataset=CheckedPredictDataset(path, bit_depth=12))``, or on the command
    line: ``anomalib predict ... --data anomalib_salad.image_io.CheckedPredictDataset --data.path scans/``.
    Folders are searched recursively; DICOM files give one item per frame and NIfTI volumes one per kept slice,
    named ``path:frame:k`` / ``path:axis:index`` in ``image_path``.

    Args:
        path: An image file, a DICOM / NIfTI file, a frame or slice id, or a folder.
        bit_depth: Bits stored per pixel in 16-bit grayscale files. Defaults to ``None`` (16).
        check_files: Scan all files now with :func:`check_image_files`. Defaults to ``True``.
        window: DICOM VOI window (see :class:`~anomalib_salad.reader.ReaderConfig`). Defaults to ``None``
            (``"file"``).
        axis: NIfTI slicing axis. Defaults to ``None`` (2).
        reader_config: All reader settings at once; ``bit_depth``, ``window`` and ``axis`` override it.
            Defaults to ``None``.
        **kwargs: ``PredictDataset`` keyword arguments (``transform``, ``image_size``).
    """

    reads_high_bit_depth = True

    def __init__(
        self,
        path: str | Path,
        bit_depth: int | None = None,
        check_files: bool = True,
        window: str | None = None,
        axis: int | None = None,
        reader_config: ReaderConfig | None = None,
        **kwargs,
    ) -> None:
        # PredictDataset.__init__ lists files with anomalib's suffixes, which leave out DICOM and NIfTI.
        Dataset.__init__(self)
        self.transform = kwargs.pop("transform", None)
        self.image_size = kwargs.pop("image_size", (256, 256))
        if kwargs:
            msg = f"unexpected arguments {sorted(kwargs)}"
            raise TypeError(msg)
        self.reader_config = _reader_config(reader_config, bit_depth).replace(window=window, axis=axis)
        self.bit_depth = self.reader_config.bit_depth
        self.files_checked = check_files
        files = _predict_files(path)
        if check_files:
            check_image_files(files, self.bit_depth, what=f"images in {path}", config=self.reader_config)
        self.image_filenames = [item for items in _expand_items(files, self.reader_config) for item in items]

    def __getitem__(self, index: int) -> ImageItem:
        """The image at ``index``, read by :func:`read_image_tensor`."""
        path = self.image_filenames[index]
        image = read_image_tensor(path, config=self.reader_config)
        if self.transform:
            image = self.transform(image)
        return ImageItem(image=image, image_path=str(path))


class CheckedFolder(Folder):
    """anomalib's ``Folder`` datamodule that reads 16-bit, DICOM and NIfTI files and checks every file at setup.

    Every file of every split is decoded once when the datamodule is set up, and an :class:`ImageFileError`
    names each unreadable file before training starts (anomalib would fail at the first batch holding it).
    Images are read by :func:`read_image_tensor`: 8-bit files exactly as anomalib reads them, 16-bit grayscale
    files divided by ``2**bit_depth - 1``, DICOM and NIfTI by the rules of :mod:`anomalib_salad.reader`.

    Splits (anomalib's, seeded by ``seed``) are drawn over files; only then is each DICOM file replaced by its
    frames and each NIfTI volume by its kept slices, so one scan never lands in two splits.

    Args:
        *args: ``anomalib.data.Folder`` arguments (``name``, ``normal_dir``, ``root``, ``abnormal_dir``, ...).
        bit_depth: Bits stored per pixel in 16-bit grayscale files, e.g. ``12`` for 12-bit medical exports in
            16-bit PNGs; ignored for 8-bit files. ``None`` divides by 65535. Defaults to ``None``.
        check_files: Scan all files at setup. Defaults to ``True``.
        window: DICOM VOI: ``"file"`` (the file's VOI LUT or window, else the full stored range), ``"range"``,
            a preset (``"brain"``, ``"lung"``, ``"bone"``, ...) or ``"center,width"`` in modality units (HU).
            Defaults to ``None`` (``"file"``).
        axis: NIfTI: voxel-array axis to cut volumes along. Defaults to ``None`` (2).
        percentiles: NIfTI: foreground percentiles mapped to 0 and 1. Defaults to ``None`` (0.5, 99.5).
        min_tissue: NIfTI: slices with a smaller fraction of tissue pixels are skipped. Defaults to ``None``
            (0.01).
        **kwargs: ``anomalib.data.Folder`` keyword arguments. ``extensions`` defaults to anomalib's image
            suffixes plus ``.dcm``, ``.dicom``, ``.nii`` and ``.gz`` (anomalib matches the last suffix; ``.gz``
            files other than ``.nii.gz`` are dropped). DICOM files without a suffix are not found here (rename
            them to ``.dcm``); ``salad-score`` finds them by their preamble.

    Example:
        >>> datamodule = CheckedFolder(name="ct", root="ct_pngs", normal_dir="train/normal",
        ...                            abnormal_dir="test/abnormal", bit_depth=12)  # doctest: +SKIP
    """

    def __init__(
        self,
        *args,
        bit_depth: int | None = None,
        check_files: bool = True,
        window: str | None = None,
        axis: int | None = None,
        percentiles: tuple[float, float] | None = None,
        min_tissue: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.reader_config = ReaderConfig(bit_depth=_check_bit_depth(bit_depth)).replace(
            window=window,
            axis=axis,
            percentiles=None if percentiles is None else tuple(percentiles),
            min_tissue=min_tissue,
        )
        self.bit_depth = self.reader_config.bit_depth
        self.check_files = check_files
        if self.extensions is None:
            self.extensions = MEDICAL_EXTENSIONS

    def _setup(self, _stage: str | None = None) -> None:
        # Folder._setup with the checked dataset class; the val split is a deep copy of it, so it reads alike.
        folder_args = {
            "name": self.name,
            "root": self.root,
            "normal_dir": self.normal_dir,
            "abnormal_dir": self.abnormal_dir,
            "normal_test_dir": self.normal_test_dir,
            "mask_dir": self.mask_dir,
            "extensions": self.extensions,
            "reader_config": self.reader_config,
        }
        self.train_data = CheckedFolderDataset(split=Split.TRAIN, **folder_args)
        self.test_data = CheckedFolderDataset(split=Split.TEST, **folder_args)
        if self.check_files:
            paths = [*self.train_data.samples.image_path, *self.test_data.samples.image_path]
            check_image_files(paths, self.bit_depth, what=f"images of dataset {self.name!r}", config=self.reader_config)
            self.train_data.files_checked = self.test_data.files_checked = True  # the val split copies test_data

    def setup(self, stage: str | None = None) -> None:
        """Set up as anomalib does (datasets, then seeded test / validation splits over files), then frames / slices."""
        super().setup(stage)
        for split in ("train", "val", "test"):
            dataset = getattr(self, f"{split}_data", None)
            if isinstance(dataset, CheckedFolderDataset):
                dataset.expand_items()


class MedicalFolder(CheckedFolder):
    """:class:`CheckedFolder` with the usual layout as defaults: point ``root`` at a folder of scans.

    ``root/train/normal`` holds normal training scans, ``root/test/normal`` and ``root/test/abnormal`` the test
    scans (half of them, label-stratified and seeded, become the validation set that fits the threshold). Any
    mix of PNG/JPEG/TIFF, DICOM (``.dcm``) and NIfTI (``.nii``, ``.nii.gz``) files, in sub-folders too::

        anomalib train --model anomalib_salad.Salad --data anomalib_salad.MedicalFolder --data.root scans

    Args:
        root: The dataset folder.
        name: Dataset name (in logs and result paths). Defaults to ``"scans"``.
        normal_dir: Normal training files, relative to ``root``. Defaults to ``"train/normal"``.
        abnormal_dir: Abnormal test files. Defaults to ``"test/abnormal"``.
        normal_test_dir: Normal test files. Defaults to ``"test/normal"``.
        train_batch_size: Training batch size. Defaults to ``32``.
        eval_batch_size: Evaluation batch size. Defaults to ``32``.
        num_workers: Data loader workers. Defaults to ``0``.
        seed: Seed of the splits. Defaults to ``0``.
        **kwargs: Further :class:`CheckedFolder` / ``Folder`` arguments (``window``, ``axis``, ``bit_depth``,
            ``val_split_ratio``, ...).
    """

    def __init__(
        self,
        root: str | Path,
        name: str = "scans",
        normal_dir: str | Path = "train/normal",
        abnormal_dir: str | Path | None = "test/abnormal",
        normal_test_dir: str | Path | None = "test/normal",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = 0,
        **kwargs,
    ) -> None:
        super().__init__(
            name=name,
            normal_dir=normal_dir,
            root=root,
            abnormal_dir=abnormal_dir,
            normal_test_dir=normal_test_dir,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
            **kwargs,
        )


# --------------------------------------------------------------------------------------------------------------
# Lightning callback for any datamodule or data loader
# --------------------------------------------------------------------------------------------------------------


def _datasets(loaders: Any) -> Iterator[Any]:
    """The datasets behind a data loader or a (nested) list / dict of them."""
    if isinstance(loaders, DataLoader):
        yield loaders.dataset
    elif isinstance(loaders, dict):
        for value in loaders.values():
            yield from _datasets(value)
    elif isinstance(loaders, list | tuple):
        for value in loaders:
            yield from _datasets(value)


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
    (e.g. ``anomalib predict --data <folder>``). Datasets of this module read 16-bit files correctly; anomalib's
    own would clip them at 255, so there such files are refused, with advice. Datasets that
    :class:`CheckedFolder` has already checked only get the warning about images much smaller than the network
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
        self._check([(split, dataset) for dataset in _datasets(loaders)], pl_module)

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


# --------------------------------------------------------------------------------------------------------------
# Visualizer that draws the originals through the reader
# --------------------------------------------------------------------------------------------------------------


def _visual_name(image_path: str) -> str:
    """Where the overlay of ``image_path`` is saved: PNG/JPEG names as anomalib saves them, others as ``.png``.

    ``scan.dcm`` -> ``scan.dcm.png``, ``brain.nii.gz:2:40`` -> ``brain.nii.gz_2_40.png``.
    """
    ref = ImageRef.parse(image_path)
    if ref.axis is None and reader.file_format(ref.path) == "image":
        return ref.path
    return f"{ref.path}_{ref.axis}_{ref.index}.png" if ref.axis is not None else f"{ref.path}.png"


def _trainer_reader_config(trainer: Trainer) -> ReaderConfig | None:
    """The reader settings of the run's datamodule or data loaders, if they have any."""
    config = getattr(getattr(trainer, "datamodule", None), "reader_config", None)
    if config is not None:
        return config
    for loaders in (trainer.test_dataloaders, trainer.predict_dataloaders):
        for dataset in _datasets(loaders):
            if getattr(dataset, "reader_config", None) is not None:
                return dataset.reader_config
    return None


class ReaderVisualizer(ImageVisualizer):
    """anomalib's ``ImageVisualizer``, drawing each original read by :func:`read_image_tensor`.

    anomalib's visualizer reopens every original with ``Image.open(path).convert("RGB")``: that fails on DICOM
    files and on frame / slice ids, and shows 16-bit files clipped. This one reads them with the run's reader
    settings (the datamodule's or dataset's ``reader_config``) and saves every overlay as a PNG next to where
    anomalib would (``scan.dcm`` -> ``scan.dcm.png``, ``brain.nii.gz:2:40`` -> ``brain.nii.gz_2_40.png``).

    Args:
        *args: ``ImageVisualizer`` arguments.
        **kwargs: ``ImageVisualizer`` keyword arguments.

    Example:
        >>> from anomalib_salad import Salad
        >>> model = Salad(visualizer=ReaderVisualizer())  # doctest: +SKIP
    """

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Save one overlay per image of the batch."""
        del pl_module, outputs, batch_idx, dataloader_idx
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "images"
        config = _trainer_reader_config(trainer)
        datamodule = getattr(trainer, "datamodule", None)
        for item in batch:
            image_path = item.image_path
            if image_path:
                item.image = read_image_tensor(image_path, config=config)
                item.image_path = None  # anomalib would reopen the file with Pillow
            image = visualize_image_item(
                item,
                fields=self.fields,
                overlay_fields=self.overlay_fields,
                field_size=self.field_size,
                fields_config=self.fields_config,
                overlay_fields_config=self.overlay_fields_config,
                text_config=self.text_config,
            )
            if image is not None:
                filename = generate_output_filename(
                    input_path=_visual_name(image_path) if image_path else "",
                    output_path=self.output_dir,
                    dataset_name=getattr(datamodule, "name", None) if datamodule else None,
                    category=getattr(datamodule, "category", None) if datamodule else None,
                )
                image.save(filename)
