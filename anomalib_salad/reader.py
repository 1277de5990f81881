"""The one image reader of anomalib-salad: PNG/JPEG/TIFF, DICOM and NIfTI to float32 RGB in ``[0, 1]``.

Training, validation and ``anomalib predict`` (through :mod:`anomalib_salad.image_io`), the exported-model
scoring path (:mod:`anomalib_salad.deploy`, ``salad-score``) and ``examples/figures.py`` all read images here,
so a pixel gets the same value wherever it is read. This module imports only NumPy and Pillow at load time;
pydicom and nibabel are imported on the first DICOM or NIfTI file. It imports neither torch nor anomalib.

Every image comes out as ``(H, W, 3)`` float32 in ``[0, 1]`` (grayscale repeated to three channels, as
anomalib's datasets deliver it; the model converts back to one channel). The rules:

* **PNG, JPEG, BMP, WebP, TIFF** (Pillow). 8-bit files (grayscale, RGB, palette; alpha is dropped) are
  ``uint8 * (1 / 255)``, bit-identical to ``anomalib.data.utils.read_image``. 16/32-bit integer grayscale is
  divided by ``2**bit_depth - 1`` (``bit_depth`` given by the user, 16 by default), never clipped; values
  above that are an error. Float images must already lie in ``[0, 1]``.
* **DICOM** (pydicom; suffix ``.dcm``/``.dicom``, or any file with the ``DICM`` preamble). The stored values
  (1-16 bits, signed or not, any transfer syntax that an installed pydicom plugin decodes: with the declared
  pylibjpeg plugins that is RLE, JPEG baseline and extended (8 and 12 bit), JPEG lossless (process 14, also
  selection value 1), JPEG-LS lossless and near-lossless, JPEG 2000 and HTJ2K) go through the
  modality LUT (rescale slope/intercept or a Modality LUT Sequence), then one VOI step chosen by ``window``:
  ``"file"`` (default) uses the file's VOI LUT Sequence or its first Window Center/Width (with its VOI LUT
  Function), and the full stored range when it has neither; ``"range"`` always uses the full stored range
  ``[0, 2**BitsStored - 1]`` (signed: centred on 0) mapped through the modality LUT; a preset name
  (:data:`WINDOW_PRESETS`, e.g. ``"lung"``, ``"brain"``) or ``(center, width)`` windows the modality values
  (e.g. Hounsfield units). The result is scaled to ``[0, 1]`` over the VOI step's output range, and
  ``MONOCHROME1`` (white is low) is inverted so that bright means dense everywhere. Colour files
  (RGB/YBR, which pydicom converts to RGB; palette colour through its LUT) are divided by
  ``2**BitsStored - 1``. Multi-frame files give one image per frame, ``path:frame:k``; per-frame rescale and
  window of enhanced multi-frame objects (functional groups) are honoured.
* **NIfTI** (nibabel; ``.nii``, ``.nii.gz``). A 3-D volume (a 4-D one only with one volume) is normalised per
  volume: its ``percentiles`` (default 0.5 and 99.5) over the foreground voxels (those above the volume's
  minimum) map to 0 and 1, values outside are clipped, non-finite voxels become 0. It is cut into 2-D slices
  along ``axis`` (an axis of the file's voxel array; 2 is the slice axis of most axial scans), each turned by
  ``np.rot90`` so that the second voxel axis points up. A slice is skipped unless at least ``min_tissue``
  (default 1 %) of its pixels exceed ``tissue_level`` (default 0.05) after normalisation: this drops the
  empty slices above and below the anatomy. Each slice is named ``path:axis:index`` in every output.

Bad input raises :class:`ImageReadError` naming the file and the problem (for DICOM pixel data that cannot be
decoded: the transfer syntax, and the plugin to install or how to convert the file).
:func:`iter_scan_images` also tells the scan the images belong to (:class:`ScanInfo`: a DICOM series by its
Series Instance UID, a NIfTI volume or an image file by its path), from UIDs and paths only.

Example:
    >>> from anomalib_salad.reader import ReaderConfig, read_image, read_images
    >>> image = read_image("scan.dcm", ReaderConfig(window="lung"))  # doctest: +SKIP
    >>> [item for item, _ in read_images("brain.nii.gz")][:2]  # doctest: +SKIP
    ['brain.nii.gz:2:31', 'brain.nii.gz:2:32']
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "WINDOW_PRESETS",
    "ImageReadError",
    "ImageRef",
    "ReaderConfig",
    "ScanInfo",
    "ScanKind",
    "check_bit_depth",
    "clear_cache",
    "decode_reason",
    "file_format",
    "iter_images",
    "iter_scan_images",
    "list_files",
    "list_items",
    "parse_window",
    "pil_to_array",
    "read_image",
    "read_images",
    "slice_to_plane",
    "uint8_to_float",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES

# (center, width) in modality units (Hounsfield units for CT); common radiology settings.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (32.0, 8.0),
    "soft_tissue": (50.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}

# Pillow modes holding more than 8 bits per grayscale pixel; convert("RGB") would clip them at 255.
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ONE_OVER_255 = np.float32(1.0 / 255.0)  # torchvision's to_dtype(scale=True) multiplies by this: bit-identical
_ID_PATTERN = re.compile(r"^(?P<path>.+):(?P<axis>frame|[0-9]):(?P<index>[0-9]+)$")


class ImageReadError(ValueError):
    """A file cannot be read as an image; ``str()`` is ``"<path>: <reason>"``.

    Args:
        path: The file (or item id, ``path:axis:index``).
        reason: What is wrong, for a person to act on.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------


