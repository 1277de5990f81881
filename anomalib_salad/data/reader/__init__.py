"""The one image reader of anomalib-salad: PNG/JPEG/TIFF, DICOM and NIfTI to float32 RGB in ``[0, 1]``.

Training, validation and ``anomalib predict`` (through :mod:`anomalib_salad.data.folder`), the exported-model
scoring path (:mod:`anomalib_salad.deploy`, ``salad-score``) and ``examples/figures.py`` all read images here,
so a pixel gets the same value wherever it is read. This package imports only NumPy and Pillow at load time;
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
    >>> from anomalib_salad.data.reader import ReaderConfig, read_image, read_images
    >>> image = read_image("scan.dcm", ReaderConfig(window="lung"))  # doctest: +SKIP
    >>> [item for item, _ in read_images("brain.nii.gz")][:2]  # doctest: +SKIP
    ['brain.nii.gz:2:31', 'brain.nii.gz:2:32']
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .common import (
    DEFAULT,
    DICOM_SUFFIXES,
    HIGH_BIT_DEPTH_MODES,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    SUPPORTED_SUFFIXES,
    WINDOW_PRESETS,
    ImageReadError,
    ImageRef,
    ReaderConfig,
    ScanInfo,
    ScanKind,
    check_bit_depth,
    check_exists,
    file_format,
    list_files,
    parse_window,
)
from .dicom import dicom_frame_count, open_dicom, read_dicom
from .nifti import clear_cache, kept_slices, read_nifti_slice, read_nifti_volume
from .pillow import decode_reason, pil_to_array, read_pillow, uint8_to_float

__all__ = [
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
        frames = dicom_frame_count(path)
        return [path] if frames == 1 else [f"{path}:frame:{k}" for k in range(frames)]
    if kind == "nifti":
        return [f"{path}:{config.axis}:{index}" for index in kept_slices(path, config)]
    return [path]


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
    check_exists(ref.path)
    kind = file_format(ref.path)
    if kind == "dicom":
        if ref.axis not in {None, "frame"}:
            raise ImageReadError(ref.id, "a DICOM file has frames, not slices: use path:frame:<index>")
        return next(read_dicom(ref, config))[1]
    if kind == "nifti":
        if ref.axis is None or ref.axis == "frame":
            raise ImageReadError(
                ref.path,
                f"is a NIfTI volume: read one slice as '{ref.path}:<axis>:<index>' or "
                "all kept slices with read_images()",
            )
        return read_nifti_slice(ref, config)
    if ref.axis is not None:
        raise ImageReadError(ref.id, "only DICOM frames and NIfTI slices take ':axis:index'")
    return read_pillow(ref.path, config)


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
    check_exists(path)
    kind = file_format(path)
    if kind == "dicom":
        return open_dicom(ImageRef(path), config, all_frames=True)
    if kind == "nifti":
        return ScanInfo("nifti_volume", path), read_nifti_volume(path, config)
    return ScanInfo("image", path), iter([(path, read_pillow(path, config))])


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
