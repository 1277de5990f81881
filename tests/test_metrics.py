"""Tests of anomalib_salad.evaluation.metrics on small inputs whose expected values are worked out by hand below."""

import warnings

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import Evaluator
from torchmetrics.functional.classification import binary_auroc

from anomalib_salad.evaluation.metrics import (
    AUROC,
    Accuracy,
    BestF1Accuracy,
    BestF1Score,
    BestF1Sensitivity,
    BestF1Specificity,
    NormalBrightnessCorrelation,
    NormalBrightnessShortcut,
    PixelAUROC,
    Sensitivity,
    Specificity,
    best_f1_statistics,
    matched_auroc,
    paper_metrics,
    spearman,
)

# Six images, three anomalous (label 1). Sorted by score, highest first:
#   0.80 (1), 0.60 (1), 0.40 (0), 0.35 (1), 0.20 (0), 0.10 (0)
# Calling ">= t" anomalous, with P = N = 3:
#   t=0.80: TP=1 FP=0 -> F1 = 2/(2+0+2) = 0.5
#   t=0.60: TP=2 FP=0 -> F1 = 4/(4+0+1) = 0.8
#   t=0.40: TP=2 FP=1 -> F1 = 4/(4+1+1) = 0.667
#   t=0.35: TP=3 FP=1 -> F1 = 6/(6+1+0) = 0.857   <- best
#   t=0.20: TP=3 FP=2 -> F1 = 6/8 = 0.75
#   t=0.10: TP=3 FP=3 -> F1 = 6/9 = 0.667
SCORES = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.6, 0.2])
LABELS = torch.tensor([0, 0, 1, 1, 1, 0])


def confusion_statistics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    return {
        "f1": 2 * tp / (2 * tp + fp + fn),
        "accuracy": (tp + tn) / (tp + fp + tn + fn),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
    }


BEST = confusion_statistics(tp=3, fp=1, tn=2, fn=0)  # at t = 0.35


def batch(scores: torch.Tensor, labels: torch.Tensor, pred_label: torch.Tensor | None = None) -> ImageBatch:
    return ImageBatch(
        image=torch.rand(len(scores), 3, 8, 8),
        gt_label=labels.bool(),
        pred_score=scores,
        pred_label=pred_label,
    )


def test_best_f1_statistics_by_hand() -> None:
    stats = best_f1_statistics(SCORES, LABELS)
    assert stats["threshold"].item() == pytest.approx(0.35)
    assert (stats["tp"].item(), stats["fp"].item(), stats["tn"].item(), stats["fn"].item()) == (3, 1, 2, 0)
    for key, value in BEST.items():
        assert stats[key].item() == pytest.approx(value), key


def test_best_f1_tie_prefers_the_higher_threshold() -> None:
    # 0.9 (1), 0.5 (0), 0.3 (0), 0.1 (1); P = N = 2.
    #   t=0.9: TP=1 FP=0 FN=1 -> F1 = 2/3
    #   t=0.5: TP=1 FP=1 FN=1 -> F1 = 1/2
    #   t=0.3: TP=1 FP=2 FN=1 -> F1 = 2/5
    #   t=0.1: TP=2 FP=2 FN=0 -> F1 = 4/6 = 2/3   (tie with t=0.9)
    stats = best_f1_statistics(torch.tensor([0.9, 0.5, 0.3, 0.1]), torch.tensor([1, 0, 0, 1]))
    assert stats["f1"].item() == pytest.approx(2 / 3)
    assert stats["threshold"].item() == pytest.approx(0.9)
    assert stats["specificity"].item() == pytest.approx(1.0)
    assert stats["sensitivity"].item() == pytest.approx(0.5)


def test_tied_scores_across_classes_form_one_threshold() -> None:
    # 0.7 (1), 0.5 (1), 0.5 (0), 0.2 (0): the two 0.5s are called together.
    #   t=0.7: TP=1 FP=0 FN=1 -> F1 = 2/3;  t=0.5: TP=2 FP=1 FN=0 -> F1 = 4/5 (best);  t=0.2: F1 = 4/6
    stats = best_f1_statistics(torch.tensor([0.7, 0.5, 0.5, 0.2]), torch.tensor([1, 1, 0, 0]))
    assert stats["f1"].item() == pytest.approx(4 / 5)
    assert stats["specificity"].item() == pytest.approx(1 / 2)
    assert stats["accuracy"].item() == pytest.approx(3 / 4)


def test_scores_outside_unit_interval_are_not_squashed() -> None:
    # torchmetrics applies a sigmoid to scores outside [0, 1]; the threshold must stay in score units.
    stats = best_f1_statistics(SCORES * 100 - 20, LABELS)
    assert stats["threshold"].item() == pytest.approx(0.35 * 100 - 20)
    assert stats["f1"].item() == pytest.approx(BEST["f1"])