def check_bit_depth(bit_depth: Any) -> int | None:
    """``bit_depth`` if it is ``None`` or an int in ``[1, 16]``.

    Raises:
        ValueError: Otherwise (also for ``True`` and ``12.0``), naming the value.
    """
    if bit_depth is None:
        return None
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not 1 <= bit_depth <= 16:
        msg = f"bit_depth must be an int in [1, 16] (bits stored per pixel of 16-bit files) or None, got {bit_depth!r}"
        raise ValueError(msg)
    return bit_depth


def parse_window(window: Any) -> str | tuple[float, float]:
    """Normalise a ``window`` setting: ``"file"``, ``"range"``, a preset name or ``(center, width)``.

    Args:
        window: ``None`` or ``"file"``, ``"range"``, a key of :data:`WINDOW_PRESETS`, a pair of numbers, or a
            string ``"center,width"`` (as typed on a command line).

    Returns:
        str | tuple[float, float]: ``"file"``, ``"range"`` or ``(center, width)``.

    Raises:
        ValueError: For anything else, or a width that is not positive.
    """
    if window is None:
        return "file"
    if isinstance(window, str):
        text = window.strip().lower()
        if text in {"file", "range"}:
            return text
        if text in WINDOW_PRESETS:
            return WINDOW_PRESETS[text]
        parts = re.split(r"[,/ ]+", text)
        try:
            window = [float(part) for part in parts]
        except ValueError:
            window = None
    if isinstance(window, Sequence) and len(window) == 2 and not isinstance(window, str):
        center, width = (float(value) for value in window)
        if math.isfinite(center) and math.isfinite(width) and width > 0:
            return (center, width)
    msg = (
        f"window must be 'file', 'range', one of {sorted(WINDOW_PRESETS)} or (center, width) with width > 0, "
        f"e.g. '40,80'; got {window!r}"
    )
    raise ValueError(msg)


