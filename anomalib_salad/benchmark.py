"""Benchmark grids with SALAD next to anomalib's models, on anomalib's benchmark pipeline.

``anomalib benchmark`` cannot run SALAD as it stands: ``get_model`` refuses class paths outside
``anomalib.models.ALLOWED_MODULES``, ``get_datamodule`` only finds classes in ``anomalib.data``, a job gets no
trainer arguments (so 1000 epochs unless the model says otherwise), throughput is not measured, and the
results collector fails when models in one grid have different ``init_args``. This module reuses anomalib's
job generator and job, runners, grid expansion and results table, and changes those points:

* models and datamodules are built with Lightning's ``instantiate_class`` from any importable class path (bare
  names are anomalib's), checked to be an ``AnomalibModule`` / ``AnomalibDataModule`` before they are called,
  with plain Python arguments (see :func:`build_model`); anomalib's ``ALLOWED_MODULES`` is left alone.
* ``benchmark.trainer`` holds Lightning/anomalib ``Engine`` arguments (``max_epochs``, ...); a model's own
  ``trainer_arguments`` still take precedence, as in ``anomalib train``. Each grid point is seeded before its
  model is built.
* Each job tests with :func:`anomalib_salad.metrics.paper_metrics` and records train and test throughput
  (images/s, validation excluded from training time), both thresholds in raw score units, and a per-image raw
  score file for ROC plots. It validates once more before testing if fit did not (anomalib's ``Engine.test``
  never does for one-class models, which would leave the threshold unset), and it writes no per-epoch
  checkpoints (at most one weights-only checkpoint after the test).
* ``results.csv`` has one row per run (anomalib's columns plus the above); ``summary.csv`` has mean and sample
  standard deviation over seeds for every configuration. A grid point that fails does not stop the others.

Config (YAML)::

    accelerator: cpu                # or cuda; a list runs the grid once per accelerator
    output_dir: runs/benchmark/x    # optional; default runs/benchmark/<time>; --output_dir overrides
    rank_preserving_scores: true    # see RankPreservingPostProcessor; false keeps anomalib's clamped scores
    save_checkpoints: false         # weights-only checkpoint per run in output_dir/checkpoints (a model entry's
                                    # save_checkpoint overrides it)
    create_dirs: [./datasets/empty_dtd]   # folders created before the models are built
    benchmark:
      seed: {grid: [0, 1, 2]}
      trainer: {max_epochs: 200}
      model:
        grid:
          - class_path: anomalib_salad.Salad
            name: SALAD             # optional row label
            init_args: {image_size: 256}
          - class_path: Ganomaly
            image_size: 256         # optional: replaces the model's default pre-processor size
            init_args: {batch_size: 64}
      data:
        class_path: Folder
        init_args: {...}

Example:
    .. code-block:: bash

        python -m anomalib_salad.benchmark --config configs/benchmark/smoke_synthetic.yaml
"""

import argparse
import copy
import hashlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Generator, Sequence
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, ClassVar

import pandas as pd
import torch
import yaml
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.data import AnomalibDataModule
from anomalib.engine import Engine
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule, UnknownModelError
from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
from anomalib.pipelines.benchmark.job import BenchmarkJob
from anomalib.pipelines.benchmark.pipeline import Benchmark
from anomalib.pipelines.components.base import Runner
from anomalib.pipelines.components.runners import ParallelRunner, SerialRunner
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
from anomalib.pipelines.types import PREV_STAGE_RESULT
from anomalib.post_processing import PostProcessor
from anomalib.utils.config import flatten_dict
from anomalib.utils.logging import hide_output, redirect_logs
from lightning import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.cli import instantiate_class

from .metrics import best_f1_statistics, paper_metrics
from .post_processing import RankPreservingPostProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "RankPreservingPostProcessor",
    "SaladBenchmark",
    "SaladBenchmarkJob",
    "SaladBenchmarkJobGenerator",
    "ScoreRecorder",
    "ThroughputMonitor",
    "build_datamodule",
    "build_model",
    "main",
    "summarize",
]

