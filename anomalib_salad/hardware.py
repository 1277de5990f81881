"""What the training device computes natively, and whether bf16 autocast is actually faster on it.

bf16 autocast can pay only where the hardware has bf16 arithmetic: AMX (``amx_bf16``) or AVX512-BF16
(``avx512_bf16``) on x86 CPUs, and Ampere-or-newer NVIDIA GPUs. Elsewhere PyTorch emulates it, and a SALAD step
on an AVX2-only CPU ran 27x slower in bf16 than in fp32 (docs/results.md). The flag is necessary, not sufficient:
with ``avx512_bf16`` and no AMX, SALAD trained 1.47x faster in bf16 on a 2-core AMD EPYC but 0.85x as fast on a
2-core Intel Xeon, so :func:`faster_in_bf16` times the step itself before a CPU run commits to bf16.

Example:
    >>> import torch
    >>> from anomalib_salad.hardware import native_bf16
    >>> supported, reason = native_bf16(torch.device("cpu"))
    >>> isinstance(supported, bool) and isinstance(reason, str)
    True
"""

import platform
import time
from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import torch

__all__ = ["BF16_CPU_FLAGS", "PrecisionTiming", "cpu_flags", "faster_in_bf16", "native_bf16"]

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
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    run(False), run(True)
    fp32, bf16 = float("inf"), float("inf")
    for _ in range(repeats):
        fp32, bf16 = min(fp32, run(False)), min(bf16, run(True))
    return PrecisionTiming(bf16 * margin < fp32, fp32, bf16)
