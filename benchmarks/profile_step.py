"""Where a SALAD training step spends its time: wall time per component of the shipped 64 px fast path.

Trains the model of ``--config`` (default ``configs/salad_braintumor_64px.yaml``: cached images, bf16 autocast
where the CPU has it) through anomalib's ``Engine`` for ``--epochs`` epochs without validation and profiles the
last one with ``torch.profiler``. Each network's and loss's forward pass, the proxy task, every backward pass and
every optimiser step are timed as named ranges (forward hooks and wrappers added here; the model is not changed);
what is left of the step is Lightning, logging and the small tensor work between them. Prints the time per step of
each component, its share of the step, and the ten most expensive operators.

Usage:
    python benchmarks/profile_step.py --root ../shared/data/braintumor
    python benchmarks/profile_step.py --set train_precision=32    # the fp32 path, for comparison
"""

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.profiler import ProfilerActivity, profile, record_function

from anomalib_salad import Salad

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "salad."


def _timed_forward(module: torch.nn.Module, name: str) -> None:
    """Open a profiler range around every forward call of ``module``."""
    ranges: list[Any] = []

    def enter(*_: Any) -> None:
        ranges.append(record_function(PREFIX + name).__enter__())

    def leave(*_: Any) -> None:
        ranges.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


def _timed_call(function: Callable, name: str) -> Callable:
    """``function`` inside a profiler range."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(PREFIX + name):
            return function(*args, **kwargs)

    return wrapped


class ProfileLastEpoch(Callback):
    """Profile the last training epoch; count its steps and wall time."""

    def __init__(self) -> None:
        self.profiler: profile | None = None
        self.steps, self.images, self.seconds = 0, 0, 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        """Start the profiler at the last epoch."""
        if trainer.current_epoch == trainer.max_epochs - 1:
            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.__enter__()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Count the profiled steps and images."""
        if self.profiler is not None:
            self.steps, self.images = self.steps + 1, self.images + len(batch.image)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        """Stop the profiler and keep the epoch's wall time."""
        if self.profiler is not None:
            self.seconds = time.perf_counter() - self.start
            self.profiler.__exit__(None, None, None)


def instrument(model: Salad) -> None:
    """Named ranges around each network, loss, proxy task, backward pass and optimiser step."""
    networks = model.model
    for name in ("encoder", "decoder", "restoration_decoder", "image_discriminator", "feature_discriminator"):
        if getattr(networks, name, None) is not None:
            _timed_forward(getattr(networks, name), f"forward {name}")
    for name in ("structure_loss", "latent_loss", "proxy_task"):
        if getattr(model, name, None) is not None:
            _timed_forward(getattr(model, name), name)
    model.manual_backward = _timed_call(model.manual_backward, "backward (all)")
    model.center_loss.update_center = _timed_call(model.center_loss.update_center, "center update")
    model.log_dict = _timed_call(model.log_dict, "log_dict")


def main() -> None:
    """Train, profile the last epoch, print the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "salad_braintumor_64px.yaml")
    parser.add_argument("--root", help="overrides the config's data root")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is profiled")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model argument overrides (YAML)")
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    overrides = dict(item.split("=", 1) for item in args.set)
    model_args = dict(config["model"]["init_args"]) | {key: yaml.safe_load(value) for key, value in overrides.items()}
    data_args = dict(config["data"]["init_args"]) | ({"root": args.root} if args.root else {})
    seed_everything(0)
    model = Salad(**model_args)
    instrument(model)
    timer = ProfileLastEpoch()
    engine = Engine(
        max_epochs=args.epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        logger=False,
        enable_progress_bar=False,
        default_root_dir="runs/profile_step",
    )
    engine.fit(model, datamodule=Folder(**data_args))

    events = timer.profiler.key_averages()
    step_ms = 1000 * timer.seconds / timer.steps
    print(
        f"\n{timer.steps} steps, {timer.images} images, {timer.images / timer.seconds:.1f} images/s (profiled), "
        f"{step_ms:.0f} ms per step, precision {'bf16' if model.bf16 else 'fp32'}, threads {torch.get_num_threads()}"
    )
    print("\n| component | ms per step | share of step |\n| --- | --- | --- |")
    named = sorted((e for e in events if e.key.startswith(PREFIX)), key=lambda e: -e.cpu_time_total)
    optimiser = [e for e in events if e.key.startswith("Optimizer.step#")]
    for event in named + optimiser:
        ms = event.cpu_time_total / 1000 / timer.steps
        print(f"| {event.key.removeprefix(PREFIX)} ({event.count // timer.steps}x) | {ms:.1f} | {ms / step_ms:.0%} |")
    print("\n| operator | self ms per step | share of step |\n| --- | --- | --- |")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        ms = event.self_cpu_time_total / 1000 / timer.steps
        print(f"| {event.key} | {ms:.1f} | {ms / step_ms:.0%} |")


if __name__ == "__main__":
    main()
