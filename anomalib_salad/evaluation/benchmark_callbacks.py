"""The benchmark job's measuring callbacks: training and test throughput, and the raw per-image test scores."""

import time
from typing import Any

import pandas as pd
import torch
from lightning import Callback, LightningModule, Trainer

from ..model.precision import synchronize

__all__ = ["ScoreRecorder", "ThroughputMonitor"]


class ThroughputMonitor(Callback):
    """Images per second in training and test.

    Training time runs from each train epoch's start to its end minus any validation inside it, so it covers
    data loading, forward, backward and optimiser steps. Test time is the test loop (loading, inference,
    post-processing, metric updates). On CUDA the device is synchronised at each boundary.

    Why not the libraries' own: Lightning's ``ThroughputMonitor`` measures much the same (validation subtracted)
    but reports rolling-window rates through the trainer's logger, and the benchmark's jobs run without one and
    need one figure per run for ``results.csv``; anomalib's ``TimerCallback`` prints fit and test times but returns
    nothing a table can hold.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_images = 0
        self.train_time = 0.0
        self.test_images = 0
        self.test_time = 0.0
        self._epoch_start = 0.0
        self._validation_in_epoch = 0.0
        self._validation_start = 0.0
        self._test_start = 0.0

    @staticmethod
    def _now(trainer: Trainer) -> float:
        synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    @staticmethod
    def _batch_size(batch: Any) -> int:
        image = getattr(batch, "image", None)
        return int(image.shape[0]) if image is not None else len(batch)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the epoch clock."""
        del pl_module
        self._validation_in_epoch = 0.0
        self._epoch_start = self._now(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count training images."""
        del trainer, pl_module, outputs, batch_idx
        self.train_images += self._batch_size(batch)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the validation clock (subtracted from the training time)."""
        del pl_module
        self._validation_start = self._now(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the validation clock."""
        del pl_module
        self._validation_in_epoch += self._now(trainer) - self._validation_start

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Add the epoch's training time."""
        del pl_module
        self.train_time += self._now(trainer) - self._epoch_start - self._validation_in_epoch

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the test clock."""
        del pl_module
        self._test_start = self._now(trainer)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Count test images."""
        del trainer, pl_module, outputs, batch_idx, dataloader_idx
        self.test_images += self._batch_size(batch)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the test clock."""
        del pl_module
        self.test_time += self._now(trainer) - self._test_start

    def results(self) -> dict[str, float]:
        """Counts, seconds and images/s for training and test."""
        return {
            "train_images": self.train_images,
            "train_time": self.train_time,
            "train_throughput": self.train_images / self.train_time if self.train_time > 0 else float("nan"),
            "test_images": self.test_images,
            "test_time": self.test_time,
            "test_throughput": self.test_images / self.test_time if self.test_time > 0 else float("nan"),
        }


class ScoreRecorder(Callback):
    """Raw per-image test scores and labels.

    Trainer callbacks run before the model's own (``AnomalibModule.configure_callbacks`` appends the
    post-processor after them), so ``pred_score`` here is still the model's raw score.
    """

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget earlier test runs."""
        del trainer, pl_module
        self.paths, self.scores, self.labels = [], [], []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Copy the batch's raw scores before the post-processor normalises them in place."""
        del trainer, pl_module, batch_idx, dataloader_idx
        source = outputs if outputs is not None else batch
        # clone: later callbacks replace or may modify the batch's tensors.
        self.scores.append(source.pred_score.detach().flatten().float().cpu().clone())
        self.labels.append(source.gt_label.detach().flatten().long().cpu().clone())
        paths = getattr(source, "image_path", None)
        self.paths.extend(paths if paths is not None else [""] * len(self.scores[-1]))

    def frame(self, threshold: float) -> pd.DataFrame:
        """One row per image: path, ground truth, raw score, and label at the fitted (raw) ``threshold``."""
        scores = torch.cat(self.scores) if self.scores else torch.empty(0)
        labels = torch.cat(self.labels) if self.labels else torch.empty(0, dtype=torch.long)
        return pd.DataFrame(
            {
                "image_path": self.paths,
                "gt_label": labels.numpy(),
                "pred_score": scores.numpy(),
                "pred_label": (scores > threshold).long().numpy(),
            }
        )