CONFIG_PREFIXES = ("model.", "data.", "trainer.")
FILE_COLUMNS = ("run_id", "scores_file", "checkpoint")
HEADLINE = {
    "image_AUROC": "AUC",
    "image_BestF1Score": "F1",
    "image_BestF1Accuracy": "ACC",
    "image_BestF1Sensitivity": "SEN",
    "image_BestF1Specificity": "SPE",
    "train_throughput": "train img/s",
    "test_throughput": "test img/s",
}


def _class_of(class_path: str, home: str) -> type:
    """The class a config names: a dotted path, or a bare name looked up in ``home`` (anomalib's rule)."""
    module_path, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_path or home), name, None)
    except ImportError as error:
        msg = f"cannot import {class_path!r}: {error}"
        raise UnknownModelError(msg) from error
    if not isinstance(found, type):
        msg = f"{class_path!r} names no class"
        raise UnknownModelError(msg)
    return found


def _instantiate(config: dict[str, Any], home: str, base: type, **overrides: Any) -> Any:
    """Lightning's ``instantiate_class`` on a ``class_path`` / ``init_args`` entry, for subclasses of ``base`` only.

    The class is checked before it is called, so a config cannot run an arbitrary callable. Arguments are plain
    Python values: anomalib's ``get_model`` passes OmegaConf nodes, which end up in the checkpoint's
    hyper-parameters (a list argument becomes a ``ListConfig``) and make it unloadable with ``weights_only``.
    """
    cls = _class_of(config["class_path"], home)
    if not issubclass(cls, base):
        msg = f"{config['class_path']} is not a subclass of {base.__name__}"
        raise UnknownModelError(msg)
    init_args = copy.deepcopy(dict(config.get("init_args") or {})) | overrides
    return instantiate_class((), {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args})


def build_model(config: dict[str, Any]) -> AnomalibModule:
    """Build a model from a benchmark ``model`` entry (``class_path``, ``init_args``).

    ``class_path`` is a bare anomalib model name (``Ganomaly``) or any importable path (``anomalib_salad.Salad``).
    Besides ``class_path`` and ``init_args`` an entry may hold ``name`` (a row label) and ``save_checkpoint``
    (both read by the job, ignored here), and ``image_size``: the model is then built with its class's
    ``configure_pre_processor(image_size)``, i.e. its own default transform at that size (needed for models
    such as GANomaly that size their network from the pre-processor at construction).

    Args:
        config: The model entry.

    Returns:
        AnomalibModule: The model.

    Raises:
        UnknownModelError: If the class cannot be imported or is not an ``AnomalibModule``.
    """
    image_size = config.get("image_size")
    if image_size is None:
        return _instantiate(config, "anomalib.models", AnomalibModule)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    # A model's own resize option (Salad's antialias) goes to the pre-processor that replaces its default one.
    options = {key: value for key, value in config.get("init_args", {}).items() if key == "antialias"}
    pre_processor = _class_of(config["class_path"], "anomalib.models").configure_pre_processor(size, **options)
    return _instantiate(config, "anomalib.models", AnomalibModule, pre_processor=pre_processor)


def build_datamodule(config: dict[str, Any]) -> AnomalibDataModule:
    """Build a datamodule from ``{"class_path": ..., "init_args": {...}}``; bare names are anomalib's.

    Args:
        config: The data entry.

    Returns:
        AnomalibDataModule: The datamodule.
    """
    return _instantiate(config, "anomalib.data", AnomalibDataModule)


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
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
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


def _run_id(flat_cfg: dict[str, Any], seed: int) -> str:
    """Readable, unique name of one grid point."""
    config = {key: value for key, value in flat_cfg.items() if key != "seed"}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    label = str(flat_cfg.get("model.name") or str(flat_cfg.get("model.class_path", "model")).rsplit(".", 1)[-1])
    label = "-".join("".join(c if c.isalnum() or c == "_" else " " for c in label).split())
    return f"{label}-{digest}-seed{seed}"


