"""Decode once: a fit's training and validation images held in memory, resized, exactly as the model would see them.

:class:`ImageCache` is a Lightning callback. After the datamodule is set up and before any loader is built, it
reads every image of the train and validation datasets once with the dataset's own ``__getitem__`` (so
anomalib's ``Folder``, :class:`~anomalib_salad.data.folder.CheckedFolder` and their readers decide the pixels),
resizes it with the model pre-processor's own ``Resize`` (the transform that a checkpoint and an exported model
carry), and keeps the result as one integer tensor on the training device. Batches are then one indexing
operation instead of 64 file decodes, and the pre-processor still runs on every batch: its ``Resize`` finds the
image already at size and returns it unchanged, its ``Normalize`` scales as always, and export is untouched.

Pixels: anomalib's datamodules already apply the model's ``Resize`` inside the dataset, so the resized values of
an 8-bit image lie between the 8-bit grey levels, and 12/16-bit scans have finer levels still. The cache keeps them
as float32, bit-identical to what the uncached path feeds the pre-processor (uint8 would move them by up to 2e-3),
and keeps one channel where the three are equal (grayscale scans saved as RGB): 4 bytes per pixel, a third more
than 8-bit RGB; 1,000 brain MRI slices at 64 px take 16 MiB.

Example:
    >>> from anomalib_salad.data.cache import ImageCache
    >>> ImageCache().device is None
    True
"""

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from anomalib import TaskType
from anomalib.data import ImageBatch
from anomalib.data.transforms.utils import extract_transforms_by_type
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import CenterCrop, Compose, Grayscale, Normalize, Resize, Transform

logger = logging.getLogger(__name__)

__all__ = ["CacheTooLargeError", "CachedImages", "ImageCache", "check_cached_resize", "resize_of"]

#: The cache may take at most this fraction of the memory that is free when it is filled.
MEMORY_FRACTION = 0.5
SPLITS = ("train_data", "val_data")
DETERMINISTIC = (Resize, CenterCrop, Grayscale, Normalize)


class CacheTooLargeError(MemoryError):
    """The decoded images would not fit in the memory that is free."""


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: ``MemAvailable`` on CPU, the CUDA allocator's free bytes on GPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def resize_of(pl_module: LightningModule) -> Resize | None:
    """The ``Resize`` of the model's pre-processor (the one an exported model applies), if it has one."""
    pre_processor = getattr(pl_module, "pre_processor", None)
    transform = getattr(pre_processor, "transform", None)
    if transform is None:
        return None
    resizes = extract_transforms_by_type(transform, Resize)
    return resizes[0] if resizes else None


