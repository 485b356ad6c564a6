"""Compute precision of the network: ``"auto"`` picks the fastest one the hardware runs natively.

* CPU with native bfloat16 dot products (Intel AMX-BF16, or AVX512-BF16 on Intel Cooper Lake+
  and AMD Zen 4+): ``bfloat16`` when it is faster for the model on this machine. The flag alone
  does not say so: bf16 was 1.5-2x faster per click on an AMD EPYC with AVX512-BF16, but 25%
  slower than float32 on an Intel Xeon whose hypervisor hides AMX (AVX512-BF16 only). A session
  that resolves "auto" to bfloat16 therefore times one forward pass of its model in both
  precisions once (:func:`fastest_cpu_precision`, ~1 s, cached per model) and keeps float32
  unless bfloat16 is clearly faster.
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
import time
import weakref
from collections.abc import Callable

import torch

from napari_ritm.errors import RitmError

__all__ = [
    "PRECISIONS",
    "cpu_flags",
    "cpu_has_native_bf16",
    "fastest_cpu_precision",
    "pick_faster",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

#: Accepted precision names (``None`` means "auto" where a preset says so).
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU feature flags (Linux /proc/cpuinfo spelling) that mean native bf16 dot products
_NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
#: bfloat16 is kept only when its pass takes at most this fraction of float32's (a tie keeps
#: the exact precision, and a margin keeps the choice stable on a noisy machine)
BF16_MIN_GAIN = 0.85
# Net input of the timing pass. Not smaller: at 192 px fixed per-pass costs hid half of the gain
# (an AMD EPYC with AVX512-BF16 measured bf16/f32 0.75-0.89 against the 0.85 bar, so "auto"
# changed its mind between runs, while its real 400-px clicks run at 0.52); at 320 px it
# measured 0.57 both times, and the pair of passes costs ~0.8 s there.
_CALIBRATION_HW = (320, 320)
_measured: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def _cpuinfo_value(*keys: str) -> str | None:
    """The value of the first Linux ``/proc/cpuinfo`` line starting with one of ``keys``.

    None off Linux, when the file cannot be read, or when no line matches.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, lower case, in the Linux ``/proc/cpuinfo`` spelling.

    Linux: the ``flags`` line of ``/proc/cpuinfo``. Elsewhere: the true entries of
    ``torch.cpu.get_capabilities()`` (torch's cpuinfo library; same names). Apple silicon has no
    native bf16 matmul on the CPU cores that torch uses, so macOS arm64 reports no bf16 flag.
    Cached for the process; empty when nothing can be read.
    """
    listed = _cpuinfo_value("flags", "Features")  # x86 / ARM spelling
    if listed is not None:
        return frozenset(listed.lower().split())
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return frozenset()
    try:
        caps = torch.cpu.get_capabilities()  # torch >= 2.4
    except (AttributeError, RuntimeError):
        return frozenset()
    return frozenset(k.lower() for k, v in caps.items() if v is True)


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else ``platform.processor()`` or "unknown".

    Recorded beside timings and training runs: speed numbers mean little without it.
    """
    return _cpuinfo_value("model name") or platform.processor() or "unknown"


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


def pick_faster(
    runs: dict[str, Callable[[], object]],
    *,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Best time of each runner over ``repeats`` interleaved rounds (after one warm-up each).

    Interleaving puts both precisions under the same machine load; the minimum is the least
    disturbed pass.

    Returns:
        ``{name: best seconds}`` for each entry of ``runs``.
    """
    for run in runs.values():  # warm-up: oneDNN builds its kernels on the first pass
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(max(1, repeats)):
        for name, run in runs.items():
            start = clock()
            run()
            best[name] = min(best[name], clock() - start)
    return best


def fastest_cpu_precision(model: torch.nn.Module) -> str:
    """``"bfloat16"`` if it runs ``model`` (an ``ISModel``) clearly faster than float32 on this
    CPU, else ``"float32"``; measured once per model and process.

    Times one forward pass of the inference network (:class:`~napari_ritm.model.inference.
    FastISModel`) on a (1, 4, 320, 320) input with one click in each precision, with torch's
    current thread count; bfloat16 wins when its best pass takes at most :data:`BF16_MIN_GAIN`
    of float32's.
    """
    cached = _measured.get(model)
    if cached is not None:
        return cached
    from napari_ritm.model.inference import FastISModel

    h, w = _CALIBRATION_HW
    image = torch.rand(1, 4, h, w, generator=torch.Generator().manual_seed(0))
    image[:, 3] = 0.0
    points = torch.tensor([[[h / 2, w / 2, 0], [-1, -1, -1]]], dtype=torch.float32)
    nets = {name: FastISModel(model, dtype=_DTYPES[name]) for name in ("float32", "bfloat16")}

    def runner(net: FastISModel) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return net(image, points)

        return run

    best = pick_faster({name: runner(net) for name, net in nets.items()})
    chosen = "bfloat16" if best["bfloat16"] <= BF16_MIN_GAIN * best["float32"] else "float32"
    logger.info(
        "precision auto: float32 %.1f ms, bfloat16 %.1f ms per calibration pass -> %s",
        best["float32"] * 1e3,
        best["bfloat16"] * 1e3,
        chosen,
    )
    _measured[model] = chosen
    return chosen


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision name."""
    return _DTYPES[precision]