class SaladBenchmarkJob(BenchmarkJob):
    """anomalib's benchmark job with trainer arguments, throughput, the paper's metrics and score files.

    Before training, the model's test metrics are replaced by :func:`~anomalib_salad.metrics.paper_metrics`
    (its validation metrics are kept), its visualizer is switched off (image writing would dominate the test
    time), and, with ``rank_preserving_scores``, anomalib's default post-processor is swapped for
    :class:`RankPreservingPostProcessor` so that AUROC and the best-F1 statistics are those of the raw scores.

    Args:
        accelerator: ``"cpu"`` or ``"cuda"``.
        model: The model.
        datamodule: The data.
        seed: Seed of this run.
        flat_cfg: Flattened grid point (becomes columns of the results).
        trainer_args: Extra ``Engine`` / Lightning ``Trainer`` arguments. Defaults to none.
        output_dir: Where score files (and checkpoints) go. Defaults to a temporary folder (files discarded).
        rank_preserving_scores: Use :class:`RankPreservingPostProcessor`. Defaults to ``True``.
        save_checkpoints: After the test, write a weights-only checkpoint (with the fitted threshold) to
            ``output_dir/checkpoints/<run_id>.ckpt``. Defaults to ``False``.
    """

    name = "benchmark"
    # Set by the pipeline: save() is called on the class by anomalib's runners, with the results only.
    output_dir: ClassVar[Path | None] = None

    def __init__(
        self,
        accelerator: str,
        model: AnomalibModule,
        datamodule: AnomalibDataModule,
        seed: int,
        flat_cfg: dict,
        trainer_args: dict[str, Any] | None = None,
        output_dir: Path | None = None,
        rank_preserving_scores: bool = True,
        save_checkpoints: bool = False,
    ) -> None:
        super().__init__(accelerator=accelerator, model=model, datamodule=datamodule, seed=seed, flat_cfg=flat_cfg)
        self.trainer_args = dict(trainer_args or {})
        for key in ("callbacks", "default_root_dir", "accelerator", "devices"):
            if key in self.trainer_args:
                msg = f"benchmark.trainer.{key} is set by the benchmark job itself; remove it from the config"
                raise ValueError(msg)
        self.run_output_dir = output_dir
        self.rank_preserving_scores = rank_preserving_scores
        self.save_checkpoints = save_checkpoints
        self.run_id = _run_id(flat_cfg, seed)

    def _prepare_model(self) -> None:
        model = self.model
        val_metrics = list(model.evaluator.val_metrics) if isinstance(model.evaluator, Evaluator) else []
        model.evaluator = Evaluator(val_metrics=val_metrics, test_metrics=paper_metrics(prefix="image_"))
        model.visualizer = None
        if self.rank_preserving_scores:
            if type(model.post_processor) is PostProcessor:
                model.post_processor = RankPreservingPostProcessor(**model.post_processor.checkpoint_config())
            else:
                logger.warning(
                    "%s has its own post-processor %s; its scores stay as they are.",
                    type(model).__name__,
                    type(model.post_processor).__name__,
                )

    @hide_output
    def run(self, task_id: int | None = None) -> dict[str, Any]:
        """Train and test one grid point.

        Args:
            task_id: GPU index when anomalib's parallel runner runs several jobs at once. Defaults to ``None``.

        Returns:
            dict[str, Any]: One row of ``results.csv``.
        """
        job_start = time.time()
        devices: str | list[int] = "auto" if task_id is None else [task_id]
        self._prepare_model()
        throughput, recorder = ThroughputMonitor(), ScoreRecorder()
        # save_top_k=0 stops anomalib's per-epoch checkpoint (hundreds of MB per write for SALAD at 256 px);
        # a weights-only checkpoint is written once after the test, with the fitted threshold in it.
        no_checkpoints = ModelCheckpoint(save_top_k=0, save_last=False)
        with TemporaryDirectory() as temp_dir:
            seed_everything(self.seed)
            engine_args = {"enable_progress_bar": False, "enable_model_summary": False, **self.trainer_args}
            engine = Engine(
                accelerator=self.accelerator,
                devices=devices,
                default_root_dir=temp_dir,
                callbacks=[throughput, recorder, no_checkpoints],
                **engine_args,
            )
            fit_start = time.time()
            engine.fit(self.model, self.datamodule)
            # anomalib fits the threshold only in validation and Engine.test never validates a one-class model:
            # without a validation epoch in fit (check_val_every_n_epoch > max_epochs) pred_label would be garbage.
            post_processor = self.model.post_processor
            if (
                isinstance(post_processor, PostProcessor)
                and post_processor.enable_thresholding
                and torch.isnan(post_processor.image_threshold)
            ):
                engine.validate(self.model, datamodule=self.datamodule, verbose=False)
            test_start = time.time()
            test_results = engine.test(self.model, self.datamodule, verbose=False)
            test_end = time.time()
            checkpoint = ""
            if self.save_checkpoints and self.run_output_dir is not None:
                checkpoint = f"checkpoints/{self.run_id}.ckpt"
                (self.run_output_dir / checkpoint).parent.mkdir(parents=True, exist_ok=True)
                engine.trainer.save_checkpoint(self.run_output_dir / checkpoint, weights_only=True)
        threshold = float(self.model.post_processor.image_threshold) if self.model.post_processor else float("nan")
        scores = recorder.frame(threshold)
        extra: dict[str, Any] = {"image_FittedThreshold": threshold}
        if len(scores):
            extra["image_BestF1Threshold"] = float(
                best_f1_statistics(
                    torch.tensor(scores["pred_score"].to_numpy()), torch.tensor(scores["gt_label"].to_numpy())
                )["threshold"],
            )
        scores_file = ""
        if self.run_output_dir is not None:
            scores_file = f"scores/{self.run_id}.csv"
            (self.run_output_dir / scores_file).parent.mkdir(parents=True, exist_ok=True)
            scores.to_csv(self.run_output_dir / scores_file, index=False)
        output = {
            "accelerator": self.accelerator,
            "run_id": self.run_id,
            "job_duration": time.time() - job_start,
            "fit_duration": test_start - fit_start,
            "test_duration": test_end - test_start,
            **throughput.results(),
            **self.flat_cfg,
            **test_results[0],
            **extra,
            # Relative to the output folder, so that the folder can be moved.
            "scores_file": scores_file,
            "checkpoint": checkpoint,
        }
        logger.info("Completed %s with result %s", self.run_id, output)
        return output

    @staticmethod
    def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per run; unlike anomalib's collector, runs may differ in their columns (NaN where absent)."""
        return pd.DataFrame(results)

    @classmethod
    def save(cls, result: pd.DataFrame) -> None:  # type: ignore[override]
        """Write ``results.csv`` and ``summary.csv`` to :attr:`output_dir` and print the summary."""
        output_dir = cls.output_dir or Path("runs") / cls.name / datetime.now().strftime("%Y-%m-%d-%H_%M_%S")
        output_dir.mkdir(parents=True, exist_ok=True)
        result.to_csv(output_dir / "results.csv", index=False)
        summary = summarize(result)
        summary.to_csv(output_dir / "summary.csv", index=False)
        BenchmarkJob._print_tabular_results(_headline(summary))
        logger.info("Saved results to %s", output_dir)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) over seeds of every numeric result, per configuration.

    Configurations are told apart by ``accelerator`` and every ``model.*``, ``data.*`` and ``trainer.*`` column.

    Args:
        results: The rows of ``results.csv``.

    Returns:
        pd.DataFrame: One row per configuration with ``runs``, ``seeds`` and ``<column>_mean`` / ``<column>_std``.
    """
    if results.empty:
        return results
    keys = [c for c in results.columns if c == "accelerator" or c.startswith(CONFIG_PREFIXES)]
    values = [
        c
        for c in results.columns
        if c not in keys and c not in FILE_COLUMNS and c != "seed" and pd.api.types.is_numeric_dtype(results[c])
    ]
    frame = results.copy()
    # Lists (e.g. proxy_task_weights) are unhashable; NaN marks an argument another model lacks.
    frame[keys] = frame[keys].astype(str)
    grouped = frame.groupby(keys, sort=False, dropna=False)
    summary = grouped[values].agg(["mean", "std"])
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    summary.insert(0, "runs", grouped.size())
    summary.insert(1, "seeds", grouped["seed"].agg(lambda s: " ".join(str(v) for v in s)) if "seed" in frame else "")
    return summary.reset_index()


def _headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The few columns worth printing: model label, runs, paper metrics and throughput (means)."""
    label = summary.get("model.name", summary.get("model.class_path"))
    table = pd.DataFrame({"model": label, "runs": summary.get("runs")})
    for column, title in HEADLINE.items():
        if f"{column}_mean" in summary:
            table[title] = summary[f"{column}_mean"].round(4)
    return table


