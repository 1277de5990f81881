"""One prepared GPU run: throughput, the batch-256 check and three 200-epoch trainings, inside one time budget.

On one GPU, everything through anomalib's ``Engine.fit`` with the images decoded once and held on the device
(:class:`~anomalib_salad.data.cache.ImageCache`), and scored with the package's pieces (the raw scores of
:mod:`anomalib_salad.evaluation.raw_scores`, the paper's statistics of :mod:`anomalib_salad.evaluation.metrics`):

1. Throughput at 256 px with the paper's widths, batch 64 and all five losses: fp32, bf16 autocast,
   bf16 + channels-last, bf16 + ``torch.compile``. For each: the one-time cost (setup, cache fill, compilation,
   first-epoch excess), the steady epoch, training images/s, the projected wall time of the 200-epoch run, and the
   peak GPU memory. Then whether a training step fits at batch 256.
2. 200-epoch trainings on the brain MRI folder (batch 64, seed 0) with the configuration of step 1 whose projected
   200-epoch wall time is shortest: SALAD with the paper's defaults, the SSIM autoencoder (SALAD with L_str alone,
   Table III) and anomalib's GANomaly at its defaults (fp32: its ``BCELoss`` cannot run under autocast; images
   cached on the device too). Each is scored on the test split (the half of ``test/`` that did not validate) with
   AUROC and F1, accuracy, sensitivity and specificity at the best-F1 threshold (the paper's protocol); SALAD and
   the autoencoder with each of the three scores A_F, A_I and A_C. Validation runs once, after the last epoch.
3. ``gpu_run.json`` and ``gpu_run.md`` in ``--out``, rewritten after every stage, so a machine taken away keeps
   what was measured.

Budget: counted from the process start (imports included). Before each stage the script estimates its duration
from what it has measured and skips it, with the reason, if it would not fit; stages of step 1 are also skipped
when they would leave too little for the 200-epoch SALAD run, which comes next in value. During a training a
callback projects the remaining epochs after each epoch and stops the fit when they would overrun (the result is
kept and marked), and an alarm interrupts any stage at the deadline. ``--smoke`` runs the same code on the CPU at
tiny sizes (generated scans, a narrow model, 2 epochs); the compile variant is then skipped.

Usage (the README's "One GPU run" section gives the device command with the offline wheels):
    python benchmarks/gpu_run.py --out gpu_results --budget-min 8        # on one GPU
    python benchmarks/gpu_run.py --smoke --out /tmp/gpu_smoke            # CPU, under a minute
    python benchmarks/gpu_run.py --out gpu_results --budget-min 4.5 --stages ae --seed 1   # a short second call

``--stages`` picks stages and their order (the trainings use ``--train-variant``, else the fastest variant measured
before them, else bf16); the compiled variant keeps time for SALAD only when a SALAD training is still to come.
"""

# ruff: noqa: E402
# The clock starts before the heavy imports: they count against the budget.
import time

START = time.monotonic()

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

#: Known warnings of the imports and of every fit, off so that the tables stay readable in a short output tail.
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*Importing from timm.*",
    ".*dinov2 package is deprecated.*",
    ".*exists and is not empty.*",
    ".*have no logger configured.*",
    ".*infer the `batch_size` from an ambiguous collection.*",
    ".*treespec, LeafSpec.*",
)
for _message in QUIET_WARNINGS:
    warnings.filterwarnings("ignore", message=_message)

import anomalib
import lightning
import torch
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.data import Folder
from anomalib.engine import Engine
from anomalib.models import Ganomaly
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import Tensor
from torch.utils.data import DataLoader

from anomalib_salad import Salad
from anomalib_salad.data import make_synthetic_scans
from anomalib_salad.data.cache import CachedImages, ImageCache
from anomalib_salad.evaluation.metrics import image_statistics, mean_intensity
from anomalib_salad.evaluation.raw_scores import SYMBOLS, raw_scores, scores_of
from anomalib_salad.model.lightning_model import AUTOENCODER
from anomalib_salad.model.precision import native_bf16, synchronize

REPO = Path(__file__).resolve().parents[1]
#: Step 1's configurations: Salad arguments on top of the run's model settings.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"train_precision": "32"},
    "bf16": {"train_precision": "bf16"},
    "bf16+channels-last": {"train_precision": "bf16", "channels_last": True},
    "bf16+compile": {"train_precision": "bf16", "compile_networks": True},
}
#: Every stage, in the default order (the order of value): step 1's variants and batch check, then the trainings.
STAGES = ("fp32", "bf16", "bf16+channels-last", "batch256", "bf16+compile", "salad", "ae", "ganomaly")
BIG_BATCH_STEPS = 3
TARGET_IMAGES_PER_S = 1500


