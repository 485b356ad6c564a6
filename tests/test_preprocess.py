"""prepare_image / Normalization / normalize_crop: every supported layout and every refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ritm.errors import ImageFormatError
from napari_ritm.inference.preprocess import (
    Normalization,
    apply_normalization,
    check_image,
    compute_normalization,
    normalize_crop,
    prepare_image,
)

RNG = np.random.default_rng(0)
U8_RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_uint8_rgb_is_exactly_divided_by_255():
    out, norm = prepare_image(U8_RGB)
    assert out.dtype == np.float32 and out.shape == (20, 30, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, U8_RGB.astype(np.float32) / np.float32(255))
    assert norm.method == "u8" and norm.layout == "rgb"
    # (0, 255) contrast limits are the same as none
    assert prepare_image(U8_RGB, contrast_limits=(0, 255))[1] == norm


def test_uint8_rgba_drops_alpha_and_gray_is_replicated():
    rgba = np.concatenate([U8_RGB, np.full((20, 30, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(prepare_image(rgba)[0], prepare_image(U8_RGB)[0])
    gray = U8_RGB[..., 1]
    out, norm = prepare_image(gray)
    assert norm.layout == "gray" and norm.method == "u8"
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray.astype(np.float32) / np.float32(255))


def test_uint8_with_contrast_limits_stretches():
    gray = np.array([[10, 20], [30, 40]], np.uint8)
    out, norm = prepare_image(gray, contrast_limits=(20, 30))
    assert norm.method == "contrast_limits"
    np.testing.assert_allclose(out[..., 0], [[0, 0], [1, 1]])


def test_uint16_percentiles_and_contrast_limits():
    img = np.arange(1000, dtype=np.uint16).reshape(25, 40) * 10
    out, norm = prepare_image(img, percentiles=(1.0, 99.0))
    assert norm.method == "percentile" and norm.percentiles == (1.0, 99.0)
    lo, hi = np.percentile(img, [1.0, 99.0])
    assert norm.low == pytest.approx(lo) and norm.high == pytest.approx(hi)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.count_nonzero(out[..., 0] == 0.0) == 10  # 0..90 lie below the 1st percentile (99.9)
    out2, norm2 = prepare_image(img, contrast_limits=(0, 9990))
    assert norm2.method == "contrast_limits"
    np.testing.assert_allclose(out2[..., 0], img / 9990.0, atol=1e-7)


def test_float_and_signed_images():
    img = RNG.normal(5.0, 2.0, (16, 16)).astype(np.float32)
    original = img.copy()
    out, norm = prepare_image(img, contrast_limits=(3.0, 7.0))
    np.testing.assert_array_equal(img, original)  # the input is never modified
    np.testing.assert_allclose(out[..., 0], np.clip((img - 3) / 4, 0, 1), atol=1e-6)
    out, norm = prepare_image(img.astype(np.int16))
    assert norm.method == "percentile" and 0.0 <= out.min() and out.max() <= 1.0
    rgb01 = RNG.random((8, 8, 3)).astype(np.float32)
    out, norm = prepare_image(rgb01)  # float RGB in [0, 1] is kept
    np.testing.assert_array_equal(out, rgb01)
    assert (norm.low, norm.high) == (0.0, 1.0)


def test_constant_image_gives_zeros():
    for img in (np.full((5, 6), 300, np.uint16), np.full((5, 6), 2.5, np.float64)):
        out, norm = prepare_image(img)
        assert norm.low == norm.high
        assert np.all(out == 0.0) and not np.isnan(out).any()


def test_channels():
    img = RNG.integers(0, 4000, (10, 12, 5), dtype=np.uint16)
    out, norm = prepare_image(img, channel=2, contrast_limits=(0, 4000))
    assert norm.layout == "channel" and norm.channel == 2
    np.testing.assert_allclose(out[..., 1], img[..., 2] / 4000.0, atol=1e-7)
    out, norm = prepare_image(img, contrast_limits=(0, 4000))  # C > 4: channel mean
    assert norm.layout == "mean"
    np.testing.assert_allclose(out[..., 0], img.mean(axis=-1) / 4000.0, atol=1e-6)
    out, norm = prepare_image(U8_RGB, rgb=False)  # 3 channels, not RGB: mean
    assert norm.layout == "mean"
    out, norm = prepare_image(U8_RGB, channel=-1)
    assert norm.channel == 2
    np.testing.assert_array_equal(out[..., 0], U8_RGB[..., 2] / np.float32(255))
    out, norm = prepare_image(U8_RGB[..., :1])
    assert norm.layout == "channel" and norm.channel == 0


def test_normalize_crop_matches_whole_image():
    img = RNG.integers(0, 60000, (40, 50), dtype=np.uint16)
    whole, norm = prepare_image(img)
    crop = normalize_crop(img, norm, slice(5, 17), slice(20, 44))
    np.testing.assert_array_equal(crop, whole[5:17, 20:44])
    np.testing.assert_array_equal(apply_normalization(img, norm), whole)
    assert compute_normalization(img) == norm


def test_normalization_round_trips_through_json():
    _, norm = prepare_image(RNG.integers(0, 60000, (40, 50, 4), dtype=np.uint16), channel=3)
    again = Normalization.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm
    img = RNG.integers(0, 60000, (30, 30), dtype=np.uint16)
    _, norm = prepare_image(img)
    out, same = prepare_image(img.astype(np.float32), normalization=norm)
    assert same is norm
    np.testing.assert_array_equal(out, prepare_image(img)[0])  # float32 holds uint16 exactly
    out64, _ = prepare_image(img.astype(np.float64), normalization=norm)  # float64 arithmetic
    np.testing.assert_allclose(out64, out, rtol=0, atol=1.2e-7)


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((0, 5)), {}, "too small"),
        (np.zeros((1, 1)), {}, "too small"),
        (np.zeros((4,)), {}, "2D"),
        (np.zeros((2, 4, 4, 3)), {}, "2D"),
        (np.zeros((5, 5), bool), {}, "dtype"),
        (np.zeros((5, 5), complex), {}, "dtype"),
        (np.array([[0.0, np.nan], [1, 2]]), {}, "NaN"),
        (np.array([[0.0, np.inf], [1, 2]]), {}, "NaN"),
        (np.zeros((5, 5, 3)), {"channel": 3}, "channel"),
        (np.zeros((5, 5)), {"channel": 1}, "channel"),
        (np.zeros((5, 5, 2)), {"rgb": True}, "rgb"),
        (np.zeros((5, 5)), {"contrast_limits": (3, 3)}, "contrast_limits"),
        (np.zeros((5, 5)), {"contrast_limits": (0, np.nan)}, "contrast_limits"),
        (np.zeros((5, 5)), {"percentiles": (50, 10)}, "percentiles"),
        (np.zeros((3, 64, 64)), {}, "channel"),
    ],
)
def test_refusals(image, kwargs, match):
    with pytest.raises(ImageFormatError, match=match):
        prepare_image(image, **kwargs)


def test_normalization_must_fit_image():
    _, norm = prepare_image(U8_RGB)
    with pytest.raises(ImageFormatError):
        check_image(U8_RGB[..., 0], norm)
    with pytest.raises(ImageFormatError):
        Normalization(1.0, 0.0, "percentile")
    with pytest.raises(ImageFormatError):
        Normalization(0.0, 1.0, "magic")
