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
* :func:`read_image_tensor`: anomalib's reader for 8-bit files (bit-identical), and 16-bit grayscale
  scaled by ``2**bit_depth - 1`` instead of clipped; every failure names the file.
* :class:`CheckedFolder` / :class:`CheckedPredictDataset`: anomalib's ``Folder`` datamodule and
  ``PredictDataset`` reading through :func:`read_image_tensor` and scanning their files at setup.
* :class:`ImageFileCheck`: a Lightning callback that scans the datasets of any fit / validate / test /
  predict run; with anomalib's own datasets it also refuses 16-bit files, which they would clip.

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
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import to_dtype, to_image
from torchvision.tv_tensors import Image as TVImage
from torchvision.tv_tensors import Mask

logger = logging.getLogger(__name__)

__all__ = [
    "CheckedFolder",
    "CheckedFolderDataset",
    "CheckedPredictDataset",
    "ImageFileCheck",
    "ImageFileError",
    "ImageInfo",
    "check_image_files",
    "image_file_problems",
    "inspect_image",
    "read_image_tensor",
    "scan_image_files",
]

# Pillow modes holding more than 8 bits per grayscale pixel; convert("RGB") clips them at 255.
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_COLOUR_MODES = frozenset({"L", "LA", "RGB", "RGBA", "F", *HIGH_BIT_DEPTH_MODES})
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
    if bit_depth is None:
        return None
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not 1 <= bit_depth <= 16:
        msg = f"bit_depth must be an int in [1, 16] (bits stored per pixel of 16-bit files) or None, got {bit_depth!r}"
        raise ValueError(msg)
    return bit_depth


def _full_scale(mode: str, bit_depth: int | None) -> float:
    """The value that reads as 1.0 in a file of this Pillow mode."""
    if mode in HIGH_BIT_DEPTH_MODES:
        return float(2 ** (bit_depth or 16) - 1)
    return 1.0 if mode == "F" else 255.0


# --------------------------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------------------------


def _high_bit_depth_tensor(image: Image.Image, path: str, bit_depth: int | None) -> torch.Tensor:
    """A 16/32-bit integer or float grayscale image as ``(3, H, W)`` float32 in ``[0, 1]``, never clipped."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            msg = (f"{path}: floating-point image with values in [{values.min():g}, {values.max():g}]; only float "
                   "images in [0, 1] can be read. Window and rescale it (e.g. to 8 or 16-bit) first.")
            raise ImageFileError(msg)
        scaled = values.astype(np.float32)
    else:
        full_scale = _full_scale(image.mode, bit_depth)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > full_scale:
            # Signed (e.g. Hounsfield units) or wider than declared: clipping would silently destroy it.
            bits = f"bit_depth={bit_depth}" if bit_depth else "16 bits"
            msg = (f"{path}: pixel values in [{low}, {high}] do not fit {bits} (0..{full_scale:.0f}); set bit_depth "
                   "to the bits the file stores, or window and rescale it to unsigned 8/16-bit first.")
            raise ImageFileError(msg)
        scaled = values.astype(np.float32) / np.float32(full_scale)
    return torch.from_numpy(np.ascontiguousarray(scaled)).expand(3, -1, -1).contiguous()


def read_image_tensor(path: str | Path, bit_depth: int | None = None) -> TVImage:
    """Read an image file as anomalib's datasets expect it: ``(3, H, W)`` float32 RGB in ``[0, 1]``.

    8-bit files (grayscale, RGB, palette, with or without alpha, which is dropped) give exactly what
    ``anomalib.data.utils.read_image(path, as_tensor=True)`` gives. 16-bit grayscale files are divided by
    ``2**bit_depth - 1`` instead of being clipped at 255; float files must already lie in ``[0, 1]``.

    Args:
        path: The image file.
        bit_depth: Bits stored per pixel in 16-bit grayscale files (e.g. ``12`` for 12-bit exports in a 16-bit
            PNG); ignored for 8-bit files. ``None`` uses the container's 16 bits. Defaults to ``None``.

    Returns:
        TVImage: ``(3, H, W)`` float32 in ``[0, 1]``.

    Raises:
        ImageFileError: If the file cannot be decoded, or its values do not fit ``bit_depth``; the message names
            the file.
    """
    bit_depth = _check_bit_depth(bit_depth)
    path = str(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in HIGH_BIT_DEPTH_MODES or image.mode == "F":
                return TVImage(_high_bit_depth_tensor(image, path, bit_depth))
            # Same calls as anomalib's read_image, so 8-bit files read identically with or without this module.
            # (Pillow already reduces 16-bit RGB(A) and gray+alpha PNGs to 8 bits, i.e. scales them correctly.)
            return to_dtype(to_image(image.convert("RGB")), torch.float32, scale=True)
    except ImageFileError:
        raise
    except Exception as error:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise ImageFileError(f"{path}: {_reason(path, error)}") from error


def _reason(path: str, error: Exception) -> str:
    """A short reason why ``path`` could not be read."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    text = str(error).replace(f"'{path}'", "").strip()
    return f"cannot be decoded as an image ({type(error).__name__}: {text})"


