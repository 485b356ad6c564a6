"""Checkpoint files: strict loading, safe unpickling, clear errors, round trips."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile

import pytest
import torch

from napari_ritm.errors import CheckpointError, RitmError
from napari_ritm.model import build_model, load_checkpoint, official_config, save_checkpoint
from napari_ritm.model.checkpoint import (
    MIN_TORCH,
    UnreadableCheckpointError,
    torch_version_problem,
)


def test_conformance_checkpoint_loads_strictly_with_every_key(conformance_checkpoint):
    raw = torch.load(conformance_checkpoint, map_location="cpu", weights_only=True)
    model = load_checkpoint(conformance_checkpoint)
    assert model.variant == "hrnet18s" and model.with_prev_mask
    assert not model.training
    state = model.state_dict()
    assert list(state) == list(raw["state_dict"])
    for key, value in raw["state_dict"].items():
        assert torch.equal(state[key], value), key


def test_saved_config_has_the_official_layout(conformance_checkpoint, tmp_path):
    raw = torch.load(conformance_checkpoint, map_location="cpu", weights_only=True)
    model = load_checkpoint(conformance_checkpoint)
    out = save_checkpoint(
        model, tmp_path / "copy.pth", metadata={"note": "round trip", "score": 0.5}
    )
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "config", "metadata"}
    assert saved["config"] == raw["config"]
    assert list(saved["state_dict"]) == list(raw["state_dict"])
    reloaded = load_checkpoint(out)
    assert reloaded.metadata["note"] == "round trip"
    for key, value in raw["state_dict"].items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_round_trip_keeps_weights_order_and_metadata(tiny_checkpoint, tiny_model, tmp_path):
    out = save_checkpoint(tiny_model, tmp_path / "copy.pth", metadata={"note": "round trip"})
    saved = torch.load(out, map_location="cpu", weights_only=True)
    raw = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "config", "metadata"}
    assert saved["config"] == raw["config"] == official_config("hrnet18s")
    assert list(saved["state_dict"]) == list(raw["state_dict"])
    reloaded = load_checkpoint(out)
    assert reloaded.metadata["note"] == "round trip"
    assert reloaded.metadata["source"] == str(out)
    for key, value in raw["state_dict"].items():
        assert torch.equal(reloaded.state_dict()[key], value), key


@pytest.mark.parametrize("variant", ["hrnet18", "hrnet32"])
def test_official_config_for_large_variants_round_trips(variant, tmp_path):
    model = build_model(variant, init="none")
    path = save_checkpoint(model, tmp_path / f"{variant}.pth")
    loaded = load_checkpoint(path)
    assert loaded.variant == variant
    assert official_config(variant)["params"]["small"] == {
        "type": "builtin",
        "value": False,
        "specified": False,
    }


def test_half_precision_checkpoint_loads_as_float32(tmp_path):
    model = build_model("hrnet18s")
    path = save_checkpoint(model, tmp_path / "half.pth", half=True)
    assert os.path.getsize(path) < 10 * 2**20
    loaded = load_checkpoint(path)
    w = loaded.state_dict()["feature_extractor.conv1.weight"]
    assert w.dtype == torch.float32
    assert torch.allclose(w, model.state_dict()["feature_extractor.conv1.weight"], atol=1e-2)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")


def test_corrupted_file_is_refused(tiny_checkpoint, tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:100_000])
    with pytest.raises(UnreadableCheckpointError, match="is truncated") as info:
        load_checkpoint(bad)
    assert info.value.problem.startswith("is truncated: the file ends early")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint but a text file"):
        load_checkpoint(garbage)


def _legacy_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(3)}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda ckpt: b"", "is empty (0 bytes)"),
        (lambda ckpt: hashlib.sha512(b"x").digest() * 64, "is not a PyTorch checkpoint (neither"),
        (lambda ckpt: b"<!DOCTYPE html><html><body>404</body></html>", "but a web page (HTML)"),
        (lambda ckpt: b"  <html lang='en'><p>login</p></html>", "but a web page (HTML)"),
        (lambda ckpt: "\u00e9t\u00e9 notes\n".encode(), "but a text file (it starts with 'été"),
        (lambda ckpt: pickle.dumps({"a": 1}), "but a plain Python pickle"),
        (lambda ckpt: pickle.dumps(_Payload()), f"refers to code ({os.system.__module__}.system)"),
        (lambda ckpt: ckpt[:-1], "is truncated"),
        (lambda ckpt: ckpt[: len(ckpt) // 2], "is truncated"),
        (lambda ckpt: _legacy_bytes()[:-20], "is truncated"),
        (lambda ckpt: _zip_bytes(), "is a zip archive but not a PyTorch checkpoint"),
    ],
)
def test_unreadable_files_are_classified_in_one_line(tiny_checkpoint, tmp_path, make, problem):
    path = tmp_path / "file.pth"
    path.write_bytes(make(tiny_checkpoint.read_bytes()))
    with pytest.raises(UnreadableCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert problem in info.value.problem and message.startswith(f"{path} {info.value.problem}")
    assert "\n" not in message
    # torch's own advice for such files (retry with weights_only=False) never reaches users.
    assert "weights_only" not in message and "corrupted or truncated?" not in message


def test_legacy_format_is_read(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(_legacy_bytes())  # not a RITM state dict: refused for its keys, not its format
    with pytest.raises(CheckpointError, match="not a RITM HRNet\\+OCR state dict") as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnreadableCheckpointError)


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("2.13.0+cpu", None),
        ("2.5.0", None),
        ("2.6.0a0+git1234", None),
        ("3.0.0", None),
        ("not a version", None),
        ("2.4.1", "napari-ritm needs torch >= 2.5, you have 2.4.1"),
        ("1.13.1+cu117", "napari-ritm needs torch >= 2.5, you have 1.13.1+cu117"),
    ],
)
def test_torch_version_floor(version, problem):
    got = torch_version_problem(version)
    assert (got if got is None else got.split(";")[0]) == problem
    assert MIN_TORCH == (2, 5)


def test_old_torch_is_named_not_blamed_on_the_file(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.3.1")
    with pytest.raises(RitmError, match=r"needs torch >= 2\.5, you have 2\.3\.1") as info:
        load_checkpoint(tiny_checkpoint)
    assert not isinstance(info.value, CheckpointError)
    assert "pip install 'torch>=2.5'" in str(info.value)


def test_torch_without_safe_globals_is_named(tiny_checkpoint, monkeypatch):
    """A torch whose version string passes but whose API lacks what loading uses (AttributeError
    from torch, not from the file)."""
    monkeypatch.delattr(torch.serialization, "safe_globals")
    with pytest.raises(RitmError, match=r"needs torch >= 2\.5, you have .* without safe_globals"):
        load_checkpoint(tiny_checkpoint)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "config": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned.txt").exists()
    plain = tmp_path / "plain_pickle.pth"
    plain.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)
    assert not (tmp_path / "pwned.txt").exists()


def test_wrong_architecture_and_missing_keys_are_named(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=r"hrnet18s checkpoint.*expected hrnet32"):
        load_checkpoint(tiny_checkpoint, variant="hrnet32")
    raw = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    del raw["state_dict"]["feature_extractor.cls_head.bias"]
    raw["state_dict"]["feature_extractor.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(raw, broken)
    with pytest.raises(
        CheckpointError, match=r"missing 1: feature_extractor\.cls_head\.bias"
    ) as err:
        load_checkpoint(broken)
    assert "unexpected 1: feature_extractor.extra.weight" in str(err.value)
    raw = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    raw["state_dict"]["feature_extractor.cls_head.weight"] = torch.zeros(2, 96, 1, 1)
    torch.save(raw, broken)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(broken)


def test_config_that_contradicts_weights_is_refused(tiny_checkpoint, tmp_path):
    raw = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    raw["config"] = official_config("hrnet32")
    path = tmp_path / "lying.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="config describes hrnet32"):
        load_checkpoint(path)


def test_nan_weights_are_refused(tmp_path):
    model = build_model("hrnet18s", init="none")
    with torch.no_grad():
        model.feature_extractor.cls_head.weight.fill_(float("nan"))
    path = save_checkpoint(model, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(path)


def test_metadata_must_be_plain_data(tmp_path):
    with pytest.raises(ValueError, match="only str"):
        save_checkpoint(
            build_model("hrnet18s", init="none"), tmp_path / "m.pth", metadata={"x": object()}
        )
    assert not (tmp_path / "m.pth").exists()


def test_metadata_refuses_subclasses_that_weights_only_cannot_load(tmp_path):
    with pytest.raises(ValueError, match="TorchVersion"):
        save_checkpoint(
            build_model("hrnet18s", init="none"),
            tmp_path / "v.pth",
            metadata={"torch": torch.__version__},
        )