class CachedImages(Dataset):
    """A dataset's items with their images decoded once, resized, and stored as one float tensor.

    ``__getitems__`` returns a whole :class:`~anomalib.data.ImageBatch` (PyTorch's ``DataLoader`` hands it the
    batch's indices), and :attr:`collate_fn` passes it through, so a batch costs one indexing operation.

    Args:
        dataset: The anomalib dataset to cache (its ``__getitem__`` reads the files).
        resize: The pre-processor's resize, applied to each image before it is stored; ``None`` stores the
            images at their own size, which must then be the same for all.
        device: Where the cache lives (the training device).
        name: Split name for messages. Defaults to ``"train"``.
        num_workers: Processes that decode the files while the cache is filled. Defaults to ``0``.
    """

    def __init__(
        self,
        dataset: Dataset,
        resize: Resize | None,
        device: torch.device | str = "cpu",
        name: str = "train",
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.name, self.resize = dataset, name, resize
        images, labels, self.paths = [], [], []
        # Its own generator: an iterator draws a seed, and the global stream must stay as an uncached fit leaves it.
        loader = DataLoader(
            dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity, generator=torch.Generator()
        )
        for item in loader:
            image = item.image.float()
            images.append(resize(image) if resize is not None else image)
            labels.append(item.gt_label)
            self.paths.append(item.image_path)
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            msg = (
                f"Image cache ({name}): images differ in size {sorted(shapes)[:3]} and the model's pre-processor has "
                "no Resize to bring them to one; turn the cache off (--model.cache_images false)."
            )
            raise ValueError(msg)
        stacked = torch.stack(images) if images else torch.zeros(0, 3, 1, 1)
        self.channels = stacked.shape[1]
        if self.channels > 1 and torch.equal(stacked, stacked[:, :1].expand_as(stacked)):
            stacked = stacked[:, :1]  # grayscale saved as RGB: keep one channel, expand when served
        self.images = stacked.contiguous().to(device)
        self.labels = torch.stack(labels).to(device) if labels and labels[0] is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: Sequence[int]) -> ImageBatch:
        """The batch of these indices, images as float in [0, 1] on the cache's device."""
        index = torch.as_tensor(indices, device=self.images.device)
        images = self.images.index_select(0, index)
        images = images.expand(-1, self.channels, -1, -1).contiguous()  # a writable batch, as a loader's is
        labels = self.labels.index_select(0, index) if self.labels is not None else None
        return ImageBatch(image=images, gt_label=labels, image_path=[self.paths[i] for i in indices])

    def __getitem__(self, index: int) -> ImageBatch:
        """A batch of one (the loaders use :meth:`__getitems__`)."""
        return self.__getitems__([index])

    @property
    def collate_fn(self) -> Any:
        """Batches are built by :meth:`__getitems__` already."""
        return _identity

    def __getattr__(self, name: str) -> Any:
        """Everything else (``samples``, ``task``, ...) from the wrapped dataset, for callbacks that inspect it."""
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def check_cached_resize(pl_module: LightningModule) -> None:
    """Refuse a fit whose image cache was filled with another resize than the model's (restored) pre-processor's.

    Lightning fills the cache (``setup``) before it restores a checkpoint, so resuming a fit with model arguments
    that differ from the checkpoint's (e.g. ``antialias``, whose default changed) would train on other pixels than
    the checkpoint's pre-processor, and its export, use.

    Raises:
        ValueError: Naming both resizes and what to pass.
    """
    trainer = getattr(pl_module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    resize = resize_of(pl_module)
    for split in SPLITS:
        data = getattr(datamodule, split, None)
        if not isinstance(data, CachedImages) or _resize_settings(data.resize) == _resize_settings(resize):
            continue
        msg = (
            f"Image cache ({data.name}): filled with {data.resize}, but the checkpoint's pre-processor resizes with "
            f"{resize}. Give the model the checkpoint's settings (e.g. --model.antialias "
            f"{str(bool(getattr(resize, 'antialias', False))).lower()}), or turn the cache off "
            "(--model.cache_images false)."
        )
        raise ValueError(msg)


def _resize_settings(resize: Resize | None) -> tuple | None:
    if resize is None:
        return None
    return (tuple(resize.size or ()), str(resize.interpolation), bool(resize.antialias), resize.max_size)


def _deterministic(transform: Transform | None) -> bool:
    """Whether ``transform`` gives the same pixels every epoch (anomalib appends the model's ``Resize`` itself)."""
    if transform is None or isinstance(transform, DETERMINISTIC):
        return True
    return isinstance(transform, Compose) and all(_deterministic(part) for part in transform.transforms)


def _identity(batch: Any) -> Any:
    return batch


class ImageCache(Callback):
    """Read a fit's train and validation images once and serve every later epoch from memory.

    Datasets with random augmentations are left alone (they must run on every epoch); the ``Resize`` that anomalib
    appends to a dataset's augmentations is deterministic and cached with the image. The loaders'
    ``num_workers`` is set to 0: with the images in memory, a batch is one indexing operation, and worker processes
    would only compete with training for the cores (and cannot hold a cache on a GPU).

    Args:
        device: Where to keep the images; ``None`` is the training device (so a GPU run keeps them on the GPU).
            Defaults to ``None``.
        num_workers: Processes that decode the files once while the cache is filled; ``None`` uses the
            datamodule's ``num_workers``. Defaults to ``None``.

    Raises:
        CacheTooLargeError: At setup, if the decoded images would take more than half of the free memory; the
            message gives the estimate and how to turn the cache off.
    """

    def __init__(self, device: str | torch.device | None = None, num_workers: int | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.num_workers = num_workers

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Replace the datamodule's train and validation datasets by cached ones (fit only)."""
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None:
            return
        device = self.device or trainer.strategy.root_device
        resize = resize_of(pl_module)
        splits = [
            (split, dataset)
            for split in SPLITS
            if (dataset := getattr(datamodule, split, None)) is not None
            and not isinstance(dataset, CachedImages)
            and len(dataset) > 0
        ]
        # Random augmentations must run every epoch; validation masks are not cached.
        skipped = [
            split
            for split, dataset in splits
            if not _deterministic(getattr(dataset, "augmentations", None))
            or (split != "train_data" and getattr(dataset, "task", None) == TaskType.SEGMENTATION)
        ]
        if skipped:
            logger.info("Image cache: %s not cached (augmentations or masks)", skipped)
        splits = [(split, dataset) for split, dataset in splits if split not in skipped]
        if not splits:
            return
        self._check_size(splits, resize, device)
        workers = self.num_workers if self.num_workers is not None else getattr(datamodule, "num_workers", 0)
        for split, dataset in splits:
            cached = CachedImages(dataset, resize, device, split.removesuffix("_data"), num_workers=workers)
            setattr(datamodule, split, cached)
            logger.info(
                "Image cache: %d %s images, %s, %.1f MiB on %s",
                len(cached),
                cached.name,
                tuple(cached.images.shape[1:]),
                cached.images.numel() * cached.images.element_size() / 2**20,
                device,
            )
        if hasattr(datamodule, "num_workers"):
            datamodule.num_workers = 0

    @staticmethod
    def _check_size(splits: Sequence[tuple[str, Any]], resize: Resize | None, device: torch.device) -> None:
        """Refuse, before reading anything, a cache that would take more than half the free memory."""
        first = splits[0][1][0].image
        channels = first.shape[-3] if first.dim() == 3 else 1
        height, width = ([*resize.size] * 2)[:2] if resize is not None else first.shape[-2:]
        count = sum(len(dataset) for _, dataset in splits)
        # float32; grayscale saved as RGB later takes a third of this, but that is known only once read.
        estimate = count * channels * height * width * 4
        free = free_memory_bytes(device)
        if estimate > MEMORY_FRACTION * free:
            msg = (
                f"Image cache: {count} images at {channels}x{height}x{width} need up to {estimate / 2**30:.2f} GiB "
                f"on {device}, more than half of the {free / 2**30:.2f} GiB free. Turn the cache off with "
                "--model.cache_images false (images are then decoded every epoch), or train at a smaller image_size."
            )
            raise CacheTooLargeError(msg)