@dataclass(frozen=True)
class ReaderConfig:
    """How files are turned into images; pass the same settings to training and to scoring.

    Attributes:
        bit_depth: Bits stored per pixel in 16-bit PNG/TIFF grayscale files (e.g. ``12``); ``None`` means the
            container's 16 bits. Not used for DICOM, whose header says it.
        require_bit_depth: Refuse 16/32-bit PNG/TIFF files while ``bit_depth`` is ``None`` instead of reading
            them as 16-bit. The deployment path sets it: a model trained with ``bit_depth=12`` would otherwise
            see every pixel 16x darker, silently.
        window: DICOM VOI: ``"file"``, ``"range"``, a preset name or ``(center, width)`` (see the module
            docstring).
        axis: NIfTI: voxel-array axis (0, 1 or 2) along which volumes are cut into slices.
        percentiles: NIfTI: foreground percentiles mapped to 0 and 1.
        tissue_level: NIfTI: normalised value above which a pixel counts as tissue.
        min_tissue: NIfTI: fraction of tissue pixels below which a slice is skipped; 0 keeps every slice.
    """

    bit_depth: int | None = None
    require_bit_depth: bool = False
    window: str | tuple[float, float] = "file"
    axis: int = 2
    percentiles: tuple[float, float] = (0.5, 99.5)
    tissue_level: float = 0.05
    min_tissue: float = 0.01

    def __post_init__(self) -> None:
        check_bit_depth(self.bit_depth)
        object.__setattr__(self, "window", parse_window(self.window))
        if isinstance(self.axis, bool) or self.axis not in {0, 1, 2}:
            msg = f"axis must be 0, 1 or 2 (the voxel-array axis to slice NIfTI volumes along), got {self.axis!r}"
            raise ValueError(msg)
        low, high = (float(value) for value in self.percentiles)
        if not 0 <= low < high <= 100:
            msg = f"percentiles must be (low, high) with 0 <= low < high <= 100, got {self.percentiles!r}"
            raise ValueError(msg)
        object.__setattr__(self, "percentiles", (low, high))
        for name in ("tissue_level", "min_tissue"):
            value = float(getattr(self, name))
            if not 0 <= value <= 1:
                msg = f"{name} must be in [0, 1], got {getattr(self, name)!r}"
                raise ValueError(msg)
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> ReaderConfig:
        """A copy with some settings changed (``None`` values leave a setting as it is)."""
        return dataclasses.replace(self, **{key: value for key, value in changes.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        values = dataclasses.asdict(self)
        values["window"] = list(self.window) if isinstance(self.window, tuple) else self.window
        values["percentiles"] = list(self.percentiles)
        return values

    @classmethod
    def from_json(cls, path: str | Path) -> ReaderConfig:
        """Read settings written by :meth:`to_dict` (unknown keys are an error, so typos do not pass silently).

        Args:
            path: A JSON file with some of the fields of this class.

        Returns:
            ReaderConfig: The settings.
        """
        values = json.loads(Path(path).read_text())
        unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            msg = f"{path}: unknown reader settings {unknown}"
            raise ValueError(msg)
        if "percentiles" in values:
            values["percentiles"] = tuple(values["percentiles"])
        return cls(**values)


DEFAULT = ReaderConfig()


# --------------------------------------------------------------------------------------------------------------
# Names of files and of the 2-D images in them
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """One 2-D image: a whole file, a DICOM frame or a NIfTI slice.

    Attributes:
        path: The file.
        axis: ``None`` for a whole file, ``"frame"`` for a DICOM frame, ``"0"``/``"1"``/``"2"`` for a NIfTI slice.
        index: Frame or slice index (0-based), ``None`` for a whole file.
    """

    path: str
    axis: str | None = None
    index: int | None = None

    @property
    def id(self) -> str:
        """``path`` or ``path:axis:index``: the name used in every output."""
        return self.path if self.axis is None else f"{self.path}:{self.axis}:{self.index}"

    @classmethod
    def parse(cls, item: str | Path | ImageRef) -> ImageRef:
        """Split ``path:axis:index`` (``axis`` ``frame`` or a digit); anything else is a whole file."""
        if isinstance(item, ImageRef):
            return item
        text = str(item)
        match = _ID_PATTERN.match(text)
        if match is None or os.path.exists(text):
            return cls(text)
        return cls(match["path"], match["axis"], int(match["index"]))


ScanKind = Literal["dicom_series", "dicom_file", "nifti_volume", "image"]
# The only DICOM elements a scan is told by: UIDs and the modality, never a patient's name, ID or dates.
_SCAN_ELEMENTS = ("SeriesInstanceUID", "StudyInstanceUID", "Modality")


@dataclass(frozen=True)
class ScanInfo:
    """The scan a file's images belong to, named by UIDs and paths only (no patient data).

    Attributes:
        kind: ``"dicom_series"`` (a DICOM file with a Series Instance UID: all files and frames of that series
            form one scan, wherever they lie), ``"dicom_file"`` (a DICOM file without one), ``"nifti_volume"``
            or ``"image"`` (a PNG/JPEG/TIFF file).
        key: The Series Instance UID of a series, else the file path.
        study_uid: The Study Instance UID of a DICOM file, else ``""``.
        modality: The Modality of a DICOM file (``"CT"``, ``"MR"``, ...), else ``""``.
    """

    kind: ScanKind
    key: str
    study_uid: str = ""
    modality: str = ""


def file_format(path: str | Path) -> Literal["image", "dicom", "nifti"]:
    """``"dicom"``, ``"nifti"`` or ``"image"`` (Pillow) from the name, or the DICOM preamble of a file without one.

    Args:
        path: A file.

    Returns:
        str: The format the file is read as.
    """
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    return "dicom" if _has_dicom_preamble(path) else "image"


def _has_dicom_preamble(path: str | Path) -> bool:
    """The 128-byte preamble followed by ``DICM`` (PS3.10 7.1); what ``pydicom.misc.is_dicom`` checks."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def list_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Readable files in ``folder``: known suffixes, and files without a suffix that carry the DICOM preamble.

    Hidden files and folders (names starting with ``.``) are left out.

    Args:
        folder: A folder.
        recursive: Descend into sub-folders. Defaults to ``True``.

    Returns:
        list[Path]: The files, sorted by path.
    """
    folder = Path(folder)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for path in candidates:
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        name = path.name.lower()
        if name.endswith(SUPPORTED_SUFFIXES) or ("." not in name and _has_dicom_preamble(path)):
            files.append(path)
    return sorted(files)


def list_items(path: str | Path, config: ReaderConfig | None = None) -> list[str]:
    """The ids of the 2-D images in one file (see :class:`ImageRef`), without decoding DICOM pixel data.

    NIfTI volumes are read (once per process; the per-volume statistics are cached) to apply the tissue rule.

    Args:
        path: A file.
        config: Reader settings. Defaults to :class:`ReaderConfig` ``()``.

    Returns:
        list[str]: ``[path]`` for a single image; ``path:frame:k`` per frame; ``path:axis:index`` per kept slice.

    Raises:
        ImageReadError: If the file cannot be read.
    """
    config = config or DEFAULT
    path = str(path)
    kind = file_format(path)
    if kind == "dicom":
        frames = _dicom_frame_count(path)
        return [path] if frames == 1 else [f"{path}:frame:{k}" for k in range(frames)]
    if kind == "nifti":
        stats = _nifti_stats(path, config)
        return [f"{path}:{config.axis}:{index}" for index in stats.kept[_tissue_key(config)]]
    return [path]


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def read_image(item: str | Path | ImageRef, config: ReaderConfig | None = None) -> np.ndarray:
    """Read one 2-D image: a file, ``path:frame:k`` of a multi-frame DICOM, or ``path:axis:index`` of a volume.

    Args:
        item: A file or an item id.
        config: Reader settings. Defaults to :class:`ReaderConfig` ``()``.

    Returns:
        np.ndarray: ``(H, W, 3)`` float32 in ``[0, 1]``.

    Raises:
        ImageReadError: If the file is missing or unreadable, its values do not fit the settings, or it holds
            several images and ``item`` does not say which.
    """
    config = config or DEFAULT
    ref = ImageRef.parse(item)
    _check_exists(ref.path)
    kind = file_format(ref.path)
    if kind == "dicom":
        if ref.axis not in {None, "frame"}:
            raise ImageReadError(ref.id, "a DICOM file has frames, not slices: use path:frame:<index>")
        return next(_read_dicom(ref, config))[1]
    if kind == "nifti":
        if ref.axis is None or ref.axis == "frame":
            raise ImageReadError(
                ref.path,
                f"is a NIfTI volume: read one slice as '{ref.path}:<axis>:<index>' or "
                "all kept slices with read_images()",
            )
        return _read_nifti_slice(ref, config)
    if ref.axis is not None:
        raise ImageReadError(ref.id, "only DICOM frames and NIfTI slices take ':axis:index'")
    return _read_pillow(ref.path, config)


def read_images(path: str | Path, config: ReaderConfig | None = None) -> list[tuple[str, np.ndarray]]:
    """Every 2-D image of one file, decoding it once: frames of a DICOM file, kept slices of a volume.

    Args:
        path: A file.
        config: Reader settings. Defaults to :class:`ReaderConfig` ``()``.

    Returns:
        list[tuple[str, np.ndarray]]: ``(id, (H, W, 3) float32 image)`` pairs, in order.

    Raises:
        ImageReadError: If the file cannot be read.
    """
    return list(iter_images(path, config))


def iter_images(path: str | Path, config: ReaderConfig | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """:func:`read_images` lazily: the file is decoded now, each image is converted when it is taken.

    A large volume or multi-frame file then holds its voxels once, not also every slice as RGB float.

    Args:
        path: A file.
        config: Reader settings. Defaults to :class:`ReaderConfig` ``()``.

    Returns:
        Iterator[tuple[str, np.ndarray]]: ``(id, (H, W, 3) float32 image)`` pairs, in order.

    Raises:
        ImageReadError: If the file cannot be read (now), or one of its images cannot be converted (when taken).
    """
    return iter_scan_images(path, config)[1]


def iter_scan_images(
    path: str | Path, config: ReaderConfig | None = None
) -> tuple[ScanInfo, Iterator[tuple[str, np.ndarray]]]:
    """:func:`iter_images` with the scan the images belong to (a DICOM series, a NIfTI volume or the file itself).

    The DICOM header is the one read for decoding: the scan costs no second read of the file.

    Args:
        path: A file.
        config: Reader settings. Defaults to :class:`ReaderConfig` ``()``.

    Returns:
        tuple[ScanInfo, Iterator[tuple[str, np.ndarray]]]: The scan, and ``(id, (H, W, 3) float32 image)`` pairs.

    Raises:
        ImageReadError: If the file cannot be read (now), or one of its images cannot be converted (when taken).
    """
    config = config or DEFAULT
    path = str(path)
    _check_exists(path)
    kind = file_format(path)
    if kind == "dicom":
        return _open_dicom(ImageRef(path), config, all_frames=True)
    if kind == "nifti":
        return ScanInfo("nifti_volume", path), _read_nifti_volume(path, config)
    return ScanInfo("image", path), iter([(path, _read_pillow(path, config))])


def slice_to_plane(image: np.ndarray) -> np.ndarray:
    """A 2-D array laid out as a NIfTI slice image (e.g. its anomaly map) in the voxel order of its plane.

    Undoes the ``np.rot90`` of the reader: ``slice_to_plane(image[..., 0])`` of the slice ``path:axis:index`` is
    the normalised ``volume[..., index, ...]`` (``index`` on ``axis``), so maps can be stacked back into a volume.

    Args:
        image: ``(H, W)`` as the slice image is laid out.

    Returns:
        np.ndarray: ``(W, H)``, a view.
    """
    return np.rot90(image, -1)


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise ImageReadError(path, "file not found" if not os.path.exists(path) else "not a file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=-1)


# ----- Pillow -------------------------------------------------------------------------------------------------


def pil_to_array(image: Image.Image, config: ReaderConfig | None = None, what: str = "PIL image") -> np.ndarray:
    """A decoded Pillow image by this module's bit-depth rule (see the module docstring).

    Args:
        image: A loaded Pillow image.
        config: Reader settings (``bit_depth``, ``require_bit_depth``). Defaults to :class:`ReaderConfig` ``()``.
        what: How to name the image in errors (its file). Defaults to ``"PIL image"``.

    Returns:
        np.ndarray: ``(H, W, 3)`` float32 in ``[0, 1]``.

    Raises:
        ImageReadError: If a 16/32-bit image's values do not fit ``bit_depth``, a float image leaves ``[0, 1]``,
            or a 16-bit image comes without ``bit_depth`` while ``require_bit_depth`` is set.
    """
    config = config or DEFAULT
    mode = image.mode
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise ImageReadError(
                what,
                f"floating-point image with values in [{low:g}, {high:g}]; only float images "
                "in [0, 1] can be read. Window and rescale it (e.g. to 8 or 16-bit) first.",
            )
        return _gray_to_rgb(values)
    if mode in HIGH_BIT_DEPTH_MODES:
        if config.require_bit_depth and config.bit_depth is None:
            raise ImageReadError(
                what,
                f"16/32-bit grayscale image (Pillow mode {mode!r}) and no bit depth given: "
                "pass the bit_depth the model was trained with (e.g. --bit-depth 12 for 12-bit "
                "data, 16 for the full range); it cannot be guessed from the pixels",
            )
        values = np.asarray(image)
        full_scale = float(2 ** (config.bit_depth or 16) - 1)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > full_scale:
            # Signed (e.g. Hounsfield units) or wider than declared: clipping would silently destroy it.
            bits = f"bit_depth={config.bit_depth}" if config.bit_depth else "16 bits"
            raise ImageReadError(
                what,
                f"pixel values in [{low}, {high}] do not fit {bits} (0..{full_scale:.0f}); "
                "set bit_depth to the bits the file stores, or window and rescale it to unsigned "
                "8/16-bit first.",
            )
        return _gray_to_rgb(values.astype(np.float32) / np.float32(full_scale))
    # anomalib's own conversion, so 8-bit files read identically with or without this module. (Pillow already
    # reduces 16-bit RGB(A) and gray+alpha PNGs to 8 bits, i.e. scales them correctly.)
    return uint8_to_float(np.asarray(image.convert("RGB")))


def uint8_to_float(values: np.ndarray) -> np.ndarray:
    """``uint8`` values as float32 in ``[0, 1]``, bit-identical to torchvision's ``to_dtype(..., scale=True)``.

    Args:
        values: A uint8 array.

    Returns:
        np.ndarray: float32, ``values * float32(1 / 255)``.
    """
    return values.astype(np.float32) * _ONE_OVER_255


def _read_pillow(path: str, config: ReaderConfig) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_array(image, config, path)
    except ImageReadError:
        raise
    except Exception as error:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise ImageReadError(path, decode_reason(path, error)) from error


def decode_reason(path: str, error: Exception) -> str:
    """Why Pillow could not decode ``path``: the error's type and message without the repeated path."""
    text = str(error).replace(f"'{path}'", "").strip()
    return f"cannot be decoded as an image ({type(error).__name__}: {text})"


# ----- DICOM --------------------------------------------------------------------------------------------------

# Elements of the Modality LUT and VOI LUT modules that pydicom's processing functions read.
_LUT_ELEMENTS = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)
# Where enhanced multi-frame objects keep them per frame (PS3.3 C.7.6.16.2.9 and C.7.6.16.2.10).
_FUNCTIONAL_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def _pydicom() -> Any:
    try:
        import pydicom  # noqa: PLC0415  (only DICOM users pay for the import)
    except ImportError as error:  # pragma: no cover - a declared dependency
        msg = "Reading DICOM needs pydicom: pip install pydicom"
        raise ImportError(msg) from error
    return pydicom


def _dcmread(path: str, **kwargs: Any) -> Any:
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, **kwargs)
    except pydicom.errors.InvalidDicomError as error:
        raise ImageReadError(path, f"not a DICOM file ({error})") from error
    except Exception as error:  # truncated files raise EOFError, struct.error, ValueError, ...
        raise ImageReadError(path, f"cannot be read as DICOM ({type(error).__name__}: {error})") from error


def _dicom_frame_count(path: str) -> int:
    ds = _dcmread(path, stop_before_pixels=True)
    _check_dicom_image(path, ds)
    return max(1, int(ds.get("NumberOfFrames", 1) or 1))


def _check_dicom_image(path: str, ds: Any) -> None:
    if "Rows" not in ds or "Columns" not in ds or "PhotometricInterpretation" not in ds:
        sop = ds.get("SOPClassUID")
        what = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise ImageReadError(path, f"DICOM object without an image{what}: no Rows/Columns/Photometric Interpretation")


# What anomalib-salad installs for compressed DICOM (its declared dependencies); named when a decoder is missing.
_PLUGINS_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"
# For transfer syntaxes that no pydicom plugin decodes: GDCM reads most of them.
_CONVERT_HINT = (
    "convert the file to an uncompressed transfer syntax (Explicit VR Little Endian) with a tool that reads it, "
    "e.g. GDCM's 'gdcmconv --raw IN OUT'"
)


def _decode_failure(path: str, ds: Any, error: Exception) -> ImageReadError:
    """Why pydicom could not decode the pixel data: the transfer syntax and what would decode it."""
    pydicom = _pydicom()
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    detail = " ".join(str(error).split()) or type(error).__name__
    if syntax is None:
        return ImageReadError(path, f"DICOM pixel data cannot be read ({type(error).__name__}: {detail})")
    try:
        compressed = syntax.is_compressed
    except ValueError:  # a UID this pydicom does not know as a transfer syntax, e.g. one added to DICOM later
        return ImageReadError(
            path,
            f"DICOM pixel data in transfer syntax {syntax} cannot be decoded: pydicom {pydicom.__version__} does "
            f"not know this transfer syntax; a newer pydicom may decode it, or {_CONVERT_HINT}",
        )
    if not compressed:
        return ImageReadError(path, f"DICOM pixel data cannot be read ({type(error).__name__}: {detail})")
    name = f"{syntax.name} ({syntax})"
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:  # e.g. MPEG-2/H.264 video, JPIP references
        return ImageReadError(
            path,
            f"DICOM pixel data in {name} cannot be decoded: pydicom {pydicom.__version__} has no decoder for this "
            f"transfer syntax; {_CONVERT_HINT}",
        )
    missing = "; ".join(decoder.missing_dependencies)
    if not decoder.is_available:
        return ImageReadError(
            path,
            f"DICOM pixel data in {name} cannot be decoded: no decoder plugin for it is "
            f"installed. Install one of: {missing} (anomalib-salad's own: {_PLUGINS_HINT})",
        )
    hint = f"; other plugins that may decode it: {missing}" if missing else ""
    return ImageReadError(
        path,
        f"DICOM pixel data in {name} could not be decoded by the installed plugin(s) "
        f"{list(decoder.available_plugins)} ({type(error).__name__}: {detail}){hint}",
    )


def _lut_view(ds: Any, frame: int) -> Any:
    """A small dataset with the LUT elements that apply to ``frame`` (top level, else functional groups)."""
    pydicom = _pydicom()
    view = pydicom.Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # the endianness of OW LUT data
    for keyword in _LUT_ELEMENTS:
        if keyword in ds:
            view[keyword] = ds[keyword]
    groups = [ds.get("SharedFunctionalGroupsSequence")]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame)  # per-frame values override shared ones
    for index, group in enumerate(groups):
        item = group[frame if index == 1 else 0] if group else None
        for sequence, keywords in _FUNCTIONAL_GROUPS.items():
            nested = item.get(sequence) if item is not None else None
            for keyword in keywords if nested else ():
                if keyword in nested[0] and keyword not in ds:
                    view[keyword] = nested[0][keyword]
    return view


def _voi(values: np.ndarray, view: Any, window: str | tuple[float, float]) -> np.ndarray:
    """The modality values after the VOI step, scaled to ``[0, 1]`` over that step's output range."""
    processing = _pydicom().pixels
    from pydicom.valuerep import DSfloat  # noqa: PLC0415

    if isinstance(window, tuple):
        view.WindowCenter, view.WindowWidth = (DSfloat(value, auto_format=True) for value in window)
        if "VOILUTSequence" in view:
            del view.VOILUTSequence  # an explicit window replaces the file's VOI
        if "VOILUTFunction" in view:
            del view.VOILUTFunction
        return _windowed(values, view)
    if window == "file" and view.get("VOILUTSequence"):
        descriptor = view.VOILUTSequence[0].LUTDescriptor
        # A LUT is indexed by integers: modality values from a rescale are rounded (PS3.3 C.11.2.1.1).
        indices = values if np.issubdtype(values.dtype, np.integer) else np.round(values).astype(np.int64)
        out = processing.apply_voi(indices, view)
        return out.astype(np.float64) / float(2 ** int(descriptor[2]) - 1)
    if window == "file" and view.get("WindowCenter") is not None and view.get("WindowWidth") is not None:
        return _windowed(values, view)
    # The full stored range, through the modality LUT: the same value in any file gives the same output.
    bits = int(view.BitsStored)
    signed = int(view.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = np.asarray(processing.apply_modality_lut(np.array([low, high]), view), dtype=np.float64)
    return (values.astype(np.float64) - ends[0]) / (ends[1] - ends[0])


def _windowed(values: np.ndarray, view: Any) -> np.ndarray:
    """Windowing by pydicom, scaled to ``[0, 1]`` by what it gives for -inf and +inf (its output range)."""
    processing = _pydicom().pixels
    try:
        out = processing.apply_windowing(values, view)
        ends = processing.apply_windowing(np.array([-np.inf, np.inf]), view)
    except ValueError as error:  # e.g. width < 1 for LINEAR, an unknown VOI LUT Function
        msg = f"invalid window ({error})"
        raise ValueError(msg) from error
    return (out - ends[0]) / (ends[1] - ends[0])


def _read_dicom(ref: ImageRef, config: ReaderConfig, all_frames: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    return _open_dicom(ref, config, all_frames)[1]


def _dicom_scan(path: str, ds: Any) -> ScanInfo:
    """The series of a DICOM file from its UIDs and Modality alone: no other element (no patient data) is read."""
    series, study, modality = (str(ds.get(keyword) or "").strip() for keyword in _SCAN_ELEMENTS)
    if series:
        return ScanInfo("dicom_series", series, study, modality)
    return ScanInfo("dicom_file", path, study, modality)  # Series Instance UID is Type 1, but not every file has it


def _open_dicom(
    ref: ImageRef, config: ReaderConfig, all_frames: bool = False
) -> tuple[ScanInfo, Iterator[tuple[str, np.ndarray]]]:
    """Decode now; convert each frame when it is taken. The scan comes from the same header."""
    pydicom = _pydicom()
    path = ref.path
    ds = _dcmread(path)
    _check_dicom_image(path, ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "DICOM file without pixel data")
    frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    if ref.index is not None and not 0 <= ref.index < frames:
        raise ImageReadError(ref.id, f"frame index out of range: the file has {frames} frame(s)")
    try:
        # The Dataset form: pydicom's path form trips over some valid encapsulated files. With an index, only
        # that frame is decoded.
        pixels = pydicom.pixels.pixel_array(ds, index=None if all_frames else ref.index)
    except Exception as error:  # plugins raise RuntimeError, NotImplementedError, ValueError, OSError, ...
        raise _decode_failure(path, ds, error) from error
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if all_frames:
        stack = pixels if frames > 1 else pixels[None]
        indices = list(range(frames))
    else:
        if ref.index is None and frames > 1:
            raise ImageReadError(
                path, f"has {frames} frames: read one as '{path}:frame:<index>' or all of them with read_images()"
            )
        stack, indices = pixels[None], [ref.index or 0]
    names = [path] if frames == 1 else [f"{path}:frame:{k}" for k in indices]
    return _dicom_scan(path, ds), _dicom_frames(names, stack, indices, ds, photometric, config)


def _dicom_frames(
    names: list[str], stack: np.ndarray, indices: list[int], ds: Any, photometric: str, config: ReaderConfig
) -> Iterator[tuple[str, np.ndarray]]:
    for name, frame, index in zip(names, stack, indices, strict=True):
        try:
            yield name, _dicom_frame(frame, ds, index, photometric, config)
        except ValueError as error:
            raise ImageReadError(name, str(error)) from error


def _dicom_frame(frame: np.ndarray, ds: Any, index: int, photometric: str, config: ReaderConfig) -> np.ndarray:
    processing = _pydicom().pixels
    if photometric in {"MONOCHROME1", "MONOCHROME2"}:
        if frame.ndim != 2:
            msg = f"{photometric} frame of shape {frame.shape}, expected (rows, columns)"
            raise ValueError(msg)
        view = _lut_view(ds, index)
        values = np.asarray(processing.apply_modality_lut(frame, view))
        image = np.clip(_voi(values, view, config.window), 0.0, 1.0)
        if photometric == "MONOCHROME1":
            image = 1.0 - image  # MONOCHROME1 shows low values white; bright means dense here, as in MONOCHROME2
        return _gray_to_rgb(image)
    if photometric == "PALETTE COLOR":
        rgb = processing.apply_color_lut(frame, ds)
        return (rgb.astype(np.float64) / float(np.iinfo(rgb.dtype).max)).astype(np.float32)
    if frame.ndim == 3 and frame.shape[-1] == 3:  # RGB, or YBR that pydicom has converted to RGB
        full_scale = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return np.clip(frame.astype(np.float64) / full_scale, 0.0, 1.0).astype(np.float32)
    msg = f"unsupported Photometric Interpretation {photometric!r} with frame shape {frame.shape}"
    raise ValueError(msg)


# ----- NIfTI --------------------------------------------------------------------------------------------------


@dataclass
class _VolumeStats:
    """What a volume's slices need besides their voxels: the normalisation and the kept slices per rule."""

    shape: tuple[int, int, int]
    low: float
    high: float
    kept: dict[tuple[int, float, float], list[int]]


_STATS: dict[tuple, _VolumeStats] = {}
_STATS_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the cached per-volume NIfTI statistics (they are also refreshed when a file changes)."""
    with _STATS_LOCK:
        _STATS.clear()


def _tissue_key(config: ReaderConfig) -> tuple[int, float, float]:
    return (config.axis, config.tissue_level, config.min_tissue)


def _nibabel_load(path: str) -> Any:
    try:
        import nibabel  # noqa: PLC0415  (only NIfTI users pay for the import)
    except ImportError as error:  # pragma: no cover - a declared dependency
        msg = "Reading NIfTI needs nibabel: pip install nibabel"
        raise ImportError(msg) from error
    try:
        return nibabel.load(path)
    except Exception as error:  # nibabel raises ImageFileError, gzip's BadGzipFile, EOFError, ...
        raise ImageReadError(path, f"cannot be read as NIfTI ({type(error).__name__}: {error})") from error


def _volume_shape(path: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ImageReadError(
            path,
            f"NIfTI image of shape {tuple(shape)}: expected a 3-D volume (a 4-D series must "
            "be split into its volumes first, e.g. with nibabel.funcs.four_to_three)",
        )
    return shape  # type: ignore[return-value]


def _voxels(image: Any, path: str, slicer: tuple = ()) -> np.ndarray:
    """Scaled voxel values (``scl_slope``/``scl_inter`` applied by nibabel) as float32, non-finite set to NaN."""
    try:
        proxy = image.dataobj
        values = np.array(proxy[slicer] if slicer else proxy, dtype=np.float32)  # a copy: memmaps are read-only
    except Exception as error:  # truncated .nii.gz: EOFError / zlib.error deep in the proxy
        raise ImageReadError(path, f"NIfTI voxel data cannot be read ({type(error).__name__}: {error})") from error
    if values.ndim == 4:
        values = values[..., 0]
    if values.ndim == 2:
        values = values[..., None]
    values[~np.isfinite(values)] = np.nan
    return values


def _stats_key(path: str, config: ReaderConfig) -> tuple:
    stat = os.stat(path)
    return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, config.percentiles)


def _compute_stats(path: str, volume: np.ndarray, config: ReaderConfig) -> _VolumeStats:
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        raise ImageReadError(path, "NIfTI volume holds no finite voxel")
    foreground = finite[finite > finite.min()]
    sample = foreground if foreground.size else finite
    low, high = (float(value) for value in np.percentile(sample, config.percentiles))
    if high <= low:  # a constant foreground (e.g. a binary mask): its full range instead
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        high = low + 1.0  # a constant volume: every voxel maps to 0
    return _VolumeStats(volume.shape, low, high, {})  # type: ignore[arg-type]


def _normalise(values: np.ndarray, stats: _VolumeStats) -> np.ndarray:
    scaled = (values - np.float32(stats.low)) / np.float32(stats.high - stats.low)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0).astype(np.float32, copy=False)


def _kept(normalised: np.ndarray, config: ReaderConfig) -> list[int]:
    moved = np.moveaxis(normalised, config.axis, 0)
    if config.min_tissue == 0:
        return list(range(moved.shape[0]))
    fractions = (moved > config.tissue_level).reshape(moved.shape[0], -1).mean(axis=1)
    return [int(index) for index in np.flatnonzero(fractions >= config.min_tissue)]


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """``volume``'s slice ``index`` along ``axis``, as a view (``np.take`` copies, 100x slower on big volumes)."""
    return volume[(slice(None),) * axis + (index,)]


def _slice_image(normalised_slice: np.ndarray) -> np.ndarray:
    return _gray_to_rgb(np.ascontiguousarray(np.rot90(normalised_slice)))


def _nifti_stats(path: str, config: ReaderConfig, volume: np.ndarray | None = None) -> _VolumeStats:
    """The cached statistics of a volume (reading it once if needed), with the kept slices for ``config``."""
    _check_exists(path)
    key, tissue = _stats_key(path, config), _tissue_key(config)
    with _STATS_LOCK:
        stats = _STATS.get(key)
    if stats is not None and tissue in stats.kept:
        return stats
    if volume is None:
        image = _nibabel_load(path)
        _volume_shape(path, image.shape)
        volume = _voxels(image, path)
    if stats is None:
        stats = _compute_stats(path, volume, config)
    stats.kept[tissue] = _kept(_normalise(volume, stats), config)
    if not stats.kept[tissue]:
        raise ImageReadError(
            path,
            f"no slice along axis {config.axis} has at least {config.min_tissue:.1%} of its "
            f"pixels above {config.tissue_level:g} after normalisation (an empty or constant "
            "volume?); lower min_tissue to keep such slices",
        )
    with _STATS_LOCK:
        _STATS[key] = stats
    return stats


def _read_nifti_volume(path: str, config: ReaderConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Decode and normalise now; cut each kept slice when it is taken."""
    image = _nibabel_load(path)
    _volume_shape(path, image.shape)
    volume = _voxels(image, path)
    stats = _nifti_stats(path, config, volume)
    normalised = _normalise(volume, stats)
    del volume
    kept = stats.kept[_tissue_key(config)]
    return ((f"{path}:{config.axis}:{index}", _slice_image(_plane(normalised, config.axis, index))) for index in kept)


def _read_nifti_slice(ref: ImageRef, config: ReaderConfig) -> np.ndarray:
    axis = int(ref.axis)  # type: ignore[arg-type]
    image = _nibabel_load(ref.path)
    shape = _volume_shape(ref.path, image.shape)
    if not 0 <= ref.index < shape[axis]:  # type: ignore[operator]
        raise ImageReadError(
            ref.id, f"slice index out of range: the volume has {shape[axis]} slices along axis {axis} (shape {shape})"
        )
    stats = _nifti_stats(ref.path, config.replace(axis=axis))
    if len(image.shape) == 3:
        # Only this slice is read (memory-mapped for .nii); the statistics of the whole volume are cached.
        slicer = tuple(ref.index if i == axis else slice(None) for i in range(3))
        values = _voxels(image, ref.path, slicer).reshape([n for i, n in enumerate(shape) if i != axis])
    else:
        values = _plane(_voxels(image, ref.path), axis, ref.index)
    return _slice_image(_normalise(values, stats))
