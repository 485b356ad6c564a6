"""The network: official key layout, forward conformance, click disks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_npz

from napari_ritm.model import VARIANTS, build_model, encode_disks

PARAM_COUNTS = {"hrnet18s": 4_220_047, "hrnet18": 10_032_019, "hrnet32": 30_951_363}


def _read_keys(path):
    rows = []
    for line in path.read_text().strip().splitlines():
        name, shape, dtype = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.split(",") if s), dtype))
    return rows


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_state_dict_matches_official_key_list(variant, conformance_dir):
    keys_file = conformance_dir / f"keys_{variant}.txt"
    if not keys_file.is_file():
        pytest.skip(f"{keys_file} not present")
    expected = _read_keys(keys_file)
    state = build_model(variant).state_dict()
    assert list(state) == [name for name, _, _ in expected]
    for name, shape, dtype in expected:
        assert tuple(state[name].shape) == shape, name
        assert str(state[name].dtype).removeprefix("torch.") == dtype, name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parameter_counts_match_paper(variant):
    model = build_model(variant)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[variant]


def test_forward_matches_reference(conformance_model, conformance_dir):
    ref = load_npz(conformance_dir, "model_forward")
    image = torch.from_numpy(ref["net_input"])
    points = torch.from_numpy(ref["points"])
    # The net input is exactly image/255 and the prev mask, as documented.
    np.testing.assert_array_equal(
        ref["net_input"][0, :3], ref["image"].transpose(2, 0, 1) / np.float32(255)
    )
    with torch.inference_mode():
        coord = conformance_model.get_coord_features(image, points)
        click_features = conformance_model.maps_transform(coord)
        out = conformance_model(image, points)
    np.testing.assert_array_equal(coord.numpy(), ref["coord_features"])
    np.testing.assert_allclose(
        click_features.mean(dim=(2, 3)).numpy(), ref["maps_transform_out_mean_hw"], atol=1e-5
    )
    np.testing.assert_allclose(
        click_features[0, 0].numpy(), ref["maps_transform_out_sample0_ch0"], atol=1e-5
    )
    for name in ("instances", "instances_aux"):
        diff = np.abs(out[name].numpy() - ref[name]).max()
        assert diff <= 1e-3, f"{name}: max |logit diff| {diff}"
        assert out[name].shape == ref[name].shape


def test_lowres_logits_match_reference(conformance_model, conformance_dir):
    ref = load_npz(conformance_dir, "model_forward")
    image = torch.from_numpy(ref["net_input"])
    points = torch.from_numpy(ref["points"])
    model = conformance_model
    with torch.inference_mode():
        rgb = (image[:, :3] - model._mean) / model._std
        feats = model.maps_transform(model.get_coord_features(image, points))
        logits, aux = model.feature_extractor(rgb, feats)
    assert np.abs(logits.numpy() - ref["instances_lowres"]).max() <= 1e-3
    assert np.abs(aux.numpy() - ref["instances_aux_lowres"]).max() <= 1e-3


def test_disks_are_inclusive_radius_5_and_skip_invalid_points():
    points = torch.tensor([[[10.0, 10.0, 0], [-1, -1, -1], [30.0, 2.5, 1], [-1, 5.0, -1]]])
    disks = encode_disks(points, 40, 41)
    rows, cols = np.mgrid[0:40, 0:41]
    pos = (rows - 10.0) ** 2 + (cols - 10.0) ** 2 <= 25
    # (-1, 5) is valid: a point is invalid only when both coordinates are negative.
    neg = ((rows - 30.0) ** 2 + (cols - 2.5) ** 2 <= 25) | (
        (rows + 1.0) ** 2 + (cols - 5.0) ** 2 <= 25
    )
    np.testing.assert_array_equal(disks[0, 0].numpy(), pos)
    np.testing.assert_array_equal(disks[0, 1].numpy(), neg)
    assert int(pos.sum()) == 81  # an integer-centred disk covers 81 pixels


def test_wrong_number_of_input_channels_is_an_error():
    model = build_model("hrnet18s").eval()
    with pytest.raises(ValueError, match="4 input channels"):
        model(torch.zeros(1, 3, 32, 32), torch.full((1, 2, 3), -1.0))


def test_channels_last_inference_agrees_with_plain_layout(tiny_checkpoint):
    from napari_ritm.model import load_checkpoint, prepare_for_inference

    plain = load_checkpoint(tiny_checkpoint)
    model = prepare_for_inference(load_checkpoint(tiny_checkpoint))
    assert model.feature_extractor.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.feature_extractor.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    image = torch.cat([torch.rand(1, 3, 64, 96), torch.zeros(1, 1, 64, 96)], dim=1)
    points = torch.tensor([[[30.0, 40.0, 0.0], [-1, -1, -1], [10.0, 80.0, 1.0], [-1, -1, -1]]])
    with torch.inference_mode():
        want = plain(image, points)["instances"]
        got = model(image, points)["instances"]
    assert got.shape == want.shape == (1, 1, 64, 96)
    assert (got - want).abs().max().item() <= 1e-3 * max(1.0, want.abs().max().item())
