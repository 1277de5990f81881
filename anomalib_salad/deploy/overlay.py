"""Heat maps of anomaly maps: a jet-coloured overlay on the image, and NIfTI heat-map volumes.

:func:`heatmap_overlay` blends a map, resized to its image, over the image (NumPy and Pillow only);
:class:`HeatVolume` puts the maps of a NIfTI volume's slices back where the reader cut them and writes them as one
volume with the input's geometry, to open as an overlay on the scan in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import reader
from ..data.reader import ImageRef

__all__ = ["HeatVolume", "heatmap_overlay", "resize_map"]


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """An anomaly map (at the network's resolution) resized bilinearly to an image's ``height`` and ``width``.

    Args:
        anomaly_map: ``(h, w)`` map.
        height: Height of the image.
        width: Width of the image.

    Returns:
        np.ndarray: ``(height, width)`` float32.
    """
    resized = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


class HeatVolume:
    """The anomaly maps of a NIfTI volume's slices, put back where the reader cut them, written as one volume."""

    def __init__(self, path: str) -> None:
        import nibabel  # noqa: PLC0415  (a NIfTI input has it)

        self.source = nibabel.load(path)
        self.shape = tuple(self.source.shape)
        # The reader's rule: (X, Y) is one slice (X, Y, 1); (X, Y, Z, 1) is the volume (X, Y, Z).
        grid = self.shape[:3] if len(self.shape) > 2 else (*self.shape, 1)
        self.voxels = np.zeros(grid, np.float32)  # slices the reader skipped stay 0

    def add(self, item: str, anomaly_map: np.ndarray, size: tuple[int, int]) -> None:
        """Put the map of slice ``item`` (``path:axis:index``; its image of ``size``) into the volume."""
        ref = ImageRef.parse(item)
        plane = reader.slice_to_plane(resize_map(anomaly_map, *size))
        self.voxels[(slice(None),) * int(ref.axis) + (ref.index,)] = plane  # type: ignore[arg-type]

    def save(self, target: Path) -> None:
        """Write ``target`` (``.nii.gz``) atomically, with the source's shape and affine."""
        import nibabel  # noqa: PLC0415

        volume = nibabel.Nifti1Image(self.voxels.reshape(self.shape), self.source.affine)
        # Only the geometry is copied: the header's text fields (descrip, aux_file, db_name) may name a patient.
        if hasattr(self.source, "get_qform"):
            for getter, setter in (("get_qform", volume.set_qform), ("get_sform", volume.set_sform)):
                matrix, code = getattr(self.source, getter)(coded=True)
                if matrix is not None:
                    setter(matrix, code=int(code))
            volume.header.set_xyzt_units(*self.source.header.get_xyzt_units())
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name[: -len('.nii.gz')]}.partial.nii.gz")  # nibabel gzips by suffix
        nibabel.save(volume, partial)
        os.replace(partial, target)


def _jet(values: np.ndarray) -> np.ndarray:
    """Jet colour map of values in ``[0, 1]`` as float RGB in ``[0, 1]`` (no matplotlib/OpenCV needed)."""
    values = np.clip(values, 0.0, 1.0)[..., None]
    centers = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # red, green, blue
    return np.clip(1.5 - np.abs(4.0 * (values - centers)), 0.0, 1.0)


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a jet-coloured anomaly map, resized to the image, over the image.

    Args:
        image: ``(H, W, 3)`` or ``(H, W)`` uint8, or float in ``[0, 1]``.
        anomaly_map: ``(h, w)`` map in ``[0, 1]`` (the normalised map; 0.5 is the pixel threshold).
        alpha: Weight of the heat map. Defaults to ``0.4``.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8.
    """
    rgb = np.asarray(image, dtype=np.float32)
    if np.asarray(image).dtype == np.uint8:
        rgb = rgb / 255.0
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    blended = (1.0 - alpha) * rgb + alpha * _jet(resize_map(anomaly_map, *rgb.shape[:2]))
    return (np.clip(blended, 0.0, 1.0) * 255.0).round().astype(np.uint8)