# --------------------------------------------------------------------------------------------------------------
# Scanning many files
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What one full decode of an image file found.

    Attributes:
        path: The file.
        mode: Pillow mode (``"L"``, ``"RGB"``, ``"I;16"``, ...), ``None`` if unreadable.
        size: ``(width, height)``, ``None`` if unreadable.
        extrema: Lowest and highest raw value over the colour channels (alpha excluded).
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


_CACHE: dict[str, tuple[tuple[int, int], ImageInfo]] = {}  # path -> ((size, mtime_ns), info)
_LOGGED: set[str] = set()  # warnings already logged in this process


def inspect_image(path: str | Path) -> ImageInfo:
    """Decode one file fully and summarise it; never raises for a bad file.

    The result is cached per path and file size / modification time, so scanning the same dataset again
    (fit, then test, then predict) costs one ``stat`` per file.

    Args:
        path: The image file.

    Returns:
        ImageInfo: Mode, size, value range, alpha, or the reason it cannot be read.
    """
    path = str(path)
    try:
        stat = os.stat(path)
    except OSError as error:
        reason = "file not found" if isinstance(error, FileNotFoundError) else f"cannot be opened ({error})"
        return ImageInfo(path, error=reason)
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    info = _inspect_uncached(path)
    _CACHE[path] = (key, info)
    return info


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
            return (f"{mode} image with values {low:g}..{high:g}: anomalib's reader clips it at 255. Read it with "
                    "anomalib_salad.image_io.CheckedFolder (CLI: --data anomalib_salad.image_io.CheckedFolder, "
                    "--data.bit_depth for 12-bit data) or convert it to 8-bit first")
        full_scale = _full_scale(mode, bit_depth)
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > full_scale:
            limit = f"bit_depth={bit_depth}" if bit_depth and mode != "F" else mode
            return (f"values {low:g}..{high:g} do not fit {limit} (0..{full_scale:g}); set bit_depth to the bits the "
                    "file stores, or window and rescale it to unsigned 8/16-bit first")
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
    dark = [i for i in readable
            if i.mode != "F" and i.extrema[0] < i.extrema[1] < _full_scale(i.mode, bit_depth) * DARK_FRACTION]
    dark_8bit = [i for i in dark if i.mode not in HIGH_BIT_DEPTH_MODES]
    if dark_8bit:
        top = max(i.extrema[1] for i in dark_8bit)
        groups.append(("dark", f"look nearly black: no pixel above {top:g} of 255 (check the export's windowing)",
                       dark_8bit))
    dark_16bit = [i for i in dark if i.mode in HIGH_BIT_DEPTH_MODES]
    if dark_16bit:
        top = max(i.extrema[1] for i in dark_16bit)
        hint = _bits_hint(top) if bit_depth is None else ""
        groups.append(("dark", f"are 16-bit files read as 0..{_full_scale('I;16', bit_depth):g} but no pixel exceeds "
                       f"{top:g}, so they look nearly black to the model{hint}", dark_16bit))
    constant = [i for i in readable if i.extrema[0] == i.extrema[1]]
    if constant:
        groups.append(("constant", "are constant: every pixel has the same value (an empty export?)", constant))
    translucent = [i for i in readable if i.translucent]
    if translucent:
        groups.append(("alpha", "have transparent pixels; the alpha channel is ignored and the stored colour is used",
                       translucent))
    small = [i for i in readable if min_side and min(i.size) * 2 < min_side]
    if small:
        groups.append(("small", f"are smaller than half the {min_side}x{min_side} network input, so upscaled more "
                       "than 2x (thumbnails?)", small))
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


