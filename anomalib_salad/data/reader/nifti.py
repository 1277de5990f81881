"""NIfTI volumes (nibabel, imported on the first file): normalised per volume, cut into 2-D slices, empty ones skipped.

A volume's foreground percentiles map to 0 and 1 (cached per file, so reading one slice does not normalise the
volume again); slices are cut along ``ReaderConfig.axis``, turned by ``np.rot90`` and kept when enough of their
pixels are tissue. The rules are in :mod:`anomalib_salad.data.reader`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import ImageReadError, ImageRef, ReaderConfig, check_exists, gray_to_rgb

__all__ = ["clear_cache", "kept_slices", "read_nifti_slice", "read_nifti_volume"]


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
    return gray_to_rgb(np.ascontiguousarray(np.rot90(normalised_slice)))


def _nifti_stats(path: str, config: ReaderConfig, volume: np.ndarray | None = None) -> _VolumeStats:
    """The cached statistics of a volume (reading it once if needed), with the kept slices for ``config``."""
    check_exists(path)
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


def read_nifti_volume(path: str, config: ReaderConfig) -> Iterator[tuple[str, np.ndarray]]:
    """The kept slices of a volume as ``(id, image)`` pairs: decoded and normalised now, each cut when taken."""
    image = _nibabel_load(path)
    _volume_shape(path, image.shape)
    volume = _voxels(image, path)
    stats = _nifti_stats(path, config, volume)
    normalised = _normalise(volume, stats)
    del volume
    kept = stats.kept[_tissue_key(config)]
    return ((f"{path}:{config.axis}:{index}", _slice_image(_plane(normalised, config.axis, index))) for index in kept)


def read_nifti_slice(ref: ImageRef, config: ReaderConfig) -> np.ndarray:
    """One slice ``path:axis:index`` of a volume, normalised with the statistics of the whole volume."""
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


def kept_slices(path: str, config: ReaderConfig) -> list[int]:
    """The indices along ``config.axis`` of the slices of a volume that the tissue rule keeps (statistics cached)."""
    return _nifti_stats(path, config).kept[_tissue_key(config)]
