"""How Salad exports: an OpenVINO-friendly ONNX graph, and INT8 quantisation that keeps the latent score precise.

:class:`ExportHooks` is the part of :class:`~anomalib_salad.Salad` that anomalib's exporters call
(``to_onnx``, also the first step of ``to_openvino``, and ``_post_training_quantization_ov`` for ``INT8_PTQ``);
the checked export of a checkpoint file is :func:`anomalib_salad.model.export.export_salad`.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib.data import AnomalibDataModule

from .post_processing import fitted_post_processing
from .pre_processing import antialiased_export
from .torch_model import phase_decomposed

if TYPE_CHECKING:
    import openvino as ov

__all__ = ["ExportHooks"]


def _is_latent_end_convolution(op: "ov.Node") -> bool:
    """Whether an OpenVINO op is a strided (encoder) convolution with a static output of at most 2x2 pixels."""
    if op.get_type_name() != "Convolution":
        return False
    output_height, output_width = op.get_output_partial_shape(0)[2:]
    input_height = op.input_value(0).get_partial_shape()[2]
    if not all(size.is_static for size in (output_height, output_width, input_height)):
        return False
    # Decoder (phase) convolutions keep their input's size; the encoder's halve it.
    halves = input_height.get_length() > output_height.get_length()
    return halves and output_height.get_length() * output_width.get_length() <= 4


class ExportHooks:
    """Salad's overrides of anomalib's export methods (a mixin of Salad, before ``AnomalibModule``)."""

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Export to ONNX as anomalib does (also the first step of ``to_openvino``), with an OpenVINO-friendly decoder.

        The decoder's transposed convolutions are exported as
        :class:`~anomalib_salad.model.torch_model.PhaseConvTranspose2d`: the same outputs (to ~1e-7), but ordinary
        convolutions, which OpenVINO quantises and runs in int8 on every CPU. anomalib's post-processor is
        exported as :class:`~anomalib_salad.model.post_processing.FittedPostProcessor`: the same outputs, without
        the normalisation cases that its fitted statistics rule out. An antialiased resize stays antialiased
        (:func:`~anomalib_salad.model.pre_processing.antialiased_export`; anomalib would drop it). The model is
        unchanged afterwards.

        Args:
            *args: Passed to :meth:`anomalib.models.components.base.export_mixin.ExportMixin.to_onnx`.
            **kwargs: Likewise.

        Returns:
            Path: The ONNX file.
        """
        with phase_decomposed(self.model.decoder), fitted_post_processing(self), antialiased_export(self.pre_processor):
            return Path(super().to_onnx(*args, **kwargs))

    @staticmethod
    def _post_training_quantization_ov(model: "ov.Model", datamodule: AnomalibDataModule | None = None) -> "ov.Model":
        """INT8_PTQ as anomalib runs it (NNCF, calibrated on the validation split), with SALAD's two settings.

        The encoder's last two layers (outputs of 2x2 and 1x1, in both encoder passes) and the antialiased resize
        stay in floating point, and activations are quantised asymmetrically (NNCF's ``MIXED`` preset). With
        anomalib's defaults a brain MRI model lost 0.038 AUROC, with these 0.0001; six demo-model checkpoints lost
        at most 0.006 (docs/results.md; measured before the resize was antialiased). The latent score is a
        difference of two codes, so quantisation noise at the latent end lands in the score directly; those layers
        hold many weights but few multiply-adds.

        Args:
            model: The FP32 OpenVINO model.
            datamodule: Calibration data; its validation split is used, as anomalib does.

        Returns:
            ov.Model: The quantised model.

        Raises:
            ValueError: If ``datamodule`` is ``None``.
        """
        import nncf  # noqa: PLC0415  (an export-only dependency)

        if datamodule is None:
            msg = "INT8_PTQ needs calibration data: pass a datamodule (CLI: --data ...)"
            raise ValueError(msg)
        datamodule.setup("fit")
        calibration = nncf.Dataset(datamodule.val_dataloader(), lambda batch: batch["image"])
        latent_end = [op.get_friendly_name() for op in model.get_ordered_ops() if _is_latent_end_convolution(op)]
        # The antialiased resize's matrix products (AntialiasedResize; the networks have none) stay in floating point
        # too: int8 pixels would throw away what the resize keeps.
        resize = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
        return nncf.quantize(
            model,
            calibration,
            preset=nncf.QuantizationPreset.MIXED,
            ignored_scope=nncf.IgnoredScope(names=latent_end + resize),
        )