def scan_image_files(paths: Iterable[str | Path], threads: int | None = None) -> list[ImageInfo]:
    """:func:`inspect_image` for every file, in threads (Pillow decodes without the GIL).

    Args:
        paths: The image files.
        threads: Decoding threads. Defaults to ``min(8, os.cpu_count())``.

    Returns:
        list[ImageInfo]: One entry per file, in order.
    """
    paths = [str(p) for p in paths]
    threads = threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(inspect_image, paths))
    return [inspect_image(p) for p in paths]


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

    Returns:
        list[ImageInfo]: One entry per file, in order.

    Raises:
        ImageFileError: If any file cannot be read, or would be clipped, or does not fit ``bit_depth``.
    """
    bit_depth = _check_bit_depth(bit_depth)
    infos = scan_image_files(paths, threads)
    problems = image_file_problems(infos, bit_depth, reads_high_bit_depth)
    if problems:
        raise _error(problems, len(infos), what)
    _log_warnings(infos, bit_depth, min_side, what)
    return infos


# --------------------------------------------------------------------------------------------------------------
# anomalib datasets and datamodule that read through read_image_tensor
# --------------------------------------------------------------------------------------------------------------


class CheckedFolderDataset(FolderDataset):
    """anomalib's ``FolderDataset`` reading images with :func:`read_image_tensor` (16-bit aware, names files).

    Args:
        *args: ``FolderDataset`` arguments.
        bit_depth: Bits stored per pixel in 16-bit grayscale files. Defaults to ``None`` (16).
        **kwargs: ``FolderDataset`` keyword arguments.
    """

    reads_high_bit_depth = True

    def __init__(self, *args, bit_depth: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bit_depth = _check_bit_depth(bit_depth)

    def __getitem__(self, index: int) -> ImageItem:
        """``AnomalibDataset.__getitem__`` with the image read by :func:`read_image_tensor`."""
        sample = self.samples.iloc[index]
        image_path, mask_path, label_index = sample.image_path, sample.mask_path, sample.label_index
        image = read_image_tensor(image_path, self.bit_depth)
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


class CheckedPredictDataset(PredictDataset):
    """anomalib's ``PredictDataset`` (an image or a folder) reading with :func:`read_image_tensor`.

    Pass it as ``Engine.predict(model, dataset=CheckedPredictDataset(path, bit_depth=12))``.

    Args:
        path: An image file or a folder of images.
        bit_depth: Bits stored per pixel in 16-bit grayscale files. Defaults to ``None`` (16).
        check_files: Scan all files now with :func:`check_image_files`. Defaults to ``True``.
        **kwargs: ``PredictDataset`` keyword arguments (``transform``).
    """

    reads_high_bit_depth = True

    def __init__(self, path: str | Path, bit_depth: int | None = None, check_files: bool = True, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.bit_depth = _check_bit_depth(bit_depth)
        self.files_checked = check_files
        if check_files:
            check_image_files(self.image_filenames, self.bit_depth, what=f"images in {path}")

    def __getitem__(self, index: int) -> ImageItem:
        """The image at ``index``, read by :func:`read_image_tensor`."""
        path = self.image_filenames[index]
        image = read_image_tensor(path, self.bit_depth)
        if self.transform:
            image = self.transform(image)
        return ImageItem(image=image, image_path=str(path))


class CheckedFolder(Folder):
    """anomalib's ``Folder`` datamodule that reads 16-bit files correctly and checks every file at setup.

    Every image of every split is decoded once when the datamodule is set up, and an :class:`ImageFileError`
    names each unreadable file before training starts (anomalib would fail at the first batch holding it).
    Images are read by :func:`read_image_tensor`: 8-bit files exactly as anomalib reads them, 16-bit grayscale
    files divided by ``2**bit_depth - 1``.

    Args:
        *args: ``anomalib.data.Folder`` arguments (``name``, ``normal_dir``, ``root``, ``abnormal_dir``, ...).
        bit_depth: Bits stored per pixel in 16-bit grayscale files, e.g. ``12`` for 12-bit medical exports in
            16-bit PNGs; ignored for 8-bit files. ``None`` divides by 65535. Defaults to ``None``.
        check_files: Scan all files at setup. Defaults to ``True``.
        **kwargs: ``anomalib.data.Folder`` keyword arguments.

    Example:
        >>> datamodule = CheckedFolder(name="ct", root="ct_pngs", normal_dir="train/normal",
        ...                            abnormal_dir="test/abnormal", bit_depth=12)  # doctest: +SKIP
    """

    def __init__(self, *args, bit_depth: int | None = None, check_files: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bit_depth = _check_bit_depth(bit_depth)
        self.check_files = check_files

    def _setup(self, _stage: str | None = None) -> None:
        # Folder._setup with the checked dataset class; the val split is a deep copy of it, so it reads alike.
        folder_args = {"name": self.name, "root": self.root, "normal_dir": self.normal_dir,
                       "abnormal_dir": self.abnormal_dir, "normal_test_dir": self.normal_test_dir,
                       "mask_dir": self.mask_dir, "extensions": self.extensions, "bit_depth": self.bit_depth}
        self.train_data = CheckedFolderDataset(split=Split.TRAIN, **folder_args)
        self.test_data = CheckedFolderDataset(split=Split.TEST, **folder_args)
        if self.check_files:
            paths = [*self.train_data.samples.image_path, *self.test_data.samples.image_path]
            check_image_files(paths, self.bit_depth, what=f"images of dataset {self.name!r}")
            self.train_data.files_checked = self.test_data.files_checked = True  # the val split copies test_data


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
    """Image files of an anomalib dataset (``samples.image_path``) or ``PredictDataset``, else ``None``."""
    samples = getattr(dataset, "samples", None)
    if samples is not None and "image_path" in getattr(samples, "columns", ()):
        return [str(p) for p in samples.image_path]
    filenames = getattr(dataset, "image_filenames", None)
    return [str(p) for p in filenames] if filenames is not None else None


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
            infos = scan_image_files(paths, self.threads)
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
