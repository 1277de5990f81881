"""Getting images in: the one image reader, the anomalib datamodules that read through it, file checks and caching.

* :mod:`~anomalib_salad.data.reader`: PNG/JPEG/TIFF, DICOM and NIfTI files to float32 RGB in ``[0, 1]``. It
  imports neither torch nor anomalib: the torch-free deployment path reads with it too, which is why the names
  below load on first use.
* :mod:`~anomalib_salad.data.folder`: :class:`CheckedFolder`, :class:`MedicalFolder` and
  :class:`CheckedPredictDataset`: anomalib's ``Folder`` and ``PredictDataset`` reading through the reader.
* :mod:`~anomalib_salad.data.file_check`: every file decoded once before the first batch, each unusable one named;
  :class:`ImageFileCheck` does it for any run.
* :mod:`~anomalib_salad.data.cache`: :class:`ImageCache`, a fit's images decoded once and held on the device.
* :mod:`~anomalib_salad.data.visualizer`: :class:`ReaderVisualizer`, anomalib's visualizer drawing the originals
  through the reader.
* :mod:`~anomalib_salad.data.synthetic`: :class:`SyntheticScans`, generated brain-scan-like slices with lesions.
"""

from .. import lazy_names

__all__ = [
    "CacheTooLargeError",
    "CachedImages",
    "CheckedFolder",
    "CheckedFolderDataset",
    "CheckedPredictDataset",
    "ImageCache",
    "ImageFileCheck",
    "ImageFileError",
    "ImageInfo",
    "MedicalFolder",
    "ReaderVisualizer",
    "SyntheticScans",
    "check_cached_resize",
    "check_image_files",
    "image_file_problems",
    "inspect_image",
    "make_synthetic_scans",
    "read_image_tensor",
    "scan_image_files",
    "synthetic_scan",
]

_HOMES = {
    "CacheTooLargeError": ".cache",
    "CachedImages": ".cache",
    "CheckedFolder": ".folder",
    "CheckedFolderDataset": ".folder",
    "CheckedPredictDataset": ".folder",
    "ImageCache": ".cache",
    "ImageFileCheck": ".file_check",
    "ImageFileError": ".file_check",
    "ImageInfo": ".file_check",
    "MedicalFolder": ".folder",
    "ReaderVisualizer": ".visualizer",
    "SyntheticScans": ".synthetic",
    "check_cached_resize": ".cache",
    "check_image_files": ".file_check",
    "image_file_problems": ".file_check",
    "inspect_image": ".file_check",
    "make_synthetic_scans": ".synthetic",
    "read_image_tensor": ".folder",
    "scan_image_files": ".file_check",
    "synthetic_scan": ".synthetic",
}

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
