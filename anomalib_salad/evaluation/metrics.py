"""Image-level metrics of the SALAD paper's protocol as anomalib metrics.

Sec. IV-B of Zhao et al. (IEEE TMI 2021) reports AUC, F1, accuracy (ACC), sensitivity (SEN) and specificity
(SPE), with the decision threshold "determined based on the best value of F1-score" on the evaluated scores.
This module provides two families of threshold-dependent metrics, all usable in an anomalib
:class:`~anomalib.metrics.Evaluator` with ``fields=[...]`` and a ``prefix``:

* ``BestF1Score``, ``BestF1Accuracy``, ``BestF1Sensitivity``, ``BestF1Specificity``: the paper's protocol.
  They keep every score (the exact, unbinned curve of anomalib's
  :class:`~anomalib.metrics.BinaryPrecisionRecallCurve`, which does not squash scores through a sigmoid) and
  report the statistic at the threshold that maximises F1 on the evaluated set itself. That is an optimistic,
  oracle threshold, as in the paper.
* ``Accuracy``, ``Sensitivity``, ``Specificity`` (with anomalib's ``F1Score``): the same statistics at the
  threshold the post-processor fitted on the validation set, i.e. computed on ``pred_label``.

:class:`AUROC` replaces anomalib's, which is wrong when some batches hold scores outside [0, 1] (torchmetrics
then applies a sigmoid to those batches only). None of these metrics transforms the scores.

:func:`matched_auroc` and :func:`spearman` say how much of a score a nuisance variable explains (on the brain MRI
split, normal and tumour slices differ in mean intensity because they come from different collections).
:class:`NormalBrightnessCorrelation` and :class:`NormalBrightnessShortcut` watch for that shortcut without anomaly
labels: how strongly the score ranks the *normal* validation images by their brightness.

The positive class is the anomalous one (``gt_label == 1``): sensitivity is the recall of anomalies,
specificity the recall of normal images.

Example:
    >>> from anomalib.metrics import Evaluator
    >>> from anomalib_salad.evaluation.metrics import paper_metrics
    >>> evaluator = Evaluator(test_metrics=paper_metrics(prefix="image_"))
    >>> [metric.name for metric in evaluator.test_metrics][:3]
    ['image_AUROC', 'image_BestF1Score', 'image_BestF1Accuracy']
"""

import functools
import logging
import warnings
from collections.abc import Callable, Sequence

import torch
from anomalib.metrics import AnomalibMetric, BinaryPrecisionRecallCurve, F1Score
from anomalib.metrics.auroc import _AUROC
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryAccuracy, BinaryRecall, BinarySpecificity
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.functional.classification.precision_recall_curve import (
    _binary_clf_curve,
    _binary_precision_recall_curve_update,
)
from torchmetrics.utilities.data import dim_zero_cat

logger = logging.getLogger(__name__)

__all__ = [
    "AUROC",
    "Accuracy",
    "BestF1Accuracy",
    "BestF1Score",
    "BestF1Sensitivity",
    "BestF1Specificity",
    "NormalBrightnessCorrelation",
    "NormalBrightnessShortcut",
    "PixelAUROC",
    "Sensitivity",
    "Specificity",
    "best_f1_statistics",
    "image_statistics",
    "matched_auroc",
    "mean_intensity",
    "paper_metrics",
    "spearman",
]