class _BrokenJob:
    """Stands in for a grid point whose model or data could not be built; running it raises that error."""

    def __init__(self, error: Exception, run_id: str) -> None:
        self.error, self.run_id = error, run_id

    def run(self, task_id: int | None = None) -> dict[str, Any]:
        """Raise the construction error."""
        del task_id
        msg = f"Could not build grid point {self.run_id}: {self.error}"
        raise RuntimeError(msg) from self.error


class SaladBenchmarkJobGenerator(BenchmarkJobGenerator):
    """anomalib's generator, building models and data through :func:`build_model` / :func:`build_datamodule`.

    Each grid point is seeded before its model is built, so weight initialisation follows the job's seed
    (anomalib builds every model before seeding).

    Args:
        accelerator: ``"cpu"`` or ``"cuda"``.
        output_dir: Where jobs write score files and checkpoints.
        rank_preserving_scores: Passed to each job.
        save_checkpoints: Passed to each job unless its model entry sets ``save_checkpoint``.
    """

    def __init__(
        self,
        accelerator: str,
        output_dir: Path | None = None,
        rank_preserving_scores: bool = True,
        save_checkpoints: bool = False,
    ) -> None:
        super().__init__(accelerator)
        self.output_dir = output_dir
        self.rank_preserving_scores = rank_preserving_scores
        self.save_checkpoints = save_checkpoints

    @property
    def job_class(self) -> type:
        """:class:`SaladBenchmarkJob`."""
        return SaladBenchmarkJob

    def generate_jobs(
        self,
        args: dict,
        previous_stage_result: PREV_STAGE_RESULT,
    ) -> Generator["SaladBenchmarkJob | _BrokenJob", None, None]:
        """One job per grid point of ``args`` (the config's ``benchmark`` section).

        Args:
            args: ``seed``, ``model``, ``data`` and optional ``trainer``, any value replaceable by ``grid``.
            previous_stage_result: Unused.

        Yields:
            SaladBenchmarkJob | _BrokenJob: The jobs, built lazily; a point that cannot be built becomes a job
            that fails when run.
        """
        del previous_stage_result
        for container in get_iterator_from_grid_dict(args):
            seed = int(container.get("seed", 0))
            seed_everything(seed)
            try:
                job = SaladBenchmarkJob(
                    accelerator=self.accelerator,
                    seed=seed,
                    model=build_model(container["model"]),
                    datamodule=build_datamodule(container["data"]),
                    flat_cfg=flatten_dict(container),
                    trainer_args=container.get("trainer"),
                    output_dir=self.output_dir,
                    rank_preserving_scores=self.rank_preserving_scores,
                    save_checkpoints=bool(container["model"].get("save_checkpoint", self.save_checkpoints)),
                )
            except Exception as error:
                # Fail this grid point only: the runner logs it, runs the rest and still saves their results.
                yield _BrokenJob(error, _run_id(flatten_dict(container), seed))  # type: ignore[misc]
                continue
            yield job


