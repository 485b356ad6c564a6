"""precision="auto": detection of native bf16 on the CPU, and what each preset runs in."""

from __future__ import annotations

import pytest
import torch

from napari_ritm.errors import RitmError
from napari_ritm.inference import precision as prec
from napari_ritm.inference.session import ClickSession
from napari_ritm.model.inference import FastISModel


@pytest.fixture
def fake_flags(monkeypatch):
    """Replace the CPU flags; returns a setter."""

    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset(flags))

    return set_flags


def test_cpu_flags_are_read():
    flags = prec.cpu_flags()
    assert isinstance(flags, frozenset)
    assert prec.cpu_has_native_bf16() == bool({"amx_bf16", "avx512_bf16"} & flags)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), "float32"),
        (("avx2", "avx512f", "avx512bw"), "float32"),  # emulated bf16 would be slower
        (("avx512f", "avx512_bf16"), "bfloat16"),  # AMD Zen 4, Intel Cooper Lake
        (("amx_tile", "amx_bf16"), "bfloat16"),  # Intel Sapphire Rapids+
    ],
)
def test_auto_follows_native_bf16(fake_flags, flags, expected):
    fake_flags(*flags)
    cpu = torch.device("cpu")
    assert prec.resolve_precision("auto", cpu) == expected
    assert prec.resolve_precision("float32", cpu) == "float32"  # explicit override
    assert prec.resolve_precision("bfloat16", cpu) == "bfloat16"
    assert prec.resolve_precision(None, cpu) == "float32"
    assert prec.resolve_precision("auto", torch.device("cuda")) == "float16"
    assert prec.resolve_precision("auto", torch.device("mps")) == "float16"


def test_precision_errors():
    cpu = torch.device("cpu")
    with pytest.raises(RitmError, match="float16 is for GPUs"):
        prec.resolve_precision("float16", cpu)
    with pytest.raises(RitmError, match="precision"):
        prec.resolve_precision("int8", cpu)
    assert prec.resolve_precision(torch.bfloat16, cpu) == "bfloat16"


@pytest.mark.parametrize(("flags", "expected"), [((), "float32"), (("amx_bf16",), "bfloat16")])
def test_session_precision_by_preset(tiny_model, fake_flags, flags, expected):
    fake_flags(*flags)
    s = ClickSession(tiny_model, device="cpu")  # interactive: auto
    assert s.preset == "interactive"
    assert s.precision == expected
    assert s._net.dtype == getattr(torch, expected)
    assert s.device == torch.device("cpu")
    # explicit overrides, old and new spelling
    assert ClickSession(tiny_model, precision="float32", device="cpu").precision == "float32"
    assert ClickSession(tiny_model, dtype="bfloat16", device="cpu").precision == "bfloat16"
    with pytest.raises(RitmError, match="disagree"):
        ClickSession(tiny_model, dtype="bfloat16", precision="float32", device="cpu")
    # eager backend: always float32, also under "auto"
    assert ClickSession(tiny_model, backend="eager", device="cpu").precision == "float32"


def test_evaluation_preset_is_exact_float32(tiny_model, fake_flags):
    fake_flags("amx_bf16", "avx512_bf16")  # even where bf16 would be chosen by "auto"
    s = ClickSession(tiny_model, preset="evaluation", device="cpu")
    assert s.preset == "evaluation" and s.precision == "float32"
    assert isinstance(s._net, FastISModel) and s._net.dtype == torch.float32


def test_conformance_session_runs_in_float32(conformance_model, fake_flags):
    """The conformance tests' session (tests/test_session_conformance.py) is exact float32."""
    fake_flags("amx_bf16")
    s = ClickSession(
        conformance_model, preset="evaluation", zoom_in=True, flip=True, max_size=None, device="cpu"
    )
    assert s.precision == "float32" and s._net.dtype == torch.float32
