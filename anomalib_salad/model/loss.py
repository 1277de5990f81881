"""SALAD's loss terms (Section III-D of the paper) and the weighted generator objective.

Generator side: ``L = alpha*L_adv + beta*L_str + gamma*L_fea + delta*L_ct + eta*L_self`` (eq. 9).
Discriminator side: least-squares GAN losses with ``a = 0`` and ``b = 1`` (eqs. 1 and 2).
The Table III alternatives are here too: plain L1 in place of the SSIM structure loss, and a KL term in
place of the center loss.
"""

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from kornia.metrics import ssim
from torch import Tensor, nn

__all__ = [
    "L1_MATCHED",
    "TERMS",
    "CenterLoss",
    "GeneratorLoss",
    "LatentKLLoss",
    "StructureLoss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "least_squares",
]

#: Names of the generator-side terms, in the order of eq. (9); also the suffixes of the logged losses.
TERMS = ("adv", "str", "fea", "ct", "self")


def least_squares(prediction: Tensor, target: float) -> Tensor:
    """``1/2 * E|prediction - target|^2``, one half of an LSGAN objective."""
    return 0.5 * (prediction - target).pow(2).mean()


def discriminator_loss(real: Tensor, fake: Tensor, real_label: float = 1.0, fake_label: float = 0.0) -> Tensor:
    """LSGAN discriminator loss, eqs. (1) and (2): fakes pushed to ``a``, real samples to ``b``.

    Args:
        real: Discriminator output on real samples (images ``x`` for D_I, ``z ~ N(0, I)`` for D_F).
        fake: Discriminator output on generated samples (``D(z)`` for D_I, ``E(x)`` for D_F).
        real_label: ``b``. Defaults to ``1``.
        fake_label: ``a``. Defaults to ``0``.
    """
    return least_squares(fake, fake_label) + least_squares(real, real_label)


def generator_adversarial_loss(*fake_predictions: Tensor, target: float = 1.0) -> Tensor:
    """L_adv, eq. (3): each discriminator's output on generated samples pushed to ``c``."""
    return sum((least_squares(p, target) for p in fake_predictions), start=torch.zeros(()))


class StructureLoss(nn.Module):
    """L_str, eq. (4): ``1 - SSIM(x, x_hat)`` (kornia's SSIM), or plain L1 for the Table III ablation.

    ``1 - SSIM`` has the gradient of the paper's ``-SSIM`` and stays non-negative in the logs.

    Args:
        kind: ``"ssim"`` (the paper) or ``"l1"``. Defaults to ``"ssim"``.
        window_size: SSIM Gaussian window. Defaults to ``11`` (Wang et al. 2004).
        data_range: Intensity range of the images. Defaults to ``2.0`` for ``[-1, 1]``, so the constants are
            ``c1 = (0.01 * 2)^2`` and ``c2 = (0.03 * 2)^2``.
    """

    def __init__(self, kind: Literal["ssim", "l1"] = "ssim", window_size: int = 11, data_range: float = 2.0) -> None:
        super().__init__()
        if kind not in {"ssim", "l1"}:
            msg = f"structure loss must be 'ssim' or 'l1', got {kind!r}"
            raise ValueError(msg)
        self.kind = kind
        self.window_size = window_size
        self.data_range = data_range

    def forward(self, images: Tensor, reconstructions: Tensor) -> Tensor:
        """Dissimilarity of reconstructions to images, a scalar."""
        if self.kind == "l1":
            return F.l1_loss(reconstructions, images)
        return 1 - ssim(images, reconstructions, self.window_size, max_val=self.data_range).mean()


