"""What a NaN or Inf loss does in Salad's training: raise naming the step and the terms, or skip that batch.

:class:`NonFiniteLossGuard` is the part of :class:`~anomalib_salad.Salad` that checks each step's losses. The
decision is reduced over DDP processes, so all ranks skip together; on an accelerator the flags are read together
every :data:`DEFERRED_CHECK_STEPS` steps rather than every step, since each read waits for the device.
"""

import logging

import torch
import torch.distributed as dist
from anomalib.data import Batch
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["DEFERRED_CHECK_STEPS", "NonFiniteLossGuard"]

#: Steps between reads of the non-finite flags on an accelerator (each read waits for the device).
DEFERRED_CHECK_STEPS = 50


class NonFiniteLossGuard:
    """Salad's checks of non-finite losses (a mixin of Salad, before ``AnomalibModule``).

    It reads the model's ``nonfinite_loss`` (``"raise"`` or ``"skip"``) and keeps ``nonfinite_steps`` (skipped
    batches, logged) and ``_pending_checks`` (flags not read yet on an accelerator), which ``Salad`` sets up.
    """

    def _finite(self, loss: Tensor, terms: dict[str, Tensor]) -> bool:
        """Whether ``loss`` is finite on every process; otherwise raise, or warn and count, naming step and terms.

        The decision is reduced over processes, so under DDP all ranks skip together and stay in step. On an
        accelerator with ``nonfinite_loss="raise"`` reading the flag would wait for the device every step, so the
        flags are kept and read together every :data:`DEFERRED_CHECK_STEPS` steps and at each epoch's last batch,
        before validation and checkpointing (:meth:`on_train_batch_end`); the error still names the first bad step.
        """
        finite = torch.isfinite(loss.detach()).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if self.nonfinite_loss == "raise" and self._defer_checks():
            flags = torch.stack([finite.bool(), *(torch.isfinite(value.detach()) for value in terms.values())])
            self._pending_checks.append((self.global_step, flags, list(terms)))
            return True
        if finite:
            return True
        self._nonfinite(self.global_step, [name for name, value in terms.items() if not torch.isfinite(value)])
        return False

    def _defer_checks(self) -> bool:
        """Whether reading a flag would wait for an asynchronous device (anything but the CPU)."""
        return self.device.type != "cpu"

    def on_train_batch_end(self, outputs: STEP_OUTPUT, batch: Batch, batch_idx: int) -> None:
        """Read the deferred non-finite flags of an accelerator run (see :meth:`_finite`)."""
        del outputs, batch
        if self._pending_checks and (self.trainer.is_last_batch or (batch_idx + 1) % DEFERRED_CHECK_STEPS == 0):
            pending, self._pending_checks = self._pending_checks, []
            flags = torch.cat([flag for _, flag, _ in pending]).cpu()  # one host synchronisation
            offset = 0
            for step, _, names in pending:
                row, offset = flags[offset : offset + len(names) + 1], offset + len(names) + 1
                if not row[0]:
                    self._nonfinite(step, [name for name, ok in zip(names, row[1:], strict=True) if not ok])

    def _nonfinite(self, step: int, bad: list[str]) -> None:
        """Raise, or warn and count, for a non-finite loss at ``step`` in the terms ``bad``."""
        where = f"epoch {self.current_epoch}, global step {step}"
        msg = f"Salad: non-finite loss at {where}; loss terms {bad or '(on another process)'} are NaN/Inf"
        if self.nonfinite_loss == "raise":
            msg += ". Lower --model.lr, check the data, or set --model.nonfinite_loss skip to drop such batches."
            raise FloatingPointError(msg)
        self.nonfinite_steps += 1
        logger.warning("%s; batch skipped (%d so far)", msg, self.nonfinite_steps)
        self.log("nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)
