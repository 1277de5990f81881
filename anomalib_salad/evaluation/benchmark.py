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
* Each job tests with :func:`anomalib_salad.evaluation.metrics.paper_metrics` and records train and test throughput
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

        python -m anomalib_salad.evaluation.benchmark --config configs/benchmark/smoke_synthetic.yaml
"""

import argparse
import json
import logging
import sys
from collections.abc import Generator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
from anomalib.pipelines.benchmark.pipeline import Benchmark
from anomalib.pipelines.components.base import Runner
from anomalib.pipelines.components.runners import ParallelRunner, SerialRunner
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
from anomalib.pipelines.types import PREV_STAGE_RESULT
from anomalib.utils.config import flatten_dict
from anomalib.utils.logging import redirect_logs
from lightning import seed_everything

from .benchmark_job import SaladBenchmarkJob, build_datamodule, build_model, run_id, summarize

logger = logging.getLogger(__name__)

__all__ = ["SaladBenchmark", "SaladBenchmarkJob", "SaladBenchmarkJobGenerator", "main", "summarize"]


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
                yield _BrokenJob(error, run_id(flatten_dict(container), seed))  # type: ignore[misc]
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
    """Command line: ``python -m anomalib_salad.evaluation.benchmark --config CONFIG [options]``.

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
