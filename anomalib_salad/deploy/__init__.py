"""Scoring with an exported SALAD model on a machine without torch: OpenVINO, NumPy and Pillow only.

Nothing here imports torch, anomalib or the model (a test checks it with those blocked); files are read by
:mod:`anomalib_salad.data.reader`, the reader that training uses, so a pixel gets the same value in both.

* :mod:`~anomalib_salad.deploy.inferencer`: :class:`SaladInferencer` runs an exported IR or ONNX file on images,
  arrays or batches, with checked inputs (:func:`read_image`, :func:`prepare_input`, :func:`to_model_input`).
* :mod:`~anomalib_salad.deploy.overlay`: :func:`heatmap_overlay` and NIfTI heat-map volumes.
* :mod:`~anomalib_salad.deploy.score`: the ``salad-score`` command for whole archives (shards, resume, per-scan
  table, merge).

Exporting a checkpoint needs the training stack: :func:`anomalib_salad.model.export.export_salad`.

Example:
    >>> from anomalib_salad.deploy import SaladInferencer
    >>> inferencer = SaladInferencer("weights/openvino/model.xml", precision_hint="f32")  # doctest: +SKIP
    >>> inferencer.predict("scan.png").pred_score  # doctest: +SKIP
    array([0.73], dtype=float32)
"""

from .inferencer import (
    DEPLOY_READER,
    IMAGE_EXTENSIONS,
    CheckpointError,
    InputImageError,
    PrecisionHint,
    SaladInferencer,
    SaladPrediction,
    list_images,
    precision_name,
    prepare_input,
    read_image,
    to_model_input,
)
from .overlay import heatmap_overlay

__all__ = [
    "DEPLOY_READER",
    "IMAGE_EXTENSIONS",
    "CheckpointError",
    "InputImageError",
    "PrecisionHint",
    "SaladInferencer",
    "SaladPrediction",
    "heatmap_overlay",
    "list_images",
    "precision_name",
    "prepare_input",
    "read_image",
    "to_model_input",
]