class SaladBenchmark(Benchmark):
    """anomalib's benchmark pipeline with :class:`SaladBenchmarkJobGenerator` and a chosen output folder.

    Args:
        output_dir: Results folder. Defaults to the config's ``output_dir``, else ``runs/benchmark/<time>``.
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None

    def _setup_runners(self, args: dict) -> list[Runner]:
        """One runner per accelerator: serial, or parallel over GPUs when several are visible."""
        accelerators = args["accelerator"] if isinstance(args["accelerator"], list) else [args["accelerator"]]
        runners: list[Runner] = []
        for accelerator in accelerators:
            if accelerator not in {"cpu", "cuda"}:
                msg = f"Unsupported accelerator: {accelerator}"
                raise ValueError(msg)
            generator = SaladBenchmarkJobGenerator(
                accelerator,
                output_dir=self.output_dir,
                rank_preserving_scores=bool(args.get("rank_preserving_scores", True)),
                save_checkpoints=bool(args.get("save_checkpoints", False)),
            )
            device_count = torch.cuda.device_count()
            if device_count <= 1 or accelerator == "cpu":
                runners.append(SerialRunner(generator))
            else:
                runners.append(ParallelRunner(generator, n_jobs=device_count))
        return runners

    def run_config(self, config: dict[str, Any], redirect: bool = True) -> Path:
        """Run every grid point of ``config``.

        Unlike anomalib's ``Pipeline.run``, a failure is raised after the partial results are written.

        Args:
            config: The parsed YAML.
            redirect: Send all logging to ``<output_dir>/pipeline.log`` (anomalib's behaviour). Defaults to ``True``.

        Returns:
            Path: The output folder (``results.csv``, ``summary.csv``, ``scores/``, ``pipeline.log``).

        Raises:
            RuntimeError: If a job failed.
        """
        for folder in config.get("create_dirs", []):
            Path(folder).mkdir(parents=True, exist_ok=True)
        if self.output_dir is None:
            default = Path("runs") / "benchmark" / datetime.now().strftime("%Y-%m-%d-%H_%M_%S")
            self.output_dir = Path(config.get("output_dir") or default)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        SaladBenchmarkJob.output_dir = self.output_dir
        if redirect:
            redirect_logs(str(self.output_dir / "pipeline.log"))
        errors = []
        for runner in self._setup_runners(config):
            try:
                runner.run(config.get(runner.generator.job_class.name) or {}, None)
            except Exception as error:  # report after the other runners have run
                logger.exception("Benchmark runner failed")
                errors.append(error)
        if errors:
            msg = f"{len(errors)} runner(s) had failing jobs; see {self.output_dir / 'pipeline.log'}"
            raise RuntimeError(msg) from errors[0]
        return self.output_dir

    @staticmethod
    def dry_run(config: dict[str, Any]) -> pd.DataFrame:
        """Build every job of ``config`` (models and datamodules) without training; list them.

        Args:
            config: The parsed YAML.

        Returns:
            pd.DataFrame: ``run_id``, model and data class, parameters (millions), trainer arguments, and
            ``error`` for grid points that cannot be built.
        """
        for folder in config.get("create_dirs", []):
            Path(folder).mkdir(parents=True, exist_ok=True)
        accelerators = config["accelerator"] if isinstance(config["accelerator"], list) else [config["accelerator"]]
        rows = []
        for accelerator in accelerators:
            generator = SaladBenchmarkJobGenerator(accelerator)
            for job in generator.generate_jobs(config.get("benchmark") or {}, None):
                if isinstance(job, _BrokenJob):
                    rows.append({"accelerator": accelerator, "run_id": job.run_id, "error": repr(job.error)})
                    continue
                rows.append(
                    {
                        "accelerator": accelerator,
                        "run_id": job.run_id,
                        "model": type(job.model).__name__,
                        "parameters_M": round(sum(p.numel() for p in job.model.parameters()) / 1e6, 2),
                        "data": type(job.datamodule).__name__,
                        "trainer": json.dumps(job.trainer_args),
                        "save_checkpoint": job.save_checkpoints,
                    }
                )
        return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m anomalib_salad.benchmark --config CONFIG [options]``.

    Options: ``--output_dir DIR`` and ``--accelerator cpu|cuda`` override the config; ``--dry_run`` builds and
    lists every job without training.

    Args:
        argv: Arguments. Defaults to ``sys.argv[1:]``.

    Returns:
        int: Exit status, 1 if any job failed.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", required=True, type=Path, help="benchmark YAML (see configs/benchmark/)")
    parser.add_argument("--output_dir", type=Path, default=None, help="results folder (overrides the config)")
    parser.add_argument("--accelerator", default=None, help="cpu or cuda (overrides the config)")
    parser.add_argument("--dry_run", action="store_true", help="build every job, list them, train nothing")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    if args.accelerator:
        config["accelerator"] = args.accelerator
    if args.dry_run:
        jobs = SaladBenchmark.dry_run(config)
        print(jobs.to_string(index=False))
        broken = int(jobs["error"].notna().sum()) if "error" in jobs else 0
        print(f"{len(jobs)} jobs, {broken} cannot be built")
        return 1 if broken else 0
    benchmark = SaladBenchmark(output_dir=args.output_dir)
    try:
        output_dir = benchmark.run_config(config)
    except RuntimeError as error:
        print(f"Benchmark failed: {error}", file=sys.stderr)
        return 1
    print(f"Results: {output_dir / 'results.csv'}\nSummary: {output_dir / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