@dataclass(frozen=True)
class RunSize:
    """Sizes and time guesses of one kind of run (the GPU run, or the CPU smoke run of the same code).

    Attributes:
        name: ``"gpu"`` or ``"smoke"``.
        accelerator: Lightning accelerator.
        image_size: Network input side.
        salad: Salad arguments beyond the paper's defaults (none on the GPU).
        ganomaly: GANomaly arguments beyond its defaults (none on the GPU).
        batch: Training batch size.
        big_batch: The batch size whose fit is checked.
        epochs: Epochs of each training.
        throughput_epochs: Epochs of each throughput variant (the first is warm-up).
        workers: Loader processes that decode the files once for the cache (and the test split).
        first_variant_s: Duration guessed for the first throughput variant, before anything is measured.
        compile_s: One-time compile cost guessed for the compile variant; ``None`` skips that variant.
        tail_s: Time for the final validation and the scoring of a training, on top of four epochs' worth.
        reserve_s: Kept free at the end of the budget for writing the results.
        cudnn_benchmark: Let cuDNN time its convolution algorithms once per shape (Lightning's ``benchmark``).
        threads: Torch threads (``None``: torch's default).
        smoke_train: Generated training images (smoke only).
        smoke_test: Generated normal and abnormal test images, each (smoke only).
    """

    name: str
    accelerator: str
    image_size: int
    salad: dict[str, Any]
    ganomaly: dict[str, Any]
    batch: int
    big_batch: int
    epochs: int
    throughput_epochs: int
    workers: int
    first_variant_s: float
    compile_s: float | None
    tail_s: float
    reserve_s: float
    cudnn_benchmark: bool = False
    threads: int | None = None
    smoke_train: int = 0
    smoke_test: int = 0


GPU = RunSize(
    name="gpu",
    accelerator="gpu",
    image_size=256,
    salad={},
    ganomaly={},
    batch=64,
    big_batch=256,
    epochs=200,
    throughput_epochs=4,
    workers=min(8, os.cpu_count() or 1),
    first_variant_s=60.0,
    compile_s=150.0,
    tail_s=15.0,
    reserve_s=10.0,
    cudnn_benchmark=True,
)
SMOKE = RunSize(
    name="smoke",
    accelerator="cpu",
    image_size=32,
    salad={
        "base_channels": 8,
        "max_channels": 32,
        "latent_dim": 16,
        "disc_channels": 8,
        "feature_disc_hidden": (32, 16),
        "shuffle_tiles": 30,
    },
    ganomaly={"n_features": 8, "latent_vec_size": 16},
    batch=16,
    big_batch=32,
    epochs=2,
    throughput_epochs=2,
    workers=0,
    first_variant_s=15.0,
    compile_s=None,
    tail_s=3.0,
    reserve_s=2.0,
    threads=1,  # one core: a smoke run on a shared CI machine neither disturbs others nor is slowed by them
    smoke_train=32,
    smoke_test=16,
)