def test_scores_on_different_scales_in_different_batches() -> None:
    # Batch 1 lies outside [0, 1], batch 2 inside. Pairs (anomalous, normal): (3.0, 2.0) ok, (3.0, 0.1) ok,
    # (0.9, 2.0) wrong, (0.9, 0.1) ok -> AUROC 3/4. torchmetrics would put batch 1 alone through a sigmoid.
    batches = [(torch.tensor([2.0, 3.0]), torch.tensor([0, 1])), (torch.tensor([0.9, 0.1]), torch.tensor([1, 0]))]
    auroc = AUROC(fields=["pred_score", "gt_label"])
    best_f1 = BestF1Score(fields=["pred_score", "gt_label"])
    for scores, labels in batches:
        auroc.update(batch(scores, labels))
        best_f1.update(batch(scores, labels))
    assert auroc.compute().item() == pytest.approx(3 / 4)
    # Best F1 by hand: t=3.0: TP=1 FP=0 FN=1 -> 2/3; t=2.0: TP=1 FP=1 FN=1 -> 1/2; t=0.9: TP=2 FP=1 -> 4/5.
    assert best_f1.compute().item() == pytest.approx(4 / 5)
    assert best_f1.threshold.item() == pytest.approx(0.9)


def test_pixel_auroc_is_quietly_none_without_masks_and_exact_with_them() -> None:
    image = torch.zeros(2, 3, 2, 2)
    without_masks = PixelAUROC()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics' "compute ... before the update" warning would fail here
        without_masks.update(ImageBatch(image=image, gt_label=torch.tensor([0, 1]), anomaly_map=torch.rand(2, 2, 2)))
        assert without_masks.compute() is None
    # With masks: 8 pixels, the two anomalous ones scored 0.9 and 0.3 among normals at 0.1, 0.2, 0.4, ...
    maps = torch.tensor([[[0.1, 0.2], [0.4, 0.5]], [[0.9, 0.3], [0.6, 0.7]]])
    masks = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [0, 0]]], dtype=torch.bool)
    with_masks = PixelAUROC()
    with_masks.update(ImageBatch(image=image, gt_label=torch.tensor([0, 1]), anomaly_map=maps, gt_mask=masks))
    # 0.9 beats all 6 normals, 0.3 beats 0.1 and 0.2: (6 + 2) / (2 * 6)
    assert with_masks.compute().item() == pytest.approx(8 / 12)
    assert with_masks.name == "pixel_AUROC"


def test_single_class_does_not_crash() -> None:
    stats = best_f1_statistics(torch.tensor([0.2, 0.3]), torch.tensor([0, 0]))
    assert stats["sensitivity"].item() == 0.0
    assert stats["f1"].item() == 0.0


@pytest.mark.parametrize(
    ("metric_class", "key"),
    [
        (BestF1Score, "f1"),
        (BestF1Accuracy, "accuracy"),
        (BestF1Sensitivity, "sensitivity"),
        (BestF1Specificity, "specificity"),
    ],
)
def test_best_f1_metrics_accumulate_batches(metric_class: type, key: str) -> None:
    metric = metric_class(fields=["pred_score", "gt_label"], prefix="image_")
    metric.update(batch(SCORES[:4], LABELS[:4]))
    metric.update(batch(SCORES[4:], LABELS[4:]))
    assert metric.name == f"image_{metric_class.__name__}"
    assert metric.compute().item() == pytest.approx(BEST[key])
    assert metric.threshold.item() == pytest.approx(0.35)
    metric.reset()
    metric.update(batch(torch.tensor([0.9, 0.1]), torch.tensor([1, 0])))
    assert metric.compute().item() == pytest.approx(1.0)  # perfect separation after reset


def test_fitted_threshold_metrics_on_pred_label() -> None:
    # pred_label from a fitted threshold of 0.5: called anomalous are 0.8 and 0.6 (both true anomalies).
    pred_label = SCORES > 0.5
    # TP=2 (0.8, 0.6), FP=0, FN=1 (0.35), TN=3
    expected = confusion_statistics(tp=2, fp=0, tn=3, fn=1)
    values = {}
    for metric_class, key in ((Accuracy, "accuracy"), (Sensitivity, "sensitivity"), (Specificity, "specificity")):
        metric = metric_class(fields=["pred_label", "gt_label"], prefix="image_")
        metric.update(batch(SCORES, LABELS, pred_label))
        values[key] = metric.compute().item()
    assert values == pytest.approx({k: expected[k] for k in ("accuracy", "sensitivity", "specificity")})


