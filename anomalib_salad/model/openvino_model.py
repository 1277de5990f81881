"""An exported SALAD model (OpenVINO IR or ONNX) as an anomalib module: ``anomalib predict`` / ``test`` on the IR.

anomalib 2.7's ``predict`` and ``test`` only run Lightning modules; its ``OpenVINOInferencer`` has no CLI.
:class:`SaladOpenVINO` is a module with no trainable weights whose forward runs the exported graph through
:class:`anomalib_salad.deploy.SaladInferencer`. The graph already holds SALAD's resize, normalisation,
scoring and thresholds, so this module has no pre- or post-processor of its own, and what it predicts is
exactly what the deployed IR predicts.

Example:
    Score a folder with the IR written by ``anomalib export --export_type openvino``; anomalib's visualizer
    saves the overlays under ``results/``::

        anomalib predict --model anomalib_salad.SaladOpenVINO --data path/to/images
            --model.path results/Salad/.../weights/openvino/model.xml
"""

from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from ..deploy import PrecisionHint, SaladInferencer
from ..evaluation.metrics import paper_metrics

__all__ = ["SaladOpenVINO"]


class _ExportedGraph(nn.Module):
    """Runs the exported graph on a ``(N, 3, H, W)`` batch in ``[0, 1]`` and returns an ``InferenceBatch``.

    Maps and masks come back at the network's resolution; they are resized to the input's so that overlays
    and pixel metrics line up with ``batch.image``, which no pre-processor resizes here.
    """

    def __init__(self, inferencer: SaladInferencer) -> None:
        super().__init__()
        self.inferencer = inferencer

    def forward(self, images: Tensor) -> InferenceBatch:
        prediction = self.inferencer.predict(images.detach().float().cpu().numpy(), layout="NCHW")  # anomalib batches
        size = images.shape[-2:]
        anomaly_map = F.interpolate(torch.from_numpy(prediction.anomaly_map)[:, None], size=size, mode="bilinear")
        mask = None
        if prediction.pred_mask is not None:
            mask = F.interpolate(torch.from_numpy(prediction.pred_mask)[:, None].float(), size=size, mode="nearest")
            mask = mask[:, 0].bool().to(images.device)
        return InferenceBatch(
            pred_score=torch.from_numpy(prediction.pred_score).to(images.device),
            pred_label=torch.from_numpy(prediction.pred_label).to(images.device),
            anomaly_map=anomaly_map[:, 0].to(images.device),
            pred_mask=mask,
        )


class SaladOpenVINO(AnomalibModule):
    """Predict and test with an exported SALAD model through anomalib's Engine and CLI.

    Scores are the exported graph's: normalised to ``[0, 1]`` with the training run's statistics, anomalous
    above 0.5. The module cannot be trained; train :class:`anomalib_salad.Salad` and export it.

    Args:
        path: ``model.xml`` (with ``model.bin`` beside it) or ``model.onnx`` from ``anomalib export``.
        device: OpenVINO device. Defaults to ``"CPU"``.
        precision_hint: OpenVINO ``INFERENCE_PRECISION_HINT``; ``"f32"`` matches the torch model to ~1e-6,
            ``None`` keeps OpenVINO's default (``bf16`` on CPUs with AVX512-BF16 or AMX). Defaults to ``"f32"``.
        evaluator: Metrics for ``anomalib test``; ``True`` takes SALAD's paper metrics (image AUROC, F1,
            accuracy, sensitivity, specificity). Defaults to ``True``.
        visualizer: anomalib visualizer; ``True`` saves heat-map overlays. Defaults to ``True``.

    Raises:
        FileNotFoundError: If the model file or its ``.bin`` is missing.
        anomalib_salad.deploy.CheckpointError: If the file is not an anomalib export of SALAD.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        precision_hint: PrecisionHint | None = "f32",
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(pre_processor=False, post_processor=False, evaluator=evaluator, visualizer=visualizer)
        self.model = _ExportedGraph(SaladInferencer(path, device=device, precision_hint=precision_hint))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """SALAD's paper metrics on the exported graph's (normalised) image scores."""
        return Evaluator(test_metrics=paper_metrics())

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Refuse training: the weights are frozen inside the exported graph.

        Raises:
            TypeError: Always.
        """
        del batch, args, kwargs
        msg = "SaladOpenVINO runs an exported model and cannot be trained; train anomalib_salad.Salad and export it"
        raise TypeError(msg)

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Score a validation batch (the graph's own thresholds apply; nothing is fitted)."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    def configure_optimizers(self) -> None:
        """No optimiser: nothing here is trainable."""

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No trainer arguments: the module only predicts, validates and tests."""
        return {}

    @property
    def learning_type(self) -> LearningType:
        """One-class, like the SALAD model it was exported from (so ``predict`` runs no validation first)."""
        return LearningType.ONE_CLASS