class StageTimeoutError(Exception):
    """A stage ran past the time it was given."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`StageTimeoutError` in the main thread once ``seconds`` have passed (SIGALRM; a no-op elsewhere).

    Args:
        seconds: Time allowed.

    Yields:
        None: The block runs under the alarm.
    """
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        del signum, frame
        msg = f"interrupted after its {seconds:.0f} s"
        raise StageTimeoutError(msg)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class FitClock(Callback):
    """Synchronised times of a fit's epochs (and batches), and a guard that stops a fit the budget cannot hold.

    After each epoch from the second on, the remaining epochs are projected at the mean steady epoch (epochs after
    the first, which carries compilation); if they and ``tail_s`` would end after ``deadline`` the fit stops at that
    epoch's end. After every batch the fit also stops when ``tail_s`` alone would cross the deadline.

    Args:
        deadline: ``time.monotonic()`` value by which the fit and its tail must be done; ``None`` never stops.
        tail_s: What follows the last epoch (validation, scoring).
        sync_batches: Also record a synchronised time after every batch.
    """

    def __init__(self, deadline: float | None = None, tail_s: float = 0.0, sync_batches: bool = False) -> None:
        self.deadline, self.tail_s, self.sync_batches = deadline, tail_s, sync_batches
        self.start = time.monotonic()
        self.first_batch: float | None = None
        self.epoch_ends: list[float] = []
        self.batch_ends: list[float] = []
        self.stop_reason: str | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Time the end of the setup (cache fill included) at the first batch."""
        if self.first_batch is None:
            synchronize(trainer.strategy.root_device)
            self.first_batch = time.monotonic()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Stop at once when only the tail still fits before the deadline."""
        if self.sync_batches:
            synchronize(trainer.strategy.root_device)
            self.batch_ends.append(time.monotonic())
        if self.deadline is not None and not trainer.should_stop and time.monotonic() + self.tail_s > self.deadline:
            self._stop(trainer, f"deadline reached during epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the epoch end; stop if the remaining epochs are projected to overrun the deadline."""
        synchronize(trainer.strategy.root_device)
        now = time.monotonic()
        self.epoch_ends.append(now)
        done, planned = len(self.epoch_ends), trainer.max_epochs or 0
        if self.deadline is None or trainer.should_stop or done < 2 or done >= planned:
            return
        needed = (planned - done) * self.epoch_s + self.tail_s
        if now + needed > self.deadline:
            self._stop(
                trainer,
                f"stopped after {done}/{planned} epochs: the other {planned - done} at {self.epoch_s:.2f} s each and "
                f"the tail need ~{needed:.0f} s, {self.deadline - now:.0f} s were left",
            )

    def _stop(self, trainer: Trainer, reason: str) -> None:
        trainer.should_stop = True
        self.stop_reason = reason
        print(f"  budget guard: {reason}", flush=True)

    @property
    def epoch_s(self) -> float:
        """Mean steady epoch: the epochs after the first; the first alone if there is no other."""
        ends = self.epoch_ends
        if len(ends) >= 2:
            return (ends[-1] - ends[0]) / (len(ends) - 1)
        return ends[0] - (self.first_batch or self.start) if ends else float("nan")

    @property
    def one_time_s(self) -> float:
        """Start of the fit to the end of the first epoch, less one steady epoch (setup, cache fill, compilation)."""
        return max(self.epoch_ends[0] - self.start - self.epoch_s, 0.0) if self.epoch_ends else float("nan")


@dataclass
class Context:
    """What the stages share: settings, the clock, the device, the data, and the report being written."""

    args: argparse.Namespace
    size: RunSize
    root: Path
    work: Path
    device: torch.device
    report: dict[str, Any]
    deadline: float
    test: CachedImages | None = None
    fastest: dict[str, Any] | None = None
    salad_epoch_s: float | None = None

    def left(self) -> float:
        """Seconds until the deadline (negative when past it)."""
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the process started."""
        return time.monotonic() - START


# ----------------------------------------------------------------------------------------------------- building


def datamodule(ctx: Context, batch: int) -> Folder:
    """The brain MRI (or smoke) folder: 1000 normal training scans, test/ split in half for validation and test."""
    return Folder(
        name=f"gpu_run_{ctx.size.name}",
        root=ctx.root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=batch,
        eval_batch_size=ctx.size.batch,
        num_workers=ctx.size.workers,
        val_split_mode="from_test",
        val_split_ratio=0.5,
        seed=0,
    )


def salad_settings(ctx: Context, variant: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A variant's Salad arguments for this device, and a note where bf16 had to give way.

    ``train_precision="bf16"`` is refused on a CPU without native bf16 (it would be emulated, ~27x slower); there the
    bf16 variants run with ``"auto"`` (fp32) and say so, so that the smoke run still covers their code path.
    """
    settings = dict(variant)
    native, evidence = native_bf16(ctx.device)
    if settings.get("train_precision") == "32" and ctx.device.type == "cuda" and tf32_convolutions():
        return settings, "convolutions in TF32, PyTorch's cuDNN default"
    if settings.get("train_precision") == "bf16" and not native:
        settings["train_precision"] = "auto"
        return settings, f"no native bf16 here ({evidence}): ran with train_precision=auto, i.e. fp32"
    return settings, None


def fit(
    ctx: Context,
    model: LightningModule,
    data: Folder,
    *,
    name: str,
    epochs: int,
    validate: bool,
    deadline: float | None = None,
    tail_s: float = 0.0,
    limit_train_batches: int | None = None,
    sync_batches: bool = False,
    callbacks: tuple[Callback, ...] = (),
) -> FitClock:
    """``Engine.fit`` without checkpoints or loggers, timed by a :class:`FitClock`.

    Args:
        ctx: The run.
        model: The model.
        data: The datamodule.
        name: Stage name (its work folder).
        epochs: ``max_epochs``.
        validate: Validate once, after the last epoch (else never).
        deadline: The clock's deadline. Defaults to ``None``.
        tail_s: The clock's tail. Defaults to ``0.0``.
        limit_train_batches: Batches per epoch, if fewer than all. Defaults to ``None``.
        sync_batches: Record a time after every batch. Defaults to ``False``.
        callbacks: More callbacks. Defaults to ``()``.

    Returns:
        FitClock: The times.
    """
    clock = FitClock(deadline, tail_s, sync_batches)
    work = ctx.work / name
    engine = Engine(
        max_epochs=epochs,
        accelerator=ctx.size.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # A checkpoint of the paper-width model every epoch would cost seconds each; nothing here reloads one.
        callbacks=[ModelCheckpoint(dirpath=work / "checkpoints", save_top_k=0), clock, *callbacks],
        default_root_dir=work,
        benchmark=ctx.size.cudnn_benchmark,
        check_val_every_n_epoch=epochs,
        limit_val_batches=None if validate else 0,
        limit_train_batches=limit_train_batches,
    )
    engine.fit(model, datamodule=data)
    return clock


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak allocated and reserved GPU memory since the last reset, GiB (``None`` on a CPU)."""
    if device.type != "cuda":
        return {"peak_gib": None, "peak_reserved_gib": None}
    return {
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def reset_memory(device: torch.device) -> None:
    """Free what earlier stages left and restart the peak-memory counters."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ----------------------------------------------------------------------------------------------------- estimates


def projected_s(row: dict[str, Any], epochs: int) -> float:
    """Wall time of an ``epochs``-epoch fit at a throughput row's rates (one-time cost + steady epochs)."""
    return row["one_time_s"] + epochs * row["epoch_s"]


def best_row(ctx: Context, include_compile: bool = True) -> dict[str, Any] | None:
    """The measured throughput variant with the shortest projected training, if any."""
    rows = [row for row in ctx.report["throughput"] if include_compile or not row["compile_networks"]]
    return min(rows, key=lambda row: projected_s(row, ctx.size.epochs)) if rows else None


def tail_s(ctx: Context, epoch_s: float) -> float:
    """Final validation, moving the model and scoring the test split: four epochs' worth and a fixed part."""
    return ctx.size.tail_s + 4 * epoch_s


def salad_estimate(ctx: Context, include_compile: bool = True) -> float | None:
    """Projected seconds of the 200-epoch SALAD stage from the best measured variant (``None``: nothing measured)."""
    row = best_row(ctx, include_compile)
    if row is None:
        return None
    return 1.05 * (projected_s(row, ctx.size.epochs) + tail_s(ctx, row["epoch_s"]))


# ----------------------------------------------------------------------------------------------------- stages


def throughput_variant(ctx: Context, name: str) -> dict[str, Any]:
    """Train one step-1 configuration for a few epochs (no validation) and measure it."""
    settings, note = salad_settings(ctx, VARIANTS[name])
    seed_everything(0, verbose=False)
    model = Salad(image_size=ctx.size.image_size, **ctx.size.salad, **settings, visualizer=False)
    data = datamodule(ctx, ctx.size.batch)
    reset_memory(ctx.device)
    start = time.monotonic()
    clock = fit(ctx, model, data, name=f"throughput_{name}", epochs=ctx.size.throughput_epochs, validate=False)
    wall = time.monotonic() - start
    train_images = len(data.train_data)
    row = {
        "variant": name,
        "precision": "bf16 autocast" if model.bf16 else "fp32",
        "channels_last": bool(settings.get("channels_last", False)),
        "compile_networks": bool(settings.get("compile_networks", False)),
        "settings": settings,
        "epochs": len(clock.epoch_ends),
        "train_images": train_images,
        "one_time_s": clock.one_time_s,
        "epoch_s": clock.epoch_s,
        "images_per_s": train_images / clock.epoch_s,
        "wall_s": wall,
        **peak_memory(ctx.device),
        "note": note,
    }
    row["projected_s"] = projected_s(row, ctx.size.epochs)
    ctx.report["throughput"].append(row)
    memory = f"{row['peak_gib']:6.2f}" if row["peak_gib"] is not None else "   n/a"
    print(
        f"{name:<20} {row['precision']:<14} {row['one_time_s']:>9.1f} {row['epoch_s']:>8.3f} "
        f"{row['images_per_s']:>8.0f} {row['projected_s'] / 60:>10.1f} {memory:>9}",
        flush=True,
    )
    return row


def big_batch_check(ctx: Context) -> dict[str, Any]:
    """A few training steps at the big batch with the fastest non-compiled variant (compiling anew would add time)."""
    row = best_row(ctx, include_compile=False)
    name = row["variant"] if row else "bf16"
    settings, note = salad_settings(ctx, VARIANTS[name])
    seed_everything(0, verbose=False)
    model = Salad(image_size=ctx.size.image_size, **ctx.size.salad, **settings, visualizer=False)
    data = datamodule(ctx, ctx.size.big_batch)
    reset_memory(ctx.device)
    result: dict[str, Any] = {"batch": ctx.size.big_batch, "variant": name, "note": note}
    try:
        clock = fit(
            ctx,
            model,
            data,
            name="big_batch",
            epochs=1,
            validate=False,
            limit_train_batches=BIG_BATCH_STEPS,
            sync_batches=True,
        )
    except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
        if not isinstance(error, torch.cuda.OutOfMemoryError) and "out of memory" not in str(error).lower():
            raise
        result |= {"fits": False, "error": str(error).splitlines()[0], **peak_memory(ctx.device)}
        print(f"batch {ctx.size.big_batch}: out of memory ({result['error']})", flush=True)
        return result
    ends = clock.batch_ends
    per_step = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else float("nan")
    result |= {
        "fits": True,
        "steps": len(ends),
        "batch_images": min(ctx.size.big_batch, len(data.train_data)),
        "images_per_s": min(ctx.size.big_batch, len(data.train_data)) / per_step if len(ends) > 1 else None,
        **peak_memory(ctx.device),
    }
    memory = f", peak {result['peak_gib']:.1f} GiB" if result["peak_gib"] is not None else ""
    print(f"batch {ctx.size.big_batch} ({name}): fits, {len(ends)} steps{memory}", flush=True)
    return result


def test_split(ctx: Context) -> CachedImages:
    """The test split's images, decoded once onto the device and shared by the three models (at their own size)."""
    if ctx.test is None:
        data = datamodule(ctx, ctx.size.batch)
        data.setup()
        ctx.test = CachedImages(data.test_data, None, ctx.device, "test", num_workers=ctx.size.workers)
    return ctx.test


def score(ctx: Context, model: LightningModule) -> tuple[dict[str, Tensor], Tensor]:
    """Raw fp32 test scores on the CPU, by the paper's symbol (SALAD's three) or as ``GANomaly``, and the labels."""
    test = test_split(ctx)
    model.to(ctx.device).eval()
    names = scores_of(model)
    values, target = raw_scores(model, DataLoader(test, batch_size=ctx.size.batch, collate_fn=test.collate_fn), names)
    label = SYMBOLS if isinstance(model, Salad) else {"score": "GANomaly"}
    return {label[name]: value.float().cpu() for name, value in values.items()}, target.cpu().int()


def per_image(ctx: Context, scores: dict[str, Tensor], target: Tensor, intensity: Tensor) -> dict[str, list]:
    """Each test image's path, label, mean intensity and raw scores: what rescoring or a new metric needs later."""
    paths = [str(path) for path in test_split(ctx).paths]
    return {"image_path": paths, "label": target.tolist(), "mean_intensity": intensity.tolist()} | {
        name: values.tolist() for name, values in scores.items()
    }


def build_model(ctx: Context, kind: str) -> tuple[LightningModule, str, tuple[Callback, ...]]:
    """The model of a training stage, its configuration in words, and the callbacks it needs besides its own."""
    if kind == "ganomaly":
        size = (ctx.size.image_size, ctx.size.image_size)
        model = Ganomaly(**ctx.size.ganomaly, pre_processor=Ganomaly.configure_pre_processor(size), visualizer=False)
        return (
            model,
            "fp32 (anomalib defaults; its BCELoss refuses autocast), images cached on the device",
            (ImageCache(),),
        )
    fastest = ctx.fastest
    weights = AUTOENCODER if kind == "ae" else {}
    model = Salad(image_size=ctx.size.image_size, **ctx.size.salad, **fastest["settings"], **weights, visualizer=False)
    return model, fastest["variant"], ()


def train_stage(ctx: Context, kind: str) -> dict[str, Any]:
    """Train one model for the run's epochs (validating after the last), then score the test split."""
    seed_everything(ctx.args.seed, verbose=False)
    model, config, callbacks = build_model(ctx, kind)
    data = datamodule(ctx, ctx.size.batch)
    reset_memory(ctx.device)
    row = best_row(ctx)
    epoch_guess = ctx.salad_epoch_s or (row["epoch_s"] if row else 1.0)
    start = time.monotonic()
    clock = fit(
        ctx,
        model,
        data,
        name=kind,
        epochs=ctx.size.epochs,
        validate=True,
        deadline=ctx.deadline,
        tail_s=tail_s(ctx, epoch_guess),
        callbacks=callbacks,
    )
    fit_s = time.monotonic() - start
    epochs = len(clock.epoch_ends)
    if kind == "salad":
        ctx.salad_epoch_s = clock.epoch_s
    scored_at = time.monotonic()
    raw, target = score(ctx, model)
    intensity = mean_intensity(test_split(ctx).images)
    scores = {name: image_statistics(values, target, intensity) for name, values in raw.items()}
    result = {
        "model": {"salad": "SALAD", "ae": "SSIM autoencoder", "ganomaly": "GANomaly"}[kind],
        "configuration": config,
        "precision": ("bf16 autocast" if model.bf16 else "fp32") if isinstance(model, Salad) else "fp32",
        "epochs_planned": ctx.size.epochs,
        "epochs_trained": epochs,
        "stopped": clock.stop_reason,
        "fit_s": fit_s,
        "one_time_s": clock.one_time_s,
        "epoch_s": clock.epoch_s,
        "images_per_s": len(data.train_data) * epochs / fit_s,
        "steady_images_per_s": len(data.train_data) / clock.epoch_s,
        "score_s": time.monotonic() - scored_at,
        "test_images": len(test_split(ctx)),
        **peak_memory(ctx.device),
        "scores": scores,
        "per_image": per_image(ctx, raw, target, intensity),
    }
    ctx.report["training"][kind] = result
    if clock.stop_reason:
        ctx.report["skipped"].append({"stage": f"train {kind}", "status": "stopped", "reason": clock.stop_reason})
    print_training(result)
    return result


def print_training(result: dict[str, Any]) -> None:
    """One line per score: AUROC and the paper's four best-F1 statistics."""
    stopped = f" [{result['stopped']}]" if result["stopped"] else ""
    print(
        f"{result['model']} ({result['configuration']}): {result['epochs_trained']}/{result['epochs_planned']} epochs "
        f"in {result['fit_s']:.1f} s ({result['images_per_s']:.0f} img/s){stopped}",
        flush=True,
    )
    for name, values in result["scores"].items():
        print(
            f"  {name:<9} AUROC {values['auroc']:.4f} (matched {values['matched_auroc']:.4f})  F1 {values['f1']:.4f}  "
            f"ACC {values['accuracy']:.4f}  "
            f"SEN {values['sensitivity']:.4f}  SPE {values['specificity']:.4f}",
            flush=True,
        )


# ----------------------------------------------------------------------------------------------------- the plan


def run_stage(
    ctx: Context, name: str, needs_s: float, allowed_s: float, work: Callable[[], Any], why: str = ""
) -> bool:
    """Run one stage if ``needs_s`` fits in what is left, under an alarm of ``allowed_s``; record the outcome.

    Args:
        ctx: The run.
        name: Stage name.
        needs_s: Estimated duration; the stage is skipped if it exceeds ``allowed_s``.
        allowed_s: Time the stage may take (what is left, or less where later stages must be protected).
        work: The stage.
        why: Words on ``allowed_s`` where it is less than what is left, for the skip reason.

    Returns:
        bool: Whether the stage completed.
    """
    left = ctx.left()
    why = why if allowed_s < left else f"{max(left, 0):.0f} s left of the budget"
    allowed_s = min(allowed_s, left)
    if needs_s > allowed_s:
        skip(ctx, name, "skipped", f"needs ~{needs_s:.0f} s, {max(allowed_s, 0):.0f} s allowed ({why})")
        return False
    start = time.monotonic()
    status, reason = "done", None
    try:
        with time_limit(allowed_s):
            work()
    except StageTimeoutError as error:
        status, reason = "interrupted", f"{error} (budget)"
    except Exception as error:  # one failed stage must not cost the others their time
        traceback.print_exc()
        status, reason = "failed", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    seconds = time.monotonic() - start
    reset_memory(ctx.device)
    ctx.report["stages"].append({"stage": name, "status": status, "seconds": seconds, "reason": reason})
    if status != "done":
        ctx.report["skipped"].append({"stage": name, "status": status, "reason": reason})
        print(f"{name}: {status}: {reason}", flush=True)
    write_report(ctx)
    return status == "done"


def skip(ctx: Context, name: str, status: str, reason: str) -> None:
    """Record a stage that did not run."""
    ctx.report["stages"].append({"stage": name, "status": status, "seconds": 0.0, "reason": reason})
    ctx.report["skipped"].append({"stage": name, "status": status, "reason": reason})
    print(f"{name}: {status}: {reason}", flush=True)
    write_report(ctx)


def protected_s(ctx: Context) -> tuple[float, str]:
    """Seconds that the compile variant must leave for the SALAD run, and that in words.

    Nothing is kept before anything is measured, nor when SALAD at the best configuration so far would not fit
    anyway: then measuring the other configurations is what may still bring it within the budget.
    """
    needed = salad_estimate(ctx, include_compile=False)
    if needed is None or needed > ctx.left():
        return 0.0, ""
    return needed, f"{needed:.0f} s kept for the {ctx.size.epochs}-epoch SALAD run"


def run_variant(ctx: Context, name: str, salad_follows: bool = True) -> None:
    """Step 1, one configuration: skipped when it would not fit; compilation also when it would starve SALAD.

    The plain variants take seconds and decide how fast SALAD trains, so they run whenever they fit (capped at three
    times their estimate); the compiled one costs minutes of compilation whose length is hard to foresee, so it must
    leave the SALAD run its projected time when that run is still to come (``salad_follows``).
    """
    size, stage = ctx.size, f"throughput {name}"
    compiled = VARIANTS[name].get("compile_networks", False)
    if compiled and size.compile_s is None:
        skip(ctx, stage, "skipped", "smoke run: torch.compile on a CPU spends minutes generating C++ code")
        return
    rows = [row for row in ctx.report["throughput"] if not row["compile_networks"]]
    needs = rows[-1]["wall_s"] * 1.25 if rows else size.first_variant_s
    if compiled:
        protected, why = protected_s(ctx) if salad_follows else (0.0, "")
        run_stage(
            ctx, stage, needs + size.compile_s, ctx.left() - protected, lambda: throughput_variant(ctx, name), why
        )
    else:
        run_stage(ctx, stage, needs, 3 * needs, lambda: throughput_variant(ctx, name), "3x its estimate")


def run_big_batch(ctx: Context) -> None:
    """Step 1, the batch-256 check with the fastest plain configuration measured so far (capped like a variant)."""
    plain = best_row(ctx, include_compile=False)

    def check() -> None:
        ctx.report["batch_256"] = big_batch_check(ctx)

    needs = plain["wall_s"] if plain else ctx.size.first_variant_s
    run_stage(ctx, f"batch {ctx.size.big_batch}", needs, 3 * needs, check, "3x its estimate")


def choose_fastest(ctx: Context) -> None:
    """The configuration of the trainings.

    ``--train-variant`` if given, else the measured variant with the shortest projected training, else bf16 (fp32
    where bf16 is not native).
    """
    row = best_row(ctx)
    name = ctx.args.train_variant or (row["variant"] if row else "bf16")
    if ctx.args.train_variant or row is None:
        chosen_by = "--train-variant" if ctx.args.train_variant else "the default: no throughput stage had run"
        ctx.fastest = {"variant": name, "settings": salad_settings(ctx, VARIANTS[name])[0], "chosen_by": chosen_by}
        print(f"trainings with {name} ({chosen_by})", flush=True)
    else:
        ctx.fastest = {
            "variant": name,
            "settings": row["settings"],
            "projected_s": row["projected_s"],
            "chosen_by": f"shortest projected {ctx.size.epochs}-epoch wall time (one-time cost + steady epochs)",
        }
        print(f"fastest for {ctx.size.epochs} epochs: {name} (~{row['projected_s']:.0f} s projected)", flush=True)
    ctx.report["fastest"] = ctx.fastest


def run(ctx: Context) -> None:
    """The stages of ``--stages`` in order; by default throughput table, batch 256, SALAD, autoencoder, GANomaly."""
    size, stages = ctx.size, ctx.args.stages
    if any(stage in VARIANTS for stage in stages):
        print(
            f"\nThroughput: {size.image_size} px, batch {size.batch}, "
            f"{'paper widths' if not size.salad else 'tiny widths'}, five losses, Engine.fit, images cached on "
            f"{ctx.device.type}; {size.throughput_epochs} epochs each, the first not timed",
            flush=True,
        )
        print(
            f"{'variant':<20} {'precision':<14} {'one-time s':>9} {'epoch s':>8} {'img/s':>8} "
            f"{f'{size.epochs} ep min':>10} {'peak GiB':>9}",
            flush=True,
        )
    for index, stage in enumerate(stages):
        if stage in VARIANTS:
            run_variant(ctx, stage, salad_follows="salad" in stages[index:])
        elif stage == "batch256":
            run_big_batch(ctx)
        else:
            if ctx.fastest is None:
                choose_fastest(ctx)
                print(
                    f"\nTrainings: {size.epochs} epochs, batch {size.batch}, seed {ctx.args.seed}, on {ctx.root}",
                    flush=True,
                )
            run_training(ctx, stage)


def run_training(ctx: Context, kind: str) -> None:
    """One training stage, started if it is projected to fit.

    SALAD's duration is projected from the throughput table; the autoencoder's and GANomaly's speed is unknown until
    they run, so they start when three epochs fit and their guard stops them when the rest won't.
    """
    size = ctx.size
    row, plain_row = best_row(ctx), best_row(ctx, include_compile=False)
    if kind == "salad":
        run_stage(
            ctx, "train salad", salad_estimate(ctx) or size.first_variant_s, ctx.left(), lambda: train_stage(ctx, kind)
        )
        return
    epoch_s = ctx.salad_epoch_s or (row["epoch_s"] if row else 1.0)
    one_time = (plain_row or row)["one_time_s"] if (plain_row or row) else size.first_variant_s
    needs = one_time + 3 * epoch_s + tail_s(ctx, epoch_s)
    why = "it starts when 3 epochs fit; its guard stops it once the other epochs are projected not to"
    run_stage(ctx, f"train {kind}", needs, ctx.left(), lambda: train_stage(ctx, kind), why)


# ----------------------------------------------------------------------------------------------------- report


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the device, for the report."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": lightning.__version__,
        "anomalib": anomalib.__version__,
        "cpus": os.cpu_count(),
        "device": str(device),
        "bf16": native_bf16(device)[1],
    }
    if device.type == "cuda":
        try:  # nothing here may stop the run: these attributes move between torch versions
            properties = torch.cuda.get_device_properties(device)
            info |= {"gpu": properties.name, "gpu_memory_gib": properties.total_memory / 2**30}
            info |= {"tf32_convolutions": tf32_convolutions(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
        except Exception as error:
            info["environment_error"] = repr(error)
    return info


def tf32_convolutions() -> bool:
    """Whether cuDNN runs fp32 convolutions in TF32 (PyTorch's default), so the "fp32" row is partly TF32."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except Exception:
        return False


def targets(ctx: Context) -> dict[str, Any]:
    """The run's targets (training images/s, the big batch, SALAD's full schedule in the budget), as far as measured."""
    rows = ctx.report["throughput"]
    salad = ctx.report["training"].get("salad")
    big = ctx.report.get("batch_256")
    return {
        f"images_per_s_at_least_{TARGET_IMAGES_PER_S}": (
            max(row["images_per_s"] for row in rows) >= TARGET_IMAGES_PER_S if rows else None
        ),
        f"batch_{ctx.size.big_batch}_fits": big["fits"] if big else None,
        f"salad_{ctx.size.epochs}_epochs_in_budget": (
            salad["epochs_trained"] == salad["epochs_planned"] and not salad["stopped"]
            if salad
            else (False if "salad" in ctx.args.stages else None)
        ),
    }


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as one markdown page: throughput table, batch check, trainings table, skipped stages."""
    env, size = report["environment"], report["size"]
    lines = [
        f"# One GPU run ({report['mode']}): SALAD at {size['image_size']} px on {env.get('gpu', env['device'])}",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), lightning {env['lightning']}, anomalib {env['anomalib']}; "
        f"budget {report['budget_s']:.0f} s, elapsed {report['elapsed_s']:.0f} s; {report['finished'] or 'running'}",
    ]
    if report["throughput"]:
        lines += [
            "",
            f"## Throughput: {size['image_size']} px, batch {size['batch']}, five losses, `Engine.fit`, images cached "
            "on the device",
            "",
            f"| configuration | precision | one-time s | epoch s | train img/s | {size['epochs']}-epoch min "
            "| peak GiB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
    notes = sorted({row["note"] for row in report["throughput"] if row["note"]})
    for row in report["throughput"]:
        note = f" [{notes.index(row['note']) + 1}]" if row["note"] else ""
        lines.append(
            f"| {row['variant']}{note} | {row['precision']} | {row['one_time_s']:.1f} | {row['epoch_s']:.3f} | "
            f"{row['images_per_s']:.0f} | {row['projected_s'] / 60:.1f} | {_number(row['peak_gib'], 2)} |"
        )
    lines += [""] * bool(notes) + [f"[{number}] {note}" for number, note in enumerate(notes, 1)]
    big = report.get("batch_256")
    if big:
        verdict = "fits" if big["fits"] else f"does not fit ({big.get('error')})"
        memory = f", peak {big['peak_gib']:.2f} GiB" if big.get("peak_gib") is not None else ""
        speed = f", {big['images_per_s']:.0f} img/s over {big['steps']} steps" if big.get("images_per_s") else ""
        lines += ["", f"Batch {big['batch']} ({big['variant']}): {verdict}{memory}{speed}."]
    if report.get("fastest"):
        lines += ["", f"Trainings with **{report['fastest']['variant']}** ({report['fastest']['chosen_by']})."]
    lines += [
        "",
        f"## Trainings: {size['epochs']} epochs, batch {size['batch']}, seed {report['args'].get('seed', '0')}; "
        "test split, metrics at the best-F1 threshold",
        "",
        "| model | configuration | epochs | fit s | img/s | score | AUROC | matched AUROC | F1 | ACC | SEN | SPE |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in report["training"].values():
        first = True
        for name, values in result["scores"].items():
            epochs = f"{result['epochs_trained']}/{result['epochs_planned']}" + (
                " (stopped)" if result["stopped"] else ""
            )
            head = (
                f"| {result['model']} | {result['configuration']} | {epochs} | {result['fit_s']:.0f} "
                f"| {result['images_per_s']:.0f} "
                if first
                else "| | | | | "
            )
            lines.append(
                f"{head}| {name} | {values['auroc']:.4f} | {_number(values.get('matched_auroc'), 4)} | "
                f"{values['f1']:.4f} | {values['accuracy']:.4f} | "
                f"{values['sensitivity']:.4f} | {values['specificity']:.4f} |"
            )
            first = False
    lines += ["", "## Targets", ""]
    lines += [f"- {name}: {value}" for name, value in report.get("targets", {}).items()]
    lines += ["", "## Skipped, stopped or failed", ""]
    lines += [f"- {item['stage']}: {item['status']}: {item['reason']}" for item in report["skipped"]] or ["- none"]
    return "\n".join(lines) + "\n"


def write_report(ctx: Context) -> None:
    """Rewrite ``gpu_run.json`` and ``gpu_run.md`` (each through a temporary file, so neither is ever half written)."""
    ctx.report["elapsed_s"] = ctx.elapsed()
    ctx.report["targets"] = targets(ctx)
    out = Path(ctx.args.out)
    out.mkdir(parents=True, exist_ok=True)
    for target, text in (
        (out / "gpu_run.json", json.dumps(ctx.report, indent=2, default=str)),
        (out / "gpu_run.md", markdown(ctx.report)),
    ):
        temporary = target.with_suffix(target.suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(target)


# ----------------------------------------------------------------------------------------------------- main


def new_report(args: argparse.Namespace, size: RunSize, root: Path, device: torch.device, budget_s: float) -> dict:
    """The report before any stage: the settings, the environment and empty results."""
    return {
        "mode": size.name,
        "args": {key: str(value) for key, value in vars(args).items()},
        "root": str(root),
        "size": {key: value for key, value in asdict(size).items() if key not in {"salad", "ganomaly"}},
        "model_arguments": {"salad": size.salad, "ganomaly": size.ganomaly},
        "environment": environment(device),
        "budget_s": budget_s,
        "elapsed_s": 0.0,
        "finished": None,
        "throughput": [],
        "batch_256": None,
        "fastest": None,
        "training": {},
        "stages": [],
        "skipped": [],
    }


def default_root() -> Path:
    """``.data/braintumor`` (the device-wheels script's copy) if present, else ``../shared/data/braintumor``."""
    local = REPO / ".data" / "braintumor"
    return local if local.is_dir() else REPO.parent / "shared" / "data" / "braintumor"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_run.json and gpu_run.md")
    parser.add_argument("--budget-min", type=float, default=8.0, help="stop before this many minutes (default 8)")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="Folder dataset (default: .data/braintumor if present, else ../shared/data/braintumor)",
    )
    parser.add_argument("--smoke", action="store_true", help="same code on the CPU at tiny sizes, under a minute")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each training (default 200; smoke 2)")
    parser.add_argument(
        "--stages",
        type=lambda text: [stage.strip() for stage in text.split(",") if stage.strip()],
        default=list(STAGES),
        help=f"stages to run, in this order (default: {','.join(STAGES)})",
    )
    parser.add_argument(
        "--train-variant",
        choices=list(VARIANTS),
        default=None,
        help="configuration of the trainings (default: the fastest measured, else bf16)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the trainings (the data split stays at seed 0)")
    args = parser.parse_args(argv)
    unknown = [stage for stage in args.stages if stage not in STAGES]
    if unknown:
        parser.error(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    return args


def quiet() -> None:
    """Keep the output to the tables: Lightning's and anomalib's per-fit notices off (warnings: QUIET_WARNINGS)."""
    loggers = (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning_fabric",
        "pytorch_lightning",
        "anomalib",
        "anomalib_salad",
    )
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    # The data may lie in `.data/`, so anomalib calls every image "hidden": six lines per fit, enough to push the tables
    # out of a short output tail.
    logging.getLogger("anomalib.data.utils.path").addFilter(
        lambda record: "hidden files found" not in record.getMessage()
    )


def main(argv: list[str] | None = None) -> int:
    """Run the stages inside the budget and write the report; the exit status is 0 unless setup failed."""
    args = parse_args(argv)
    quiet()
    size = SMOKE if args.smoke else GPU
    if args.epochs is not None:
        size = replace(size, epochs=args.epochs)
    if size.accelerator == "gpu" and not torch.cuda.is_available():
        print("gpu_run: no CUDA device here; --smoke runs the same code on the CPU at tiny sizes", file=sys.stderr)
        return 2
    device = torch.device("cuda" if size.accelerator == "gpu" else "cpu")
    if size.threads is not None:
        torch.set_num_threads(size.threads)
    budget_s = args.budget_min * 60
    work = Path(tempfile.mkdtemp(prefix="gpu_run_"))
    try:
        if args.smoke:
            root = make_synthetic_scans(
                work / "scans", image_size=size.image_size, num_train=size.smoke_train, num_test=size.smoke_test
            )
        else:
            root = (args.root or default_root()).resolve()
            if not (root / "train" / "normal").is_dir():
                print(
                    f"gpu_run: {root} has no train/normal folder (run ../shared/tools/device-wheels.sh --data, or "
                    "pass --root)",
                    file=sys.stderr,
                )
                return 2
        report = new_report(args, size, root, device, budget_s)
        ctx = Context(args, size, root, work, device, report, deadline=START + budget_s - size.reserve_s)
        print(
            f"gpu_run ({size.name}) on {report['environment'].get('gpu', device)}; budget {budget_s:.0f} s, "
            f"{ctx.elapsed():.0f} s spent on imports and setup",
            flush=True,
        )
        write_report(ctx)
        try:
            run(ctx)
        finally:
            report["finished"] = f"finished after {ctx.elapsed():.0f} s of {budget_s:.0f} s"
            write_report(ctx)
        print(
            f"\n{report['finished']}; {len(report['skipped'])} stage(s) skipped, stopped or failed; "
            f"results in {args.out}/gpu_run.json and gpu_run.md",
            flush=True,
        )
        for item in report["skipped"]:
            print(f"  {item['stage']}: {item['status']}: {item['reason']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
