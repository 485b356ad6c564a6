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


def test_cpu_model_is_the_cpuinfo_model_name(monkeypatch):
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/cpuinfo")
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    prec.cpu_model.cache_clear()
    assert prec.cpu_model() == (names[0] if names else prec.platform.processor() or "unknown")
    prec.cpu_model.cache_clear()
    monkeypatch.setattr(prec.sys, "platform", "win32")
    monkeypatch.setattr(prec.platform, "processor", lambda: "")
    assert prec.cpu_model() == "unknown"
    prec.cpu_model.cache_clear()


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


@pytest.fixture
def measured(monkeypatch):
    """Replace the session's timing of float32 vs bfloat16; returns the list of models timed."""
    import napari_ritm.inference.session as session_module

    timed: list = []

    def set_winner(winner: str) -> list:
        def fake(model):
            timed.append(model)
            return winner

        monkeypatch.setattr(session_module, "fastest_cpu_precision", fake)
        return timed

    return set_winner


@pytest.mark.parametrize(("flags", "expected"), [((), "float32"), (("amx_bf16",), "bfloat16")])
def test_session_precision_by_preset(tiny_model, fake_flags, measured, flags, expected):
    fake_flags(*flags)
    measured("bfloat16")
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


def test_auto_keeps_float32_where_bf16_is_measured_slower(tiny_model, fake_flags, measured):
    # AVX512-BF16 without AMX can be slower than float32 (Intel Xeon with AMX hidden): the
    # session keeps float32 when the timing says so, and only "auto" is timed
    fake_flags("avx512f", "avx512_bf16")
    timed = measured("float32")
    s = ClickSession(tiny_model, device="cpu")
    assert s.precision == "float32" and s._net.dtype == torch.float32
    assert timed == [tiny_model]
    assert ClickSession(tiny_model, precision="bfloat16", device="cpu").precision == "bfloat16"
    assert ClickSession(tiny_model, preset="evaluation", device="cpu").precision == "float32"
    assert timed == [tiny_model]  # explicit precisions and float32 presets are not timed
    fake_flags("avx2")
    assert ClickSession(tiny_model, device="cpu").precision == "float32"
    assert timed == [tiny_model]  # no native bf16: nothing to time


def test_pick_faster_takes_the_best_interleaved_pass():
    ticks = iter([0.0, 3.0, 3.0, 4.0, 4.0, 6.0, 6.0, 7.0, 7.0, 7.5, 7.5, 9.0])
    calls: list[str] = []

    def run(name):
        return lambda: calls.append(name)

    best = prec.pick_faster({"a": run("a"), "b": run("b")}, repeats=3, clock=lambda: next(ticks))
    assert best == {"a": 0.5, "b": 1.0}  # a: 3, 2, 0.5; b: 1, 1, 1.5
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then interleaved


@pytest.mark.parametrize(
    ("fp32", "bf16", "expected"),
    [(1.0, 0.5, "bfloat16"), (1.0, 0.85, "bfloat16"), (1.0, 0.9, "float32"), (1.0, 1.3, "float32")],
)
def test_fastest_cpu_precision_needs_a_clear_gain(tiny_model, monkeypatch, fp32, bf16, expected):
    seen = {}

    def fake_pick(runs, **_):
        seen["outputs"] = {name: run()["instances"] for name, run in runs.items()}
        return {"float32": fp32, "bfloat16": bf16}

    monkeypatch.setattr(prec, "pick_faster", fake_pick)
    monkeypatch.setattr(prec, "_measured", prec.weakref.WeakKeyDictionary())
    assert prec.fastest_cpu_precision(tiny_model) == expected
    # the runners are real passes of the model in each precision
    out32, out16 = seen["outputs"]["float32"], seen["outputs"]["bfloat16"]
    assert out32.shape == out16.shape == (1, 1, *prec._CALIBRATION_HW)
    assert torch.isfinite(out32).all() and torch.isfinite(out16).all()
    # same network, bf16 rounding only
    assert (out32 - out16).abs().max() <= 0.05 * out32.abs().max() + 0.05
    seen.clear()
    assert prec.fastest_cpu_precision(tiny_model) == expected  # cached per model
    assert not seen


@pytest.mark.parametrize("winner", ["float32", "bfloat16"])
def test_training_autocast_follows_the_measured_precision(tiny_model, monkeypatch, winner):
    from napari_ritm_training import TrainConfig, build

    monkeypatch.setattr(build, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(prec, "fastest_cpu_precision", lambda model: winner)
    cpu = torch.device("cpu")
    expected = "bfloat16 autocast" if winner == "bfloat16" else "float32"
    assert build.precision_of(TrainConfig(), cpu, tiny_model) == expected
    assert build.precision_of(TrainConfig(amp=False), cpu, tiny_model) == "float32"
    monkeypatch.setattr(build, "cpu_has_bf16", lambda: False)
    assert build.precision_of(TrainConfig(), cpu, tiny_model) == "float32"


@pytest.mark.parametrize("winner", ["float32", "bfloat16"])
def test_a_resumed_run_keeps_its_precision(tiny_model, monkeypatch, winner):
    from napari_ritm_training import TrainConfig, build

    monkeypatch.setattr(build, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(prec, "fastest_cpu_precision", lambda model: winner)
    cpu, cfg = torch.device("cpu"), TrainConfig()
    # whatever this timing says, the run goes on in the arithmetic it started with
    assert build.precision_of(cfg, cpu, tiny_model, previous="float32") == "float32"
    bf16 = "bfloat16 autocast"
    assert build.precision_of(cfg, cpu, tiny_model, previous=bf16) == bf16
    # ... unless this machine cannot run it
    monkeypatch.setattr(build, "cpu_has_bf16", lambda: False)
    assert build.precision_of(cfg, cpu, tiny_model, previous=bf16) == "float32"
    assert build.precision_of(cfg, cpu, tiny_model, previous="float16 AMP") == "float32"
