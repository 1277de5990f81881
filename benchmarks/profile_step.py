"""Where a SALAD training step spends its time: wall time per component of the shipped 64 px fast path.

Trains the model of ``--config`` (default ``configs/salad_braintumor_64px.yaml``: cached images, bf16 autocast
where the CPU has it) through anomalib's ``Engine`` for ``--epochs`` epochs without validation and profiles the
last one with ``torch.profiler``. Each network's and loss's forward pass, the proxy task, every backward pass and
every optimiser step are timed as named ranges (forward hooks and wrappers added here; the model is not changed);
what is left of the step is Lightning, logging and the small tensor work between them. Prints the time per step of
each component, its share of the step, and the ten most expensive operators.

With ``--flops`` it also counts the floating-point operations of one training step (first step, forward and both
backward passes, ``torch.utils.flop_counter``) and sets the profiled step's rate beside this machine's dense matrix
product rate in the same precision: how far the convolutions are from what the CPU can do, i.e. how much a faster
kernel could still give without changing the method's passes. ``--layers`` then times each convolution of the
trained networks alone (forward and backward, on the step's batch size and the model's precision) and prints its rate,
which shows which layer shapes the CPU's convolution kernels handle badly.

Usage:
    python benchmarks/profile_step.py --root ../shared/data/braintumor
    python benchmarks/profile_step.py --set train_precision=32    # the fp32 path, for comparison
    python benchmarks/profile_step.py --flops --layers             # + FLOPs per step and per layer, GEMM rate
"""

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import Tensor
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

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


class CountFirstStep(Callback):
    """Count the floating-point operations of the first training step (its forward and backward passes)."""

    def __init__(self) -> None:
        self.counter = FlopCounterMode(display=False)
        self.flops, self.images = 0, 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Start counting at the first step."""
        if trainer.global_step == 0 and not self.flops:
            self.counter.__enter__()
            self.images = len(batch.image)

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Stop counting after the first step."""
        if self.images and not self.flops:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()


def _sorted_seconds(function: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``function`` after ``warmup`` untimed ones, fastest first."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a ``size``-cube matrix product in ``dtype`` on this CPU's threads, best of ``repeats``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / _sorted_seconds(lambda: a @ b, repeats, warmup=1)[0]  # warm-up: oneDNN/BLAS set-up


def layer_rates(model: Salad, batch: int, dtype: torch.dtype) -> list[tuple[str, str, float, float]]:
    """Each convolution of the encoder, decoder and image discriminator timed alone, forward and backward.

    The layer's input shape comes from one forward pass of its network on a ``batch`` of images (or latents). The
    input requires a gradient except at the encoder's and the PatchGAN's first layers, which see real images in
    most of their calls.

    Returns:
        ``(layer, shape, ms, GFLOP/s)`` per layer, forward plus backward in ``dtype``.
    """
    networks = model.model
    shapes: dict[str, tuple[torch.nn.Module, torch.Size]] = {}
    hooks = []

    def recorder(key: str) -> Callable:
        def record(module: torch.nn.Module, inputs: tuple[Tensor, ...], _: Tensor) -> None:
            shapes.setdefault(key, (module, inputs[0].shape))

        return record

    for network in ("encoder", "decoder", "image_discriminator"):
        for name, layer in (getattr(networks, network) or torch.nn.Module()).named_modules():
            if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                hooks.append(layer.register_forward_hook(recorder(f"{network}.{name}")))
    size = networks.image_size
    with torch.no_grad():
        images = torch.zeros(batch, networks.encoder.layers[0][0].in_channels, size, size)
        networks.encoder(images)
        networks.decoder(torch.zeros(batch, networks.latent_dim))
        if networks.image_discriminator is not None:
            networks.image_discriminator(images)
    for hook in hooks:
        hook.remove()
    rows = []
    for key, (layer, shape) in shapes.items():
        conv = copy.deepcopy(layer).to(dtype)
        on_images = key in {"encoder.layers.0.0", "image_discriminator.layers.0.0"}  # mostly real images: no gradient
        inputs = torch.randn(shape, dtype=dtype, requires_grad=not on_images)
        grad = torch.randn_like(conv(inputs))

        def step(conv: torch.nn.Module = conv, inputs: Tensor = inputs, grad: Tensor = grad) -> None:
            conv(inputs).backward(grad)

        with FlopCounterMode(display=False) as counter:
            step()
        seconds = _sorted_seconds(step, repeats=15, warmup=5)[7]  # the median
        described = f"{conv.in_channels}->{conv.out_channels} on {shape[-1]}x{shape[-2]}, stride {conv.stride[0]}"
        rows.append((key, described, 1000 * seconds, counter.get_total_flops() / seconds / 1e9))
    return rows


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
    parser.add_argument("--flops", action="store_true", help="count one step's FLOPs; compare with the GEMM rate")
    parser.add_argument("--layers", action="store_true", help="+ each convolution timed alone (implies --flops)")
    args = parser.parse_args()
    args.flops |= args.layers

    config = yaml.safe_load(args.config.read_text())
    overrides = dict(item.split("=", 1) for item in args.set)
    model_args = dict(config["model"]["init_args"]) | {key: yaml.safe_load(value) for key, value in overrides.items()}
    data_args = dict(config["data"]["init_args"]) | ({"root": args.root} if args.root else {})
    seed_everything(0)
    model = Salad(**model_args)
    instrument(model)
    timer, flops = ProfileLastEpoch(), CountFirstStep()
    if args.flops and args.epochs < 2:  # the counted step is slowed by counting: it must not be the profiled one
        parser.error("--flops needs --epochs 2 or more: the first epoch's first step is the counted one")
    engine = Engine(
        max_epochs=args.epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer, flops] if args.flops else [timer],
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
    if args.flops:
        dtype = torch.bfloat16 if model.bf16 else torch.float32
        step_rate, peak = flops.flops / (step_ms / 1000), matmul_rate(dtype)
        print(
            f"FLOPs: {flops.flops / 1e9:.1f} GFLOP per step of {flops.images} images "
            f"({flops.flops / flops.images / 1e9:.2f} per image); the profiled step ran at "
            f"{step_rate / 1e9:.0f} GFLOP/s, {step_rate / peak:.0%} of this CPU's 2048^3 {dtype} matrix product "
            f"({peak / 1e9:.0f} GFLOP/s)"
        )
        if args.layers:
            print("\n| layer | shape | forward + backward ms | GFLOP/s | of the matrix product |")
            print("| --- | --- | --- | --- | --- |")
            for layer, described, ms, rate in layer_rates(model, flops.images, dtype):
                print(f"| {layer} | {described} | {ms:.2f} | {rate:.0f} | {rate * 1e9 / peak:.0%} |")
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
