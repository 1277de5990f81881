"""Post-processing: one rule for every way SALAD is scored, and its export-time form.

:class:`RankPreservingPostProcessor` is Salad's post-processor (and the benchmark's for every model): anomalib's
min-max normalisation with a strictly increasing squash in place of its clamp, so ``anomalib test``,
``Engine.test``, the benchmark runner and the exported model all report the AUROC of the raw scores.

anomalib's normalisation evaluates all of its cases on every pixel (statistics missing, zero range, the
usual min-max scaling) and picks one with ``where``. In an exported graph the statistics are constants, so
the case is known before tracing; :class:`FittedPostProcessor` traces that case alone. Its outputs are
bit-identical to anomalib's in torch, and the exported graph no longer compares and selects on every pixel of
the anomaly map for cases that cannot occur (docs/results.md: about 2 ms per 256x256 image in OpenVINO).
It reproduces both anomalib's :class:`PostProcessor` and :class:`RankPreservingPostProcessor`.
"""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from anomalib.data import InferenceBatch
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from torch import Tensor, nn

__all__ = ["FittedPostProcessor", "RankPreservingPostProcessor", "fitted_post_processing", "normal_threshold"]


class RankPreservingPostProcessor(PostProcessor):
    """anomalib's post-processor with a strictly increasing squash in place of the clamp to [0, 1].

    anomalib maps a score ``s`` to ``u + 0.5`` with ``u = (s - threshold) / (max - min)`` (validation
    statistics) and clamps to [0, 1]: test scores beyond the clamp tie, and ties between a normal and an
    anomalous image lower the AUROC and can move the best-F1 threshold. Here ``0.5 + 0.5 * u / (1 + |u|)`` is
    used instead: still in (0, 1) (so anomalib's own metrics, which squash batches with scores outside [0, 1]
    through a sigmoid, stay valid), 0.5 at the threshold (so ``pred_label`` is unchanged), and strictly
    increasing, so AUROC and the best-F1 statistics equal those of the raw scores.

    With ``normal_fpr`` the image threshold is fitted on the validation split's *normal* images alone: the
    smallest score that at most that fraction of them exceed. It needs no anomalous image, so it suits a
    validation split of normal images held out from training (``val_split_mode: from_train``); anomalib's default
    (the best F1 on validation labels) needs anomalies there. Exports, ``anomalib predict`` and ``salad-score``
    use the fitted threshold whichever way it was fitted.

    Args:
        clamp: Use anomalib's clamp after all. Set when a checkpoint written before the squash became Salad's
            default is loaded, so that it scores as it did (the flag travels in Salad's checkpoints).
        normal_fpr: False-positive rate on the validation normals that fixes the image threshold, in (0, 1);
            ``None`` keeps anomalib's best-F1 threshold. Defaults to ``None``.
        **kwargs: anomalib's ``PostProcessor`` arguments.

    Example:
        >>> import torch
        >>> from anomalib.data import ImageBatch
        >>> post_processor = RankPreservingPostProcessor(normal_fpr=0.1)
        >>> scores = torch.arange(1.0, 11.0)  # ten normal validation images
        >>> labels = torch.zeros(10, dtype=torch.long)
        >>> batch = ImageBatch(image=torch.zeros(10, 3, 4, 4), pred_score=scores, gt_label=labels)
        >>> post_processor.on_validation_batch_end(None, None, batch)
        >>> post_processor.on_validation_epoch_end(None, None)
        >>> float(post_processor.image_threshold)  # one of the ten normals (10 %) lies above it
        9.0
    """

    def __init__(self, clamp: bool = False, normal_fpr: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if normal_fpr is not None and not 0 < normal_fpr < 1:
            msg = f"normal_fpr must be in (0, 1) or None, got {normal_fpr}"
            raise ValueError(msg)
        self.clamp = clamp
        self.normal_fpr = normal_fpr
        self._normal_scores: list[Tensor] = []

    def checkpoint_config(self) -> dict[str, Any]:
        """The settings anomalib saves, plus ``clamp`` and ``normal_fpr``."""
        return super().checkpoint_config() | {"clamp": self.clamp, "normal_fpr": self.normal_fpr}

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the settings anomalib saves, and ``clamp`` / ``normal_fpr`` where the checkpoint has them."""
        super().load_checkpoint_config(config)
        self.clamp = bool(config.get("clamp", self.clamp))
        self.normal_fpr = config.get("normal_fpr", self.normal_fpr)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:
        """Update the statistics as anomalib does; with ``normal_fpr``, keep normal scores instead of the F1 fit."""
        if self.normal_fpr is None:
            super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
            return
        # anomalib's updates without the image F1 fit, which would only warn that the split holds no anomaly.
        if self.enable_thresholding:
            self._pixel_threshold_metric.update(outputs)
        if self.enable_normalization:
            self._image_min_max_metric.update(outputs)
            self._pixel_min_max_metric.update(outputs)
        if outputs.pred_score is None:
            return
        scores = outputs.pred_score.detach().flatten().float()
        labels = outputs.gt_label
        # Unlabelled images (a folder of normals with no labels at all) count as normal.
        normal = (
            torch.ones_like(scores, dtype=torch.bool) if labels is None else labels.flatten().to(scores.device) == 0
        )
        self._normal_scores.append(scores[normal].cpu())

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """The statistics of anomalib's post-processor, then the normal-only threshold where ``normal_fpr`` is set."""
        super().on_validation_epoch_end(trainer, pl_module)
        if self.normal_fpr is None or not self._normal_scores:
            return
        scores, self._normal_scores = torch.cat(self._normal_scores), []
        if not len(scores):
            return
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, scores)
            scores = torch.cat(gathered)
        self._image_threshold.copy_(normal_threshold(scores, self.normal_fpr))

    def _normalize(
        self,
        preds: torch.Tensor | None,
        norm_min: torch.Tensor,
        norm_max: torch.Tensor,
        threshold: torch.Tensor,
    ) -> torch.Tensor | None:
        if preds is None or self.clamp:
            return PostProcessor._normalize(preds, norm_min, norm_max, threshold)
        threshold = torch.where(torch.isnan(threshold), (norm_max + norm_min) / 2, threshold)
        value_range = norm_max - norm_min
        safe_range = torch.where(value_range == 0, torch.ones_like(value_range), value_range)
        offset = (preds - threshold) / safe_range
        normalized = 0.5 + 0.5 * offset / (1 + offset.abs())
        has_range = ~torch.isnan(norm_min) & ~torch.isnan(norm_max)
        return torch.where(has_range, normalized, preds)


