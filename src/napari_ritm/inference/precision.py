"""Compute precision of the network: ``"auto"`` picks the fastest one the hardware runs natively.

* CPU with native bfloat16 matrix units (Intel AMX-BF16, or AVX512-BF16 on Intel Cooper Lake+
  and AMD Zen 4+): ``bfloat16``, 2-4x faster per click than float32 there.
* CUDA and Apple MPS: ``float16``.
* anything else (older x86, Apple silicon CPU, ARM without bf16 matmul): ``float32``, because
  emulated bf16 is slower than float32.

``"float32"`` is always available and exact (the reference numerics; conformance uses it).
"""

from __future__ import annotations

import functools
import logging
import platform
import sys

import torch

from napari_ritm.errors import RitmError

__all__ = ["PRECISIONS", "cpu_flags", "cpu_has_native_bf16", "resolve_precision"]

logger = logging.getLogger(__name__)

#: Accepted precision names (``None`` means "auto" where a preset says so).
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU feature flags (Linux /proc/cpuinfo spelling) that mean native bf16 dot products
_NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, lower case, in the Linux ``/proc/cpuinfo`` spelling.

    Linux: the ``flags`` line of ``/proc/cpuinfo``. Elsewhere: the true entries of
    ``torch.cpu.get_capabilities()`` (torch's cpuinfo library; same names). Apple silicon has no
    native bf16 matmul on the CPU cores that torch uses, so macOS arm64 reports no bf16 flag.
    Cached for the process; empty when nothing can be read.
    """
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith(("flags", "Features")):  # x86 / ARM spelling
                        return frozenset(line.split(":", 1)[1].lower().split())
        except OSError:
            pass
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return frozenset()
    try:
        caps = torch.cpu.get_capabilities()  # torch >= 2.4
    except (AttributeError, RuntimeError):
        return frozenset()
    return frozenset(k.lower() for k, v in caps.items() if v is True)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 dot products natively (AMX-BF16 or AVX512-BF16)."""
    return bool(_NATIVE_BF16_FLAGS & cpu_flags())


def resolve_precision(precision: str | torch.dtype | None, device: torch.device) -> str:
    """The precision name to run with on ``device``.

    Args:
        precision: ``"auto"``, ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype;
            None means ``"float32"``.
        device: The device the network runs on.

    Returns:
        ``"float32"``, ``"bfloat16"`` or ``"float16"``.

    Raises:
        RitmError: unknown precision, or float16 requested on a CPU.
    """
    if isinstance(precision, torch.dtype):
        names = {v: k for k, v in _DTYPES.items()}
        if precision not in names:
            raise RitmError(f"precision (dtype) must be one of {PRECISIONS}, got {precision!r}")
        precision = names[precision]
    if precision is None:
        return "float32"
    if precision not in PRECISIONS:
        raise RitmError(f"precision (dtype) must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type in ("cuda", "mps"):
            chosen = "float16"
        elif device.type == "cpu" and cpu_has_native_bf16():
            chosen = "bfloat16"
        else:
            chosen = "float32"
        logger.info("precision auto on %s -> %s", device, chosen)
        return chosen
    if precision == "float16" and device.type == "cpu":
        raise RitmError("float16 is for GPUs; on a CPU use precision 'bfloat16' (or float32)")
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision name."""
    return _DTYPES[precision]
