"""anomalib's image visualizer drawing each original through the one image reader.

anomalib's visualizer reopens every original with ``Image.open(path).convert("RGB")``: that fails on DICOM files and
on frame / slice ids, and shows 16-bit files clipped. :class:`ReaderVisualizer`, which :class:`~anomalib_salad.Salad`
configures, reads them with the run's reader settings instead.
"""

from pathlib import Path
from typing import Any

from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.item_visualizer import visualize_image_item
from lightning.pytorch import LightningModule, Trainer

from . import reader
from .file_check import datasets_of
from .folder import read_image_tensor
from .reader import ImageRef, ReaderConfig

__all__ = ["ReaderVisualizer"]


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
        for dataset in datasets_of(loaders):
            if getattr(dataset, "reader_config", None) is not None:
                return dataset.reader_config
    return None


class ReaderVisualizer(ImageVisualizer):
    """anomalib's ``ImageVisualizer``, drawing each original through the reader (``read_image_tensor``).

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
