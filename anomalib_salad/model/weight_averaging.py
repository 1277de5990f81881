"""A moving average of SALAD's networks for scoring, with the class center refitted to it.

Adversarial training does not settle: the encoder keeps circling, and a score read off the last weights depends on
where in that circle the run stopped (on brain MRI, A_C moved by up to 0.39 AUROC between validations ten epochs
apart late in training). An exponential moving average of the generator's weights, kept beside the trained ones,
is the usual remedy in GAN training (Karras et al., ICLR 2018; Yazici et al., "The Unusual Effectiveness of
Averaging in GAN Training", ICLR 2019). Training still steps the live weights; validation, the test, predict and the
export see the averaged ones.

:class:`NetworkAveraging` is Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` applied to
``Salad.model`` (the networks and the center) rather than the whole module, so the post-processor's threshold and
the loss's running ratio are never averaged. Its time constant is a fraction of the run's optimizer steps, so one
value means the same on a dataset of any size. The center C of A_C is a running mean of the live encoder's codes;
an averaged encoder has codes of its own, so before each validation and at the end of training C is refitted as the
mean code of the training images under the averaged weights (normal images only; no validation or test image).

Example:
    >>> from anomalib_salad.model.weight_averaging import NetworkAveraging
    >>> NetworkAveraging(horizon=0.1).horizon
    0.1
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["NetworkAveraging", "refit_center"]


@torch.no_grad()
def refit_center(trainer: Trainer, pl_module: LightningModule) -> None:
    """Set ``pl_module.model.center`` to the mean code of the training images under the current weights.

    Args:
        trainer: The trainer whose ``train_dataloader`` yields the (normal) training images.
        pl_module: A :class:`~anomalib_salad.Salad` module.
    """
    model = pl_module.model
    transform = getattr(pl_module.pre_processor, "transform", None)
    total, count = torch.zeros_like(model.center), 0
    was_training = model.training
    model.eval()
    for batch in trainer.train_dataloader:
        images = batch.image.to(model.center.device)
        images = transform(images) if transform is not None else images
        total += model.encoder(model.to_network_input(images, check_finite=False)).sum(dim=0).to(total.dtype)
        count += len(images)
    model.train(was_training)
    if count:
        model.center.copy_(total / count)


class NetworkAveraging(WeightAveraging):
    """Exponential moving average of ``Salad.model``, used for everything but the training steps.

    Args:
        horizon: Time constant of the average as a fraction of the run's optimizer steps (``max_epochs`` times
            the batches per epoch): the decay per step is ``1 - 1 / (horizon * steps)``. ``0.1`` averages, with
            weight ``1/e`` at that age, over the last tenth of training. Defaults to ``0.1``.

    Raises:
        ValueError: If ``horizon`` is not in ``(0, 1]``, or (at the start of training) the run has no finite
            number of steps.
    """

    def __init__(self, horizon: float = 0.1) -> None:
        if not 0 < horizon <= 1:
            msg = f"weight averaging's horizon must be a fraction of the run in (0, 1], got {horizon}"
            raise ValueError(msg)
        super().__init__(use_buffers=True)
        self.horizon = horizon
        self.decay: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Keep a copy of the networks to average (fit only)."""
        del trainer
        if stage == "fit":
            self._average_model = AveragedModel(pl_module.model, use_buffers=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix the decay per step from the run's length, now that the training batches are counted."""
        del pl_module
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            msg = "Salad(weight_averaging=...) needs a run of known length: set trainer.max_epochs (or max_steps)"
            raise ValueError(msg)
        self.decay = 1.0 - 1.0 / max(1.0, self.horizon * steps)
        self._average_model.multi_avg_fn = get_ema_multi_avg_fn(self.decay)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score with the averaged networks and a center fitted to them."""
        super().on_validation_epoch_start(trainer, pl_module)
        if self._average_model is not None:
            refit_center(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Leave the averaged networks in the module, with their center, for test, predict and export."""
        super().on_train_end(trainer, pl_module)
        refit_center(trainer, pl_module)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Save the averaged networks as the module's, and the live ones beside them (to resume training)."""
        del trainer, pl_module
        if self._average_model is None:
            return
        state = checkpoint["state_dict"]
        checkpoint["current_model_state"] = {name[6:]: value for name, value in state.items() if name[:6] == "model."}
        averaged = self._average_model.module.state_dict()
        checkpoint["state_dict"] = state | {f"model.{name}": value for name, value in averaged.items()}
        checkpoint["averaging_state"] = {"n_averaged": self._average_model.n_averaged}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Resume: the averaged networks from ``state_dict``, the live ones from ``current_model_state``."""
        del trainer
        if self._average_model is None or "current_model_state" not in checkpoint:
            return
        averaged = {name[6:]: value for name, value in checkpoint["state_dict"].items() if name[:6] == "model."}
        self._average_model.module.load_state_dict(averaged)
        self._average_model.n_averaged.copy_(checkpoint["averaging_state"]["n_averaged"])
        pl_module.model.load_state_dict(checkpoint["current_model_state"])

    @contextmanager
    def averaged(self, pl_module: LightningModule) -> Iterator[None]:
        """Hold the averaged networks (and their center) in ``pl_module`` for the block; nothing outside a fit."""
        if self._average_model is None:
            yield
            return
        self._swap_models(pl_module)
        try:
            yield
        finally:
            self._swap_models(pl_module)

    # Lightning's update, swap and copy walk the module they are given: give them the networks only.
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Update the average after each training batch."""
        super().on_train_batch_end(trainer, pl_module.model, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """No update per epoch (every batch updates)."""

    def _swap_models(self, pl_module: LightningModule) -> None:
        super()._swap_models(pl_module.model)

    def _copy_average_to_current(self, pl_module: LightningModule) -> None:
        super()._copy_average_to_current(pl_module.model)