def _ranks(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing their average rank."""
    _, inverse, counts = values.unique(sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()
    return (last - (counts.double() - 1) / 2)[inverse]


def spearman(first: Tensor, second: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (Pearson correlation of their average ranks)."""
    return float(torch.corrcoef(torch.stack([_ranks(first), _ranks(second)]))[0, 1])


def matched_auroc(preds: Tensor, target: Tensor, covariate: Tensor, bins: int = 10) -> float:
    """AUROC over the normal-abnormal pairs that share a quantile bin of ``covariate``, pooled by pair count.

    A score that only reads the covariate (e.g. the mean intensity) falls towards 0.5 (not all the way where the
    classes differ in the covariate within a bin too); one that sees the anomaly itself keeps its AUROC. Bins
    holding one class only contribute no pairs.

    Args:
        preds: Scores, higher meaning more anomalous.
        target: Labels, 1 for anomalous.
        covariate: The nuisance variable, one value per image.
        bins: Number of quantile bins. Defaults to ``10``.

    Returns:
        float: The matched AUROC, or NaN when no bin holds both classes.

    Example:
        >>> import torch
        >>> from torchmetrics.functional.classification import binary_auroc
        >>> brightness = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.8, 0.8, 0.8, 0.8])
        >>> target = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])  # darker images are more often abnormal
        >>> float(binary_auroc(-brightness, target)), matched_auroc(-brightness, target, brightness, bins=2)
        (0.75, 0.5)
    """
    preds = _ranks(preds) / len(preds)  # in (0, 1]: binary_auroc would squash raw scores through a sigmoid
    covariate = covariate.double()
    edges = torch.quantile(covariate, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    strata = torch.bucketize(covariate, edges)
    total, pairs = 0.0, 0
    for stratum in strata.unique():
        inside = strata == stratum
        positives = int(target[inside].sum())
        negatives = int(inside.sum()) - positives
        if positives and negatives:
            total += float(binary_auroc(preds[inside], target[inside])) * positives * negatives
            pairs += positives * negatives
    return total / pairs if pairs else float("nan")


def best_f1_statistics(preds: Tensor, target: Tensor) -> dict[str, Tensor]:
    """F1, accuracy, sensitivity and specificity at the threshold that maximises F1.

    A sample is called anomalous when its score is ``>= threshold``. Every distinct score is a candidate
    threshold; on ties in F1 the highest threshold (fewest positive calls) wins.

    Args:
        preds: Anomaly scores, any shape (flattened); larger means more anomalous.
        target: Ground truth, same number of elements; 1 (or True) is anomalous.

    Returns:
        dict[str, Tensor]: Scalars ``f1``, ``accuracy``, ``sensitivity``, ``specificity``, ``threshold`` and the
        confusion counts ``tp``, ``fp``, ``tn``, ``fn`` at that threshold.

    Raises:
        ValueError: If there are no samples.

    Example:
        >>> import torch
        >>> stats = best_f1_statistics(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        >>> round(float(stats["f1"]), 4), round(float(stats["threshold"]), 4)
        (0.8, 0.35)
    """
    preds, target = preds.flatten(), target.flatten()
    if preds.numel() == 0:
        msg = "best_f1_statistics needs at least one sample"
        raise ValueError(msg)
    if preds.numel() != target.numel():
        msg = f"preds and target differ in size: {preds.numel()} vs {target.numel()}"
        raise ValueError(msg)
    target = (target == 1).long()
    positives = target.sum()
    negatives = target.numel() - positives
    if positives == 0 or negatives == 0:
        logger.warning("best_f1_statistics: the evaluated set holds only one class; SEN or SPE is undefined (0).")
    # torchmetrics' exact curve: cumulative TP/FP counts at each distinct score, in decreasing order.
    fps, tps, thresholds = _binary_clf_curve(preds.float(), target)
    f1 = 2 * tps / (tps + fps + positives)  # = 2TP / (2TP + FP + FN); the denominator is >= 1
    best = torch.argmax(f1)  # first maximum = highest threshold
    tp, fp = tps[best].long(), fps[best].long()
    fn, tn = positives - tp, negatives - fp
    total = positives + negatives
    return {
        "f1": f1[best].float(),
        "accuracy": ((tp + tn) / total).float(),
        "sensitivity": (tp / positives).float() if positives > 0 else torch.tensor(0.0),
        "specificity": (tn / negatives).float() if negatives > 0 else torch.tensor(0.0),
        "threshold": thresholds[best],
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def mean_intensity(images: Tensor) -> Tensor:
    """Each image's mean intensity (``(N, C, H, W)`` in ``[0, 1]``) on the CPU: :func:`matched_auroc`'s covariate."""
    return images.float().mean(dim=(1, 2, 3)).cpu()


def image_statistics(preds: Tensor, target: Tensor, covariate: Tensor | None = None) -> dict[str, float]:
    """The paper's image-level numbers of a set of scores, as plain floats.

    Args:
        preds: Raw anomaly scores, one per image.
        target: Labels, 1 for anomalous.
        covariate: A nuisance variable per image (e.g. :func:`mean_intensity`) for :func:`matched_auroc`.
            Defaults to ``None`` (no matched AUROC).

    Returns:
        dict[str, float]: ``auroc``, ``matched_auroc`` (with a ``covariate``), and ``f1``, ``accuracy``,
        ``sensitivity``, ``specificity`` and ``threshold`` at the best-F1 threshold (:func:`best_f1_statistics`).
    """
    result = {"auroc": float(binary_auroc(preds, target))}
    if covariate is not None:
        result["matched_auroc"] = matched_auroc(preds, target, covariate)
    stats = best_f1_statistics(preds, target)
    return result | {key: float(stats[key]) for key in ("f1", "accuracy", "sensitivity", "specificity", "threshold")}


class _RawScoreAUROC(_AUROC):
    """anomalib's AUROC without torchmetrics' per-batch sigmoid.

    torchmetrics squashes a batch through a sigmoid when any of its scores lies outside [0, 1], and leaves the
    next batch alone if its scores lie inside: scores of different batches then live on different scales and
    the AUROC is wrong (e.g. batches ``[2.0, 3.0]`` and ``[0.9, 0.1]`` with labels ``[0, 1]``, ``[1, 0]`` give 1.0
    instead of 0.75). That happens with raw or unclamped scores; here scores are stored as they are.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Store a batch of scores and labels unchanged (flattened).

        Args:
            preds: Anomaly scores, any real values.
            target: Ground-truth labels, 1 = anomalous.
        """
        state = _binary_precision_recall_curve_update(preds.flatten().float(), target.flatten().long(), self.thresholds)
        if isinstance(state, Tensor):
            self.confmat += state
        else:
            self.preds.append(state[0])
            self.target.append(state[1])


class AUROC(AnomalibMetric, _RawScoreAUROC):  # type: ignore[misc]
    """Image AUROC that is exact for scores on any scale; a drop-in for ``anomalib.metrics.AUROC``.

    anomalib 2.7's ``AUROC`` is only right when every batch's scores lie in [0, 1] (anomalib's clamped
    normalisation guarantees that); this one also takes raw scores.

    Example:
        >>> import torch
        >>> from anomalib.data import ImageBatch
        >>> auroc = AUROC(fields=["pred_score", "gt_label"])
        >>> auroc.update(ImageBatch(image=torch.zeros(2, 3, 4, 4), pred_score=torch.tensor([2.0, 3.0]),
        ...                         gt_label=torch.tensor([0, 1])))
        >>> auroc.update(ImageBatch(image=torch.zeros(2, 3, 4, 4), pred_score=torch.tensor([0.9, 0.1]),
        ...                         gt_label=torch.tensor([1, 0])))
        >>> float(auroc.compute())
        0.75
    """


class PixelAUROC(AUROC):  # type: ignore[misc]
    """Pixel AUROC of ``anomaly_map`` against ``gt_mask`` that is quietly ``None`` on data without masks.

    Most medical sets are classification folders with no masks. anomalib's ``strict=False`` then skips every
    update, and torchmetrics would warn at compute that the states were never updated, as if something had gone
    wrong. This metric returns ``None`` (nothing is logged) without that warning; states are still synchronised
    across DDP ranks exactly as for any metric.

    Example:
        >>> import torch
        >>> from anomalib.data import ImageBatch
        >>> pixel = PixelAUROC()
        >>> pixel.update(ImageBatch(image=torch.zeros(2, 3, 4, 4), gt_label=torch.tensor([0, 1])))
        >>> pixel.compute() is None
        True
    """

    def __init__(self, prefix: str = "pixel_", **kwargs) -> None:
        super().__init__(fields=["anomaly_map", "gt_mask"], prefix=prefix, strict=False, **kwargs)
        self.name = f"{prefix}AUROC"  # logged under anomalib's usual key, not the class name

    def _wrap_compute(self, compute: Callable) -> Callable:
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def quiet_without_masks(*args, **kwargs) -> Tensor | None:
            with warnings.catch_warnings():
                if not self.update_called:  # the skipped updates were expected: there are no masks
                    warnings.filterwarnings("ignore", message="The ``compute`` method of metric", category=UserWarning)
                return wrapped(*args, **kwargs)

        return quiet_without_masks


class _BestF1Statistic(BinaryPrecisionRecallCurve):
    """One statistic at the best-F1 threshold, on the exact (unbinned) score curve.

    Subclasses set ``statistic`` to a key of :func:`best_f1_statistics`. After ``compute()`` the chosen
    threshold is in ``self.threshold``.
    """

    statistic: str
    full_state_update: bool = False

    def __init__(self, **kwargs) -> None:
        # thresholds=None keeps every score: the optimum is exact, not snapped to a bin.
        super().__init__(thresholds=None, **kwargs)
        self.threshold: Tensor = torch.tensor(float("nan"))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Store a batch of scores and labels (flattened; booleans become floats).

        Args:
            preds: Anomaly scores.
            target: Ground-truth labels, 1 = anomalous.
        """
        super().update(preds.flatten().float(), target.flatten().long())

    def compute(self) -> Tensor:
        """The statistic at the threshold that maximises F1 over everything seen so far."""
        stats = best_f1_statistics(dim_zero_cat(self.preds), dim_zero_cat(self.target))
        self.threshold = stats["threshold"]
        return stats[self.statistic]


class _BestF1Score(_BestF1Statistic):
    statistic = "f1"


class _BestF1Accuracy(_BestF1Statistic):
    statistic = "accuracy"


class _BestF1Sensitivity(_BestF1Statistic):
    statistic = "sensitivity"


class _BestF1Specificity(_BestF1Statistic):
    statistic = "specificity"


class BestF1Score(AnomalibMetric, _BestF1Score):  # type: ignore[misc]
    """Maximum F1 over all thresholds of the evaluated scores (the paper's F1).

    Same value as anomalib's ``F1Max``; kept here so that the four best-F1 statistics share one definition.

    Example:
        >>> import torch
        >>> from anomalib.data import ImageBatch
        >>> metric = BestF1Score(fields=["pred_score", "gt_label"], prefix="image_")
        >>> metric.update(ImageBatch(image=torch.rand(4, 3, 8, 8), pred_score=torch.tensor([0.1, 0.4, 0.35, 0.8]),
        ...                          gt_label=torch.tensor([0, 0, 1, 1])))
        >>> round(float(metric.compute()), 4), metric.name
        (0.8, 'image_BestF1Score')
    """


class BestF1Accuracy(AnomalibMetric, _BestF1Accuracy):  # type: ignore[misc]
    """Accuracy (ACC) at the threshold that maximises F1 on the evaluated scores."""


class BestF1Sensitivity(AnomalibMetric, _BestF1Sensitivity):  # type: ignore[misc]
    """Sensitivity (SEN, recall of anomalies) at the threshold that maximises F1 on the evaluated scores."""


class BestF1Specificity(AnomalibMetric, _BestF1Specificity):  # type: ignore[misc]
    """Specificity (SPE, recall of normal images) at the threshold that maximises F1 on the evaluated scores."""


class Accuracy(AnomalibMetric, BinaryAccuracy):  # type: ignore[misc]
    """torchmetrics ``BinaryAccuracy`` for anomalib batches; use ``fields=["pred_label", "gt_label"]``."""


class Sensitivity(AnomalibMetric, BinaryRecall):  # type: ignore[misc]
    """torchmetrics ``BinaryRecall`` (true positive rate) for anomalib batches; use on ``pred_label``."""


class Specificity(AnomalibMetric, BinarySpecificity):  # type: ignore[misc]
    """torchmetrics ``BinarySpecificity`` (true negative rate) for anomalib batches; use on ``pred_label``."""


class _NormalBrightnessCorrelation(Metric):
    """Spearman correlation of the score with mean image intensity, over the normal images only."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("brightness", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, images: Tensor) -> None:
        """Keep the score and the mean intensity of each normal image (``target == 0``); drop the images."""
        normal = target.flatten() == 0
        self.scores.append(preds.detach().flatten()[normal].float())
        self.brightness.append(images.detach()[normal].float().mean(dim=tuple(range(1, images.ndim))))

    def compute(self) -> Tensor:
        """The correlation, or NaN with a warning when fewer than three normal images were seen."""
        scores, brightness = dim_zero_cat(self.scores), dim_zero_cat(self.brightness)
        if len(scores) < 3:
            logger.warning("%s: %d normal images are too few for a correlation", type(self).__name__, len(scores))
            return torch.tensor(float("nan"))
        return torch.tensor(spearman(scores.cpu(), brightness.cpu()))


class NormalBrightnessCorrelation(AnomalibMetric, _NormalBrightnessCorrelation):  # type: ignore[misc]
    """How much the anomaly score ranks normal images by brightness: Spearman's rho over the normal images only.

    Needs no anomaly label: only the normal images of the set (e.g. held-out normal scans in the validation
    split) are used. Near 0 is healthy. A value that climbs towards 1 during training means the score has learnt
    to call brighter scans more anomalous, a shortcut that follows the scanner or collection rather than the
    anatomy (on the brain MRI split it went with a fall of A_F from 0.8 to 0.55; docs/results.md). The image
    field is the pre-processed one; any increasing affine intensity scaling leaves the ranks unchanged.

    Example:
        >>> import torch
        >>> from anomalib.data import ImageBatch
        >>> images = torch.linspace(0, 1, 6).view(6, 1, 1, 1).expand(6, 3, 4, 4)
        >>> batch = ImageBatch(image=images, gt_label=torch.tensor([0, 0, 0, 0, 1, 1]),
        ...                    pred_score=torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0, 0.0]))
        >>> metric = NormalBrightnessCorrelation(prefix="image_")
        >>> metric.update(batch)
        >>> metric.name, round(float(metric.compute()), 3)  # brighter normal images score higher
        ('image_NormalBrightnessCorrelation', 1.0)
    """

    default_fields = ("pred_score", "gt_label", "image")


class NormalBrightnessShortcut(NormalBrightnessCorrelation):  # type: ignore[misc]
    """The size of :class:`NormalBrightnessCorrelation`, |rho|: a label-free checkpoint rule monitors its minimum.

    On the brain MRI split the validation epoch where it was smallest gave A_F 0.79 and 0.81 on two seeds, against
    0.55 and 0.58 after the last epoch (docs/results.md). Use it with Lightning's ``ModelCheckpoint(monitor=
    "image_NormalBrightnessShortcut", mode="min")``.
    """

    def compute(self) -> Tensor:
        """|rho| (NaN stays NaN)."""
        return super().compute().abs()


def paper_metrics(
    prefix: str = "image_",
    score_field: str = "pred_score",
    label_field: str = "pred_label",
    target_field: str = "gt_label",
    strict: bool = True,
) -> list[AnomalibMetric]:
    """AUROC, the four statistics at the best-F1 threshold, and the four at the fitted threshold.

    Names (with the default prefix): ``image_AUROC`` (this module's :class:`AUROC`, exact on any score scale);
    ``image_BestF1Score``, ``image_BestF1Accuracy``, ``image_BestF1Sensitivity``, ``image_BestF1Specificity``
    (paper protocol, on ``score_field``);
    ``image_F1Score``, ``image_Accuracy``, ``image_Sensitivity``, ``image_Specificity`` (anomalib's threshold
    fitted on the validation set, on ``label_field``).

    Args:
        prefix: Prefix of every metric name. Defaults to ``"image_"``.
        score_field: Batch field with the anomaly scores. Defaults to ``"pred_score"``.
        label_field: Batch field with the thresholded predictions. Defaults to ``"pred_label"``.
        target_field: Batch field with the ground truth. Defaults to ``"gt_label"``.
        strict: Raise when a batch lacks a field (else the metric is skipped). Defaults to ``True``.

    Returns:
        list[AnomalibMetric]: Nine metrics, for ``Evaluator(test_metrics=...)``.
    """
    scores: Sequence[str] = [score_field, target_field]
    labels: Sequence[str] = [label_field, target_field]
    common = {"prefix": prefix, "strict": strict}
    return [
        AUROC(fields=scores, **common),
        BestF1Score(fields=scores, **common),
        BestF1Accuracy(fields=scores, **common),
        BestF1Sensitivity(fields=scores, **common),
        BestF1Specificity(fields=scores, **common),
        F1Score(fields=labels, **common),
        Accuracy(fields=labels, **common),
        Sensitivity(fields=labels, **common),
        Specificity(fields=labels, **common),
    ]
