"""anomalib's ``Folder`` datamodule and ``PredictDataset`` reading through the one image reader.

:class:`CheckedFolder` / :class:`MedicalFolder` / :class:`CheckedPredictDataset` read every image with
:func:`read_image_tensor`, the reader (:mod:`anomalib_salad.data.reader`) as a tensor: anomalib's values for 8-bit
files (bit-identical), 16-bit grayscale scaled by ``2**bit_depth - 1`` instead of clipped, DICOM (modality LUT,
VOI window, MONOCHROME1, frames) and NIfTI slices; every failure names the file. They accept DICOM and NIfTI
(split per file, then cut into frames / slices named ``path:axis:index``) and check their files at setup
(:mod:`anomalib_salad.data.file_check`).

Example:
    >>> from anomalib_salad.data import CheckedFolder
    >>> datamodule = CheckedFolder(name="scans", root="scans", normal_dir="train/normal",
    ...                            abnormal_dir="test/abnormal", normal_test_dir="test/normal",
    ...                            bit_depth=12, seed=0)  # doctest: +SKIP
"""

from collections.abc import Iterable
from pathlib import Path

import torch
from anomalib import TaskType
from anomalib.data import ImageItem, PredictDataset
from anomalib.data.datamodules.image.folder import Folder
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.utils import LabelName, Split, read_mask
from pandas import DataFrame
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.tv_tensors import Image as TVImage
from torchvision.tv_tensors import Mask

from . import reader
from .file_check import ImageFileError, check_image_files
from .reader import ImageReadError, ImageRef, ReaderConfig, check_bit_depth

__all__ = ["CheckedFolder", "CheckedFolderDataset", "CheckedPredictDataset", "MedicalFolder", "read_image_tensor"]

# Folder's listing matches suffixes: ".gz" lets ".nii.gz" through (other .gz files are dropped afterwards).
MEDICAL_EXTENSIONS = tuple(sorted({*IMG_EXTENSIONS, *reader.DICOM_SUFFIXES, ".nii", ".gz"}))


def _reader_config(config: ReaderConfig | None, bit_depth: int | None = None) -> ReaderConfig:
    """``config`` (default settings if ``None``) with ``bit_depth`` set when given."""
    return (config or ReaderConfig()).replace(bit_depth=check_bit_depth(bit_depth))


def read_image_tensor(path: str | Path, bit_depth: int | None = None, config: ReaderConfig | None = None) -> TVImage:
    """Read an image as anomalib's datasets expect it: ``(3, H, W)`` float32 RGB in ``[0, 1]``.

    This is :func:`anomalib_salad.data.reader.read_image` as a tensor. 8-bit files (grayscale, RGB, palette, with or
    without alpha, which is dropped) give exactly what ``anomalib.data.utils.read_image(path, as_tensor=True)``
    gives. 16-bit grayscale files are divided by ``2**bit_depth - 1`` instead of being clipped at 255; float
    files must already lie in ``[0, 1]``. DICOM files, their frames (``path:frame:k``) and NIfTI slices
    (``path:axis:index``) are read by the rules of :mod:`anomalib_salad.data.reader`.

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
    line: ``anomalib predict ... --data anomalib_salad.data.CheckedPredictDataset --data.path scans/``.
    Folders are searched recursively; DICOM files give one item per frame and NIfTI volumes one per kept slice,
    named ``path:frame:k`` / ``path:axis:index`` in ``image_path``.

    Args:
        path: An image file, a DICOM / NIfTI file, a frame or slice id, or a folder.
        bit_depth: Bits stored per pixel in 16-bit grayscale files. Defaults to ``None`` (16).
        check_files: Scan all files now with :func:`check_image_files`. Defaults to ``True``.
        window: DICOM VOI window (see :class:`~anomalib_salad.data.reader.ReaderConfig`). Defaults to ``None``
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
    files divided by ``2**bit_depth - 1``, DICOM and NIfTI by the rules of :mod:`anomalib_salad.data.reader`.

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
        self.reader_config = ReaderConfig(bit_depth=check_bit_depth(bit_depth)).replace(
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