class CenterLoss(nn.Module):
    """L_ct, eq. (7): ``1/2 * ||z - C||^2`` per sample, averaged over the batch.

    The center is not learned by gradient descent but moved after each step by the rule of Wen et al.
    (2016): ``C <- C - rate * sum_i (C - z_i) / (1 + m)`` over the ``m`` samples of the batch. Under
    distributed training the sums run over every process, so all ranks hold the same center.

    Args:
        rate: Center update rate (Wen et al.'s alpha). Defaults to ``0.5``.
    """

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        if not 0 <= rate <= 1:
            msg = f"center rate must be in [0, 1], got {rate}"
            raise ValueError(msg)
        self.rate = rate

    def forward(self, latent: Tensor, center: Tensor) -> Tensor:
        """Half squared distance of each latent to the center, averaged over the batch."""
        return 0.5 * (latent - center).pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def update_center(self, center: Tensor, latent: Tensor) -> None:
        """Move ``center`` in place towards this step's (detached) latents.

        Args:
            center: The ``(n,)`` center buffer.
            latent: This step's ``(m, n)`` latents.
        """
        stats = torch.cat([(center - latent.detach().to(center.dtype)).sum(dim=0), center.new_tensor([len(latent)])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        center.sub_(self.rate * stats[:-1] / (1 + stats[-1]))


class LatentKLLoss(nn.Module):
    """KL(N(mu, diag(var)) || N(0, I)) of the batch's latent statistics: the L_KL of Table III.

    SALAD's encoder is deterministic, so the Gaussian is fitted to the batch: ``mu`` and ``var`` are the
    per-dimension mean and variance over the batch.
    """

    def forward(self, latent: Tensor, center: Tensor | None = None) -> Tensor:
        """KL divergence in nats, summed over latent dimensions."""
        del center
        mean = latent.mean(dim=0)
        var = latent.var(dim=0, unbiased=False).clamp(min=1e-6)
        return 0.5 * (mean.pow(2) + var - var.log() - 1).sum()


#: ``structure_weight`` value that sizes L_str like an L1 image error at the paper's weight (:class:`GeneratorLoss`).
L1_MATCHED = "l1_matched"


class GeneratorLoss(nn.Module):
    """Eq. (9): ``L = alpha*L_adv + beta*L_str + gamma*L_fea + delta*L_ct + eta*L_self``.

    Which terms are computed at all (and so which networks exist) is decided by the model from the weights
    (:attr:`anomalib_salad.Salad.active_terms`); a term that was not computed counts as zero here.

    ``structure_weight="l1_matched"`` (not in the paper) makes beta follow the training data: ``10 * r`` with ``r``
    the running ratio of the L1 image error to L_str on the training batches (:meth:`match`, an exponential
    average), so that ``beta * L_str`` is as large as an L1 structure term at the paper's weight would be. 1 - SSIM
    and L1 have different scales (about 0.47 against 0.17 on fitted brain MRI slices), so at one weight the SSIM
    term has more say against the other four terms than Table III's L1 term; matching their sizes leaves only the
    form of the loss to differ. Measured from normal training images only; ``r`` is saved with the model.

    Args:
        adv_weight: alpha, weight of L_adv. Defaults to ``1``.
        structure_weight: beta, weight of L_str, or ``"l1_matched"``. Defaults to ``10``.
        feature_weight: gamma, weight of L_fea. Defaults to ``10``.
        center_weight: delta, weight of L_ct (or of L_KL). Defaults to ``10``.
        restoration_weight: eta, weight of L_self. Defaults to ``10``.
        momentum: Weight of the past in the running ratio of ``"l1_matched"`` (per step). Defaults to ``0.99``.

    Example:
        >>> import torch
        >>> loss = GeneratorLoss()
        >>> loss({"adv": torch.tensor(1.0), "str": torch.tensor(0.5)})
        tensor(6.)
        >>> matched = GeneratorLoss(structure_weight="l1_matched")
        >>> matched.match(l1_error=torch.tensor(0.2), structure_term=torch.tensor(0.5))
        >>> round(float(matched.beta), 3)
        4.0
    """

    #: beta that ``"l1_matched"`` scales by the measured ratio: the paper's weight of L_str.
    REFERENCE_WEIGHT = 10.0

    def __init__(
        self,
        adv_weight: float = 1.0,
        structure_weight: float | Literal["l1_matched"] = 10.0,
        feature_weight: float = 10.0,
        center_weight: float = 10.0,
        restoration_weight: float = 10.0,
        momentum: float = 0.99,
    ) -> None:
        super().__init__()
        self.matched = structure_weight == L1_MATCHED
        if isinstance(structure_weight, str) and not self.matched:
            msg = f"structure_weight must be a number or {L1_MATCHED!r}, got {structure_weight!r}"
            raise ValueError(msg)
        beta = self.REFERENCE_WEIGHT if self.matched else structure_weight
        weights = (adv_weight, beta, feature_weight, center_weight, restoration_weight)
        if any(w < 0 for w in weights):
            msg = f"Loss weights must be non-negative, got {dict(zip(TERMS, weights, strict=True))}"
            raise ValueError(msg)
        self.alpha, self._beta, self.gamma, self.delta, self.eta = weights
        self.momentum = momentum
        if self.matched:
            # NaN until the first training step; then the running L1 / L_str ratio, saved in the state dict.
            self.register_buffer("l1_ratio", torch.tensor(float("nan")))

    @property
    def beta(self) -> Tensor | float:
        """The weight of L_str this step: fixed, or ``10 * ratio`` for ``"l1_matched"`` (10 before any step)."""
        if not self.matched or torch.isnan(self.l1_ratio):
            return self._beta
        return self.REFERENCE_WEIGHT * self.l1_ratio

    @torch.no_grad()
    def match(self, l1_error: Tensor, structure_term: Tensor) -> None:
        """Fold one step's L1 image error and L_str into the running ratio (``"l1_matched"`` only).

        Under distributed training both values are summed over processes first, so every rank weighs alike.

        Args:
            l1_error: Mean absolute error of this step's reconstructions.
            structure_term: This step's L_str.
        """
        if not self.matched:
            return
        values = torch.stack([l1_error.detach().float(), structure_term.detach().float()]).to(self.l1_ratio.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
        if not torch.isfinite(values).all() or values[1] <= 0:
            return
        ratio = values[0] / values[1]
        if torch.isnan(self.l1_ratio):
            self.l1_ratio.copy_(ratio)
        else:
            self.l1_ratio.mul_(self.momentum).add_((1 - self.momentum) * ratio)

    def forward(self, terms: dict[str, Tensor]) -> Tensor:
        """The weighted sum of the terms computed this step, keyed by :data:`TERMS`."""
        zero = torch.zeros(())
        l_adv, l_str, l_fea, l_ct, l_self = (terms.get(name, zero) for name in TERMS)
        return self.alpha * l_adv + self.beta * l_str + self.gamma * l_fea + self.delta * l_ct + self.eta * l_self