def normal_threshold(normal_scores: Tensor, fpr: float) -> Tensor:
    """The smallest of ``normal_scores`` that at most ``fpr`` of them exceed (labels are ``score > threshold``).

    Example:
        >>> import torch
        >>> float(normal_threshold(torch.tensor([3.0, 1.0, 2.0, 4.0]), 0.25))
        3.0
    """
    ordered = normal_scores.flatten().float().sort().values
    allowed = math.floor(fpr * len(ordered) + 1e-9)  # normals that may lie above the threshold
    return ordered[len(ordered) - 1 - allowed]


FITTED = (PostProcessor, RankPreservingPostProcessor)  # classes whose maths FittedPostProcessor reproduces


def _unchanged(predictions: Tensor) -> Tensor:
    return predictions


def _fixed_statistics(minimum: Tensor, maximum: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(threshold, max - min)`` as both normalisations derive them, or ``None`` where no statistics were fitted."""
    minimum, maximum, threshold = (value.detach().clone() for value in (minimum, maximum, threshold))
    if math.isnan(minimum) or math.isnan(maximum):
        return None
    if math.isnan(threshold):
        threshold = (maximum + minimum) / 2
    return threshold, maximum - minimum


def _fitted_normalisation(minimum: Tensor, maximum: Tensor, threshold: Tensor) -> Callable[[Tensor], Tensor]:
    """``PostProcessor._normalize`` for fixed statistics: only the case they select, with anomalib's arithmetic."""
    if (statistics := _fixed_statistics(minimum, maximum, threshold)) is None:
        return _unchanged
    threshold, value_range = statistics
    if value_range == 0:
        return lambda predictions: torch.where(
            predictions > threshold, 1.0, torch.where(predictions < threshold, 0.0, 0.5)
        )
    return lambda predictions: (((predictions - threshold) / value_range) + 0.5).clamp(min=0, max=1)


def _fitted_rank_preserving(minimum: Tensor, maximum: Tensor, threshold: Tensor) -> Callable[[Tensor], Tensor]:
    """``RankPreservingPostProcessor._normalize`` for fixed statistics, with its arithmetic."""
    if (statistics := _fixed_statistics(minimum, maximum, threshold)) is None:
        return _unchanged
    threshold, value_range = statistics
    safe_range = torch.ones_like(value_range) if value_range == 0 else value_range

    def normalise(predictions: Tensor) -> Tensor:
        offset = (predictions - threshold) / safe_range
        return 0.5 + 0.5 * offset / (1 + offset.abs())

    return normalise


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
        post_processor: A fitted :data:`FITTED` post-processor (the exact class: subclasses may change the maths).

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
        if type(post_processor) not in FITTED:
            msg = (
                "FittedPostProcessor reproduces anomalib's PostProcessor and RankPreservingPostProcessor only, "
                f"not {type(post_processor).__name__}"
            )
            raise TypeError(msg)
        if post_processor.enable_normalization:
            clamps = type(post_processor) is PostProcessor or post_processor.clamp
            fitted = _fitted_normalisation if clamps else _fitted_rank_preserving
            self.normalise_score = fitted(
                post_processor.image_min, post_processor.image_max, post_processor.image_threshold
            )
            self.normalise_map = fitted(
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
    """Temporarily give ``model`` a :class:`FittedPostProcessor` in place of its (:data:`FITTED`) post-processor.

    Post-processors of any other class (or none) are left as they are.

    Args:
        model: The module about to be traced; restored on exit.

    Yields:
        AnomalibModule: ``model``.
    """
    post_processor = model.post_processor
    if type(post_processor) not in FITTED:
        yield model
        return
    try:
        model.post_processor = FittedPostProcessor(post_processor)
        yield model
    finally:
        model.post_processor = post_processor