def test_paper_metrics_in_an_evaluator() -> None:
    metrics = paper_metrics(prefix="image_")
    evaluator = Evaluator(test_metrics=metrics)
    names = [metric.name for metric in evaluator.test_metrics]
    assert names == [
        "image_AUROC",
        "image_BestF1Score",
        "image_BestF1Accuracy",
        "image_BestF1Sensitivity",
        "image_BestF1Specificity",
        "image_F1Score",
        "image_Accuracy",
        "image_Sensitivity",
        "image_Specificity",
    ]
    pred_label = SCORES > 0.5
    for metric in metrics:
        metric.update(batch(SCORES, LABELS, pred_label))
    values = {metric.name: metric.compute().item() for metric in metrics}
    # AUROC by hand: of the 3x3 (anomalous, normal) pairs only (0.35, 0.40) is ordered wrongly -> 8/9.
    assert values["image_AUROC"] == pytest.approx(8 / 9)
    assert values["image_BestF1Score"] == pytest.approx(BEST["f1"])
    assert values["image_BestF1Specificity"] == pytest.approx(BEST["specificity"])
    fitted = confusion_statistics(tp=2, fp=0, tn=3, fn=1)
    assert values["image_F1Score"] == pytest.approx(fitted["f1"])
    assert values["image_Sensitivity"] == pytest.approx(fitted["sensitivity"])


def test_paper_metrics_custom_fields_and_prefix() -> None:
    metrics = paper_metrics(prefix="val_", score_field="anomaly_score")
    assert metrics[0].name == "val_AUROC"
    assert list(metrics[1].fields) == ["anomaly_score", "gt_label"]
    assert list(metrics[-1].fields) == ["pred_label", "gt_label"]


def test_intensity_matched_auroc_removes_a_brightness_shortcut() -> None:
    generator = torch.Generator().manual_seed(0)
    brightness = torch.rand(2000, generator=generator, dtype=torch.float64)
    labels = (torch.rand(2000, generator=generator, dtype=torch.float64) < 1 - brightness).long()  # darker: abnormal
    lesion = labels + 0.5 * torch.randn(2000, generator=generator, dtype=torch.float64)  # sees the anomaly itself
    reads_brightness = -brightness
    assert float(binary_auroc(reads_brightness, labels)) > 0.75
    assert matched_auroc(reads_brightness, labels, brightness) == pytest.approx(0.5, abs=0.06)
    assert matched_auroc(lesion, labels, brightness) == pytest.approx(float(binary_auroc(lesion, labels)), abs=0.03)
    assert spearman(reads_brightness, brightness) == pytest.approx(-1.0)
    # Ties share their average rank: ranks (1.5, 1.5, 3) against (1, 2, 3).
    assert spearman(torch.tensor([5.0, 5.0, 9.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.75**0.5)
    # Raw scores far above 1 keep their order (binary_auroc alone would squash them through a sigmoid into ties).
    big = 100 + 10 * lesion
    assert matched_auroc(big, labels, brightness) == pytest.approx(matched_auroc(lesion, labels, brightness))


def test_normal_brightness_correlation_reads_normal_images_only() -> None:
    """Abnormal images never count; the value is Spearman's rho over all batches; its size is the shortcut."""
    correlation, shortcut = NormalBrightnessCorrelation(), NormalBrightnessShortcut()
    brightness = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.7, 0.2])
    scores = -(brightness**3)  # darker normal images score higher: rho = -1 whatever the scale
    labels = torch.tensor([0, 0, 0, 0, 0, 0])
    for part in (slice(0, 4), slice(4, 6)):
        images = brightness[part].view(-1, 1, 1, 1).expand(-1, 3, 8, 8)
        # Abnormal images that would flip the sign if they were counted.
        batch = ImageBatch(
            image=torch.cat([images, torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 3, 8, 8)]),
            gt_label=torch.cat([labels[part], torch.tensor([1, 1])]),
            pred_score=torch.cat([scores[part], torch.tensor([-5.0, 5.0])]),
        )
        correlation.update(batch)
        shortcut.update(batch)
    assert float(correlation.compute()) == pytest.approx(-1.0)
    assert float(shortcut.compute()) == pytest.approx(1.0)
    assert shortcut.name == "NormalBrightnessShortcut"


def test_normal_brightness_correlation_with_too_few_normal_images_is_nan() -> None:
    metric = NormalBrightnessCorrelation()
    metric.update(
        ImageBatch(
            image=torch.rand(3, 3, 8, 8), gt_label=torch.tensor([0, 0, 1]), pred_score=torch.tensor([0.1, 0.2, 0.3])
        )
    )
    assert torch.isnan(metric.compute())
