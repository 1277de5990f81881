"""Raw image scores of a trained model on a test set, with each anomaly score of SALAD's Table V.

The three scores of a trained SALAD differ only at test time, so one model gives all three in one pass: A_F
``|E(x) - E(D(E(x)))|`` (the paper's), A_I ``|x - D(E(x))|`` and A_C ``|E(x) - C|``. Any other anomalib image model
(GANomaly) is scored by its own ``pred_score``. The scores are the model's raw ones, before the post-processor
normalises them, so AUROC and the best-F1 statistics (:func:`~anomalib_salad.evaluation.metrics.image_statistics`)
are those of the model itself. The scripts in ``benchmarks/`` score with these.
"""

from collections.abc import Iterable

import torch
from anomalib.data import Batch
from lightning.pytorch import LightningModule
from torch import Tensor

from ..model.lightning_model import Salad

__all__ = ["OWN_SCORE", "SCORES", "SYMBOLS", "raw_scores", "scores_of"]

#: SALAD's anomaly scores by their ``Salad(score=...)`` name: the paper's symbol and the formula.
SCORES = {"feature": "A_F |E(x) - E(D(E(x)))|", "image": "A_I |x - D(E(x))|", "center": "A_C |E(x) - C|"}
#: The paper's symbol of each score (``"A_F"``, ...).
SYMBOLS = {name: label.split(" ", 1)[0] for name, label in SCORES.items()}
OWN_SCORE = {"score": "its own pred_score"}  # any other anomalib image model (GANomaly)


def scores_of(model: LightningModule) -> dict[str, str]:
    """Table V's three scores for SALAD (and the SSIM autoencoder, the same class), the model's own score otherwise."""
    return SCORES if isinstance(model, Salad) else OWN_SCORE


@torch.no_grad()
def raw_scores(
    model: Salad, dataloader: Iterable[Batch], scores: Iterable[str], normal_brightness: float = 1.0
) -> tuple[dict[str, Tensor], Tensor]:
    """Raw (unnormalised) image scores of ``model`` with each anomaly score, and the labels.

    Args:
        model: A trained Salad (its ``model.score`` is switched per name and restored), or another anomalib image
            model scored by its own ``pred_score`` (name ``"score"``, :data:`OWN_SCORE`).
        dataloader: Batches with ``image`` (in [0, 1]) and ``gt_label``.
        scores: Names from :data:`SCORES`, or ``["score"]``.
        normal_brightness: Factor applied to the intensities of the normal images (``gt_label == 0``) before the
            pre-processor, clipped to [0, 1]; anomalous images are unchanged. Defaults to ``1.0`` (none).

    Returns:
        tuple[dict[str, Tensor], Tensor]: Scores by name, and the ``0/1`` labels.
    """
    values: dict[str, list[Tensor]] = {name: [] for name in scores}
    labels = []
    own = getattr(model.model, "score", None)
    try:
        for batch in dataloader:
            images = batch.image
            if "score" in values:  # anomalib's image models take three channels; the cache keeps grayscale as one
                images = images.expand(-1, 3, -1, -1)
            if normal_brightness != 1.0:
                normal = (batch.gt_label == 0).view(-1, 1, 1, 1)
                images = torch.where(normal, (images * normal_brightness).clamp(0, 1), images)
            images = model.pre_processor.transform(images)  # as validation sees them (an antialiased resize too)
            for name, collected in values.items():
                if name != "score":
                    model.model.score = name
                collected.append(model.model(images).pred_score.flatten().float().cpu())
            labels.append(batch.gt_label)
    finally:
        if own is not None:
            model.model.score = own
    return {name: torch.cat(collected) for name, collected in values.items()}, torch.cat(labels).int()
