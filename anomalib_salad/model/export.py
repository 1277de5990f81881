"""Checked loading and export of Salad checkpoint files (needs torch and anomalib).

Wraps ``Salad.load_from_checkpoint`` and anomalib's exporters with checks that name what is wrong with a file
(:mod:`anomalib_salad.model.checkpoint`) and that the pre-processing came back with the weights. What the graph
holds is decided by :mod:`anomalib_salad.model.export_hooks`.
"""

from pathlib import Path
from typing import Literal

from anomalib.data import AnomalibDataModule
from anomalib.deploy import CompressionType, ExportType

from .checkpoint import CheckpointError
from .lightning_model import Salad

__all__ = ["export_salad", "load_salad_checkpoint"]


def load_salad_checkpoint(path: str | Path, map_location: str = "cpu") -> Salad:
    """Load a Salad checkpoint in eval mode, checking that its pre-processing came back.

    ``Salad.load_from_checkpoint`` (which ``Engine.export(ckpt_path=...)`` and ``anomalib export --ckpt_path``
    use) already checks the file; this also checks that the pre-processor's resize and normalisation were
    restored: anomalib restores only checkpoint-safe transforms and would otherwise export a graph without them.

    Args:
        path: The ``.ckpt`` file.
        map_location: Device for the tensors. Defaults to ``"cpu"``.

    Returns:
        Salad: The model, in eval mode.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        CheckpointError: If it is not a readable checkpoint, not Salad's, or lost its pre-processing.
    """
    model = Salad.load_from_checkpoint(path, map_location=map_location)
    if model.pre_processor is not None and getattr(model.pre_processor, "transform", None) is None:
        msg = (
            f"{path}: the pre-processor's transform was not stored (anomalib 2.7 keeps only Resize, Normalize, "
            "CenterCrop, Compose, Grayscale, ExportableCenterCrop, SquarePad), so an export would lack the resize "
            "and [-1, 1] scaling. Retrain with the default pre-processor or only those transforms."
        )
        raise CheckpointError(msg)
    return model.eval()


def export_salad(
    checkpoint: str | Path,
    export_root: str | Path,
    export_type: Literal["torch", "onnx", "openvino"] = "openvino",
    *,
    compression_type: str | None = None,
    datamodule: AnomalibDataModule | None = None,
    input_size: tuple[int, int] | None = None,
) -> Path:
    """Export a checked Salad checkpoint with anomalib's exporters.

    Equivalent to ``Engine.export(model=Salad(), export_type=..., ckpt_path=checkpoint)`` but fails early with
    :class:`CheckpointError` on a wrong file, and asks for ONNX opset 18 (what torch's exporter emits anyway;
    anomalib's default 14 makes it print a failed down-conversion traceback).

    Args:
        checkpoint: The ``.ckpt`` file.
        export_root: Folder; the files land in ``<export_root>/weights/<export_type>/``.
        export_type: ``"torch"``, ``"onnx"`` or ``"openvino"``. Defaults to ``"openvino"``.
        compression_type: OpenVINO only: ``"fp16"``, ``"int8"``, ``"int8_ptq"`` or ``"int8_acq"``.
            Defaults to ``None`` (an FP32 IR).
        datamodule: Calibration data for ``int8_ptq`` / ``int8_acq``. Defaults to ``None``.
        input_size: Fixed ``(H, W)`` of the graph input; ``None`` keeps height and width dynamic (the graph
            resizes any size). Defaults to ``None``.

    Returns:
        Path: The ``.pt``, ``.onnx`` or ``.xml`` file.
    """
    model = load_salad_checkpoint(checkpoint)
    kind = ExportType(export_type)
    if kind == ExportType.TORCH:
        return model.to_torch(export_root)
    onnx_kwargs = {"opset_version": 18}
    if kind == ExportType.ONNX:
        return model.to_onnx(export_root, input_size=input_size, **onnx_kwargs)
    return model.to_openvino(
        export_root,
        input_size=input_size,
        compression_type=CompressionType(compression_type) if compression_type else None,
        datamodule=datamodule,
        onnx_kwargs=onnx_kwargs,
    )
