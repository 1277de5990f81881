"""Export-time post-processing: anomalib's :class:`PostProcessor` with its fitted statistics fixed.

anomalib's normalisation evaluates all of its cases on every pixel (statistics missing, zero range, the
usual min-max scaling) and picks one with ``where``. In an exported graph the statistics are constants, so
the case is known before tracing; :class:`FittedPostProcessor` traces that case alone. Its outputs are
bit-identical to anomalib's in torch, and the exported graph no longer compares and selects on every pixel of
the anomaly map for cases that cannot occur (docs/results.md: about 2 ms per 256x256 image in OpenVINO).
"""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from torch import Tensor, nn

__all__ = ["FittedPostProcessor", "fitted_post_processing"]


def _unchanged(predictions: Tensor) -> Tensor:
    return predictions


def _fitted_normalisation(minimum: Tensor, maximum: Tensor, threshold: Tensor) -> Callable[[Tensor], Tensor]:
    """``PostProcessor._normalize`` for fixed statistics: only the case they select, with anomalib's arithmetic."""
    minimum, maximum, threshold = (value.detach().clone() for value in (minimum, maximum, threshold))
    if math.isnan(minimum) or math.isnan(maximum):
        return _unchanged
    if math.isnan(threshold):
        threshold = (maximum + minimum) / 2
    value_range = maximum - minimum
    if value_range == 0:
        return lambda predictions: torch.where(
            predictions > threshold, 1.0, torch.where(predictions < threshold, 0.0, 0.5)
        )
    return lambda predictions: (((predictions - threshold) / value_range) + 0.5).clamp(min=0, max=1)


def _fitted_threshold(threshold: Tensor) -> Callable[[Tensor], Tensor]:
    """``PostProcessor._apply_threshold`` for a fixed threshold (a NaN threshold passes predictions through)."""
    threshold = threshold.detach().clone()
    if math.isnan(threshold):
        return _unchanged
    return lambda predictions: predictions > threshold


class FittedPostProcessor(nn.Module):
    """anomalib's ``PostProcessor.forward`` with the statistics of ``post_processor`` read once, for export.

    Later changes to ``post_processor`` are not seen: build it right before tracing (see
    :func:`fitted_post_processing`).

    Args:
        post_processor: A fitted anomalib post-processor (the exact class: subclasses may change the maths).

    Example:
        >>> import torch
        >>> from anomalib.data import InferenceBatch
        >>> from anomalib.post_processing import PostProcessor
        >>> post_processor = PostProcessor()
        >>> batch = InferenceBatch(pred_score=torch.rand(2), anomaly_map=torch.rand(2, 1, 8, 8))
        >>> torch.equal(FittedPostProcessor(post_processor)(batch).anomaly_map, post_processor(batch).anomaly_map)
        True
    """

    def __init__(self, post_processor: PostProcessor) -> None:
        super().__init__()
        if type(post_processor) is not PostProcessor:
            msg = f"FittedPostProcessor reproduces anomalib's PostProcessor only, not {type(post_processor).__name__}"
            raise TypeError(msg)
        if post_processor.enable_normalization:
            self.normalise_score = _fitted_normalisation(
                post_processor.image_min, post_processor.image_max, post_processor.image_threshold
            )
            self.normalise_map = _fitted_normalisation(
                post_processor.pixel_min, post_processor.pixel_max, post_processor.pixel_threshold
            )
        else:
            self.normalise_score = self.normalise_map = _unchanged
        self.thresholding = post_processor.enable_thresholding
        self.label = _fitted_threshold(post_processor.normalized_image_threshold)
        self.mask = _fitted_threshold(post_processor.normalized_pixel_threshold)

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """Normalise and threshold ``predictions`` as anomalib's post-processor would.

        Args:
            predictions: Model outputs with ``pred_score`` and ``anomaly_map``.

        Returns:
            InferenceBatch: Normalised scores and map, with labels and masks when thresholding is on.
        """
        pred_score = self.normalise_score(predictions.pred_score)
        anomaly_map = self.normalise_map(predictions.anomaly_map)
        return InferenceBatch(
            pred_label=self.label(pred_score) if self.thresholding else None,
            pred_score=pred_score,
            pred_mask=self.mask(anomaly_map) if self.thresholding else None,
            anomaly_map=anomaly_map,
        )


@contextmanager
def fitted_post_processing(model: AnomalibModule) -> Iterator[AnomalibModule]:
    """Temporarily give ``model`` a :class:`FittedPostProcessor` in place of anomalib's own post-processor.

    Post-processors of any other class (or none) are left as they are.

    Args:
        model: The module about to be traced; restored on exit.

    Yields:
        AnomalibModule: ``model``.
    """
    post_processor = model.post_processor
    if type(post_processor) is not PostProcessor:
        yield model
        return
    try:
        model.post_processor = FittedPostProcessor(post_processor)
        yield model
    finally:
        model.post_processor = post_processor
