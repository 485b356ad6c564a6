"""Checkpoint files: strict loading, safe unpickling, clear errors, round trips."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from napari_ritm.errors import CheckpointError
from napari_ritm.model import build_model, load_checkpoint, official_config, save_checkpoint


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
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)


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
