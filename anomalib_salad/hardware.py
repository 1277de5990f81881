"""What the training device computes natively: bf16 support read from the CPU's flags or the GPU's properties.

bf16 autocast pays only where the hardware has bf16 arithmetic: AMX (``amx_bf16``) or AVX512-BF16
(``avx512_bf16``) on x86 CPUs, and Ampere-or-newer NVIDIA GPUs. Elsewhere PyTorch emulates it, and a SALAD step
on an AVX2-only CPU ran 27x slower in bf16 than in fp32 (docs/results.md).

Example:
    >>> import torch
    >>> from anomalib_salad.hardware import native_bf16
    >>> supported, reason = native_bf16(torch.device("cpu"))
    >>> isinstance(supported, bool) and isinstance(reason, str)
    True
"""

import platform
from functools import cache

import torch

__all__ = ["BF16_CPU_FLAGS", "cpu_flags", "native_bf16"]

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
