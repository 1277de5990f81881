"""What every format of the reader shares: its settings, its errors, and the names of files and of the images in them.

:class:`ReaderConfig` holds the settings (bit depth of 16-bit files, DICOM window, NIfTI slicing), :class:`ImageRef`
names one 2-D image (a file, ``path:frame:k`` or ``path:axis:index``), :class:`ScanInfo` the scan it belongs to, and
:func:`file_format` / :func:`list_files` tell which files are read and how. NumPy only; no format library is imported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEFAULT",
    "DICOM_SUFFIXES",
    "HIGH_BIT_DEPTH_MODES",
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
    "check_exists",
    "file_format",
    "gray_to_rgb",
    "has_dicom_preamble",
    "list_files",
    "parse_window",
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
    return "dicom" if has_dicom_preamble(path) else "image"


def has_dicom_preamble(path: str | Path) -> bool:
    """Whether ``path`` starts with the 128-byte preamble and ``DICM`` (PS3.10 7.1): ``pydicom.misc.is_dicom``."""
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
        if name.endswith(SUPPORTED_SUFFIXES) or ("." not in name and has_dicom_preamble(path)):
            files.append(path)
    return sorted(files)


def check_exists(path: str) -> None:
    """Raise :class:`ImageReadError` unless ``path`` is a non-empty file."""
    if not os.path.isfile(path):
        raise ImageReadError(path, "file not found" if not os.path.exists(path) else "not a file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """A 2-D array as ``(H, W, 3)`` float32, the gray value in every channel."""
    return np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=-1)
