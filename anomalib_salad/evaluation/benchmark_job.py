"""One benchmark job: a model and a datamodule built from a config entry, trained, tested and summarised.

:func:`build_model` / :func:`build_datamodule` build them from any importable class path (bare names are
anomalib's); :class:`SaladBenchmarkJob` trains and tests one grid point with the paper's metrics, throughput and a
raw score file; :func:`summarize` gives mean and standard deviation over seeds. The pipeline around the jobs is
:mod:`anomalib_salad.evaluation.benchmark`.
"""

import copy
import hashlib
import importlib
import json
import logging
import time
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, ClassVar

import pandas as pd
import torch
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.data import AnomalibDataModule
from anomalib.engine import Engine
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule, UnknownModelError
from anomalib.pipelines.benchmark.job import BenchmarkJob
from anomalib.post_processing import PostProcessor
from anomalib.utils.logging import hide_output
from lightning import seed_everything
from lightning.pytorch.cli import instantiate_class

from ..model.post_processing import RankPreservingPostProcessor
from .benchmark_callbacks import ScoreRecorder, ThroughputMonitor
from .metrics import best_f1_statistics, paper_metrics

logger = logging.getLogger(__name__)

__all__ = ["SaladBenchmarkJob", "build_datamodule", "build_model", "run_id", "summarize"]

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


def run_id(flat_cfg: dict[str, Any], seed: int) -> str:
    """Readable, unique name of one grid point."""
    config = {key: value for key, value in flat_cfg.items() if key != "seed"}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    label = str(flat_cfg.get("model.name") or str(flat_cfg.get("model.class_path", "model")).rsplit(".", 1)[-1])
    label = "-".join("".join(c if c.isalnum() or c == "_" else " " for c in label).split())
    return f"{label}-{digest}-seed{seed}"


class SaladBenchmarkJob(BenchmarkJob):
    """anomalib's benchmark job with trainer arguments, throughput, the paper's metrics and score files.

    Before training, the model's test metrics are replaced by :func:`~anomalib_salad.evaluation.metrics.paper_metrics`
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
        self.run_id = run_id(flat_cfg, seed)

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
