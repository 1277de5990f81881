"""Training precision and speed: what the device computes natively, whether bf16 pays, and Salad's choice.

bf16 autocast can pay only where the hardware has bf16 arithmetic: AMX (``amx_bf16``) or AVX512-BF16
(``avx512_bf16``) on x86 CPUs, and Ampere-or-newer NVIDIA GPUs. Elsewhere PyTorch emulates it, and a SALAD step
on an AVX2-only CPU ran 27x slower in bf16 than in fp32 (docs/results.md). The flag is necessary, not sufficient:
with ``avx512_bf16`` and no AMX, SALAD trained 1.47x faster in bf16 on a 2-core AMD EPYC but 0.85x as fast on a
2-core Intel Xeon, so :func:`faster_in_bf16` times the step itself before a CPU run commits to bf16.
:class:`TrainingSpeed` is the part of :class:`~anomalib_salad.Salad` that makes that choice at setup, and turns on
channels-last and ``torch.compile`` where they are asked for.

Example:
    >>> import torch
    >>> from anomalib_salad.model.precision import native_bf16
    >>> supported, reason = native_bf16(torch.device("cpu"))
    >>> isinstance(supported, bool) and isinstance(reason, str)
    True
"""

import copy
import logging
import platform
import time
from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "BF16_CPU_FLAGS",
    "PrecisionTiming",
    "TrainingSpeed",
    "cpu_flags",
    "faster_in_bf16",
    "native_bf16",
    "synchronize",
]

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` has native bf16 arithmetic, and the evidence in words.

    Args:
        device: The training device.

    Returns:
        tuple[bool, str]: The answer and the flags or GPU name it was read from.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        supported = torch.cuda.is_bf16_supported()
        return supported, f"GPU {name}: bf16 {'supported' if supported else 'not supported'}"
    if device.type == "cpu":
        found = sorted(cpu_flags() & set(BF16_CPU_FLAGS))
        if found:
            return True, f"CPU flags {', '.join(found)}"
        vector = [flag for flag in ("avx512f", "avx2") if flag in cpu_flags()]
        best = vector[0] if vector else platform.machine() or "unknown"
        return False, f"CPU has {best} but none of {', '.join(BF16_CPU_FLAGS)}"
    return False, f"{device.type}: bf16 autocast not enabled automatically"


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA; a no-op elsewhere), so that a clock read next includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PrecisionTiming(NamedTuple):
    """What :func:`faster_in_bf16` measured."""

    bf16_is_faster: bool
    fp32_seconds: float
    bf16_seconds: float

    def __str__(self) -> str:
        """The timings in words, for the log."""
        return f"a probe step took {self.fp32_seconds:.3f} s in fp32, {self.bf16_seconds:.3f} s in bf16 autocast"


def faster_in_bf16(
    forward: Callable[[], torch.Tensor], device: torch.device, repeats: int = 3, margin: float = 1.1
) -> PrecisionTiming:
    """Whether a forward and backward pass runs at least ``margin`` times faster under bf16 autocast than in fp32.

    Each precision runs once to warm up (oneDNN builds its kernels on first use), then ``repeats`` times,
    alternating so that a load change on the machine hits both; the fastest run of each is compared. The margin
    keeps fp32 where the two are about even, since bf16 also costs precision.

    Args:
        forward: Runs the networks on a fixed batch and returns a scalar loss; it is called under autocast and
            its loss is back-propagated outside it, as in training.
        device: The device the networks are on.
        repeats: Timed runs per precision. Defaults to ``3``.
        margin: How many times faster bf16 must be. Defaults to ``1.1``.

    Returns:
        PrecisionTiming: Whether bf16 is faster by ``margin``, and the fastest fp32 and bf16 times in seconds.

    Example:
        >>> import torch
        >>> layer = torch.nn.Conv2d(1, 8, 3)
        >>> timing = faster_in_bf16(lambda: layer(torch.ones(2, 1, 16, 16)).float().mean(), torch.device("cpu"))
        >>> isinstance(timing.bf16_is_faster, bool) and timing.fp32_seconds > 0
        True
    """

    def run(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward()
        loss.backward()
        synchronize(device)
        return time.perf_counter() - start

    run(False), run(True)
    fp32, bf16 = float("inf"), float("inf")
    for _ in range(repeats):
        fp32, bf16 = min(fp32, run(False)), min(bf16, run(True))
    return PrecisionTiming(bf16 * margin < fp32, fp32, bf16)


# What TrainingSpeed._time_precisions measured, by device, batch and network shape: one decision per process.
_PRECISION_TIMINGS: dict[tuple[str, int, int, int], PrecisionTiming] = {}


class TrainingSpeed:
    """Salad's training precision, memory format and compilation, chosen in ``setup("fit")`` (a mixin of Salad).

    It reads the model's ``train_precision``, ``channels_last`` and ``compile_networks`` arguments and sets
    ``bf16`` (whether the networks run under bf16 autocast, :meth:`_autocast`) and ``precision_evidence`` (why,
    in words); :meth:`on_fit_end` undoes compilation and channels-last.
    """

    def _configure_speed(self, device: torch.device) -> None:
        """bf16 autocast where the device has it natively and it pays, channels-last and compilation where asked."""
        native, evidence = native_bf16(device)
        trainer_bf16 = "bf16" in str(self.trainer.precision)
        if (self.train_precision == "bf16" or trainer_bf16) and not native and device.type == "cpu":
            asked = "--model.train_precision bf16" if self.train_precision == "bf16" else "--trainer.precision bf16"
            msg = (
                f"Salad: {asked} was asked for, but this CPU has no native bf16 ({evidence}); PyTorch would emulate "
                "it, about 27x slower than fp32. Use --model.train_precision auto (fp32 here) and the trainer's "
                "default precision."
            )
            raise ValueError(msg)
        self.bf16 = self.train_precision == "bf16" or (self.train_precision == "auto" and native)
        if self.train_precision == "auto" and native and device.type == "cpu" and not trainer_bf16:
            # Every DDP rank trains in rank 0's precision: timings differ between processes.
            timing = PrecisionTiming(*self.trainer.strategy.broadcast(tuple(self._time_precisions(device)), src=0))
            self.bf16, evidence = timing.bf16_is_faster, f"{evidence}; {timing}"
        self.precision_evidence = evidence
        logger.info("Salad: training in %s (%s)", "bf16 autocast" if self.bf16 else "fp32", evidence)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.compile_networks:
            for network in self._networks():
                network.compile()

    def _time_precisions(self, device: torch.device) -> PrecisionTiming:
        """Time E, D and the PatchGAN forward and backward in fp32 and in bf16 autocast on a training-sized batch.

        Runs on copies of the networks and on noise from a private generator, so the model's weights, gradients
        and the seeded random stream are untouched. Measured once per network shape, batch and device in a process,
        so that repeated fits in one process (tests, benchmarks) agree.
        """
        datamodule = getattr(self._trainer, "datamodule", None)
        batch = min(getattr(datamodule, "train_batch_size", None) or 32, 64)
        model = self.model
        key = (str(device), batch, model.image_size, sum(p.numel() for p in model.parameters()))
        if key not in _PRECISION_TIMINGS:
            encoder, decoder = copy.deepcopy(model.encoder).to(device), copy.deepcopy(model.decoder).to(device)
            discriminator = copy.deepcopy(model.image_discriminator)
            discriminator = discriminator.to(device) if discriminator is not None else None
            generator = torch.Generator().manual_seed(0)
            images = (torch.rand(batch, 1, model.image_size, model.image_size, generator=generator) * 2 - 1).to(device)

            def forward() -> Tensor:
                reconstructed = decoder(encoder(images))
                loss = (reconstructed.float() - images).abs().mean() + encoder(reconstructed).float().abs().mean()
                return loss + (discriminator(reconstructed).float().mean() if discriminator is not None else 0)

            _PRECISION_TIMINGS[key] = faster_in_bf16(forward, device)
        return _PRECISION_TIMINGS[key]

    def _networks(self) -> list[torch.nn.Module]:
        model = self.model
        candidates = (model.encoder, model.decoder, model.restoration_decoder, *model.discriminator_modules())
        return [network for network in candidates if network is not None]

    def on_fit_end(self) -> None:
        """Undo compilation and channels-last, so that export and later use see the plain networks."""
        for network in self._networks():
            network._compiled_call_impl = None  # what nn.Module.compile() set
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)

    def _autocast(self) -> torch.autocast:
        """bf16 autocast for the networks' forward passes when :meth:`setup` chose it, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
