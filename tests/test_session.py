"""ClickSession behaviour: undo/redo, prior masks, set_clicks, errors, normalization, switches.

A tiny deterministic stand-in model keeps these tests fast; the reference numerics are checked
against the official run in test_session_conformance.py.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from napari_ritm.errors import ImageFormatError, RitmError
from napari_ritm.inference.clicks import Click
from napari_ritm.inference.session import ClickSession, build_points
from napari_ritm.model import encode_disks


class PointwiseModel(nn.Module):
    """Logits from click disks, the previous mask and the image brightness, pixel by pixel.

    It is flip-equivariant, so flip TTA must not change its output, and it counts its calls.
    """

    def __init__(self, with_prev_mask: bool = True, radius: float = 8.0) -> None:
        super().__init__()
        self.with_prev_mask = with_prev_mask
        self.radius = radius
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.calls = 0
        self.last_input_hw: tuple[int, int] | None = None

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        self.last_input_hw = tuple(image.shape[-2:])
        assert image.shape[1] == (4 if self.with_prev_mask else 3)
        disks = encode_disks(points, image.shape[2], image.shape[3], radius=self.radius)
        gray = image[:, :3].mean(dim=1, keepdim=True)
        logits = 8 * disks[:, :1] - 8 * disks[:, 1:] + 3 * (gray - 0.5) - 1.0
        if self.with_prev_mask:
            logits = logits + 6 * (image[:, 3:4] - 0.5)
        logits = self.scale * logits
        return {"instances": logits, "instances_aux": logits}


def _image(h: int = 300, w: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w]
    base = 128 + 60 * np.sin(rr / 23.0) * np.cos(cc / 31.0)
    rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=-1) + rng.normal(0, 10, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _disk(h: int, w: int, center: tuple[int, int], radius: float) -> np.ndarray:
    rr, cc = np.mgrid[:h, :w]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2


CLICKS = [
    Click(150, 200, True),
    Click(160, 230, True),
    Click(120, 170, False),
    Click(140, 260, True),
]


@pytest.fixture
def model() -> PointwiseModel:
    return PointwiseModel()


@pytest.fixture
def session(model) -> ClickSession:
    s = ClickSession(model, device="cpu")
    s.set_image(_image())
    return s


def _state(s: ClickSession):
    return s.clicks, s.probs.copy(), s.can_undo, s.can_redo


def _assert_same_state(a, b) -> None:
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2:] == b[2:]


def test_build_points_layout():
    pts = build_points([[Click(1.5, 2, True), Click(3, 4, False), Click(5, 6, False)]])
    want = [[[1.5, 2, 0], [-1, -1, -1], [3, 4, 1], [5, 6, 2]]]
    np.testing.assert_array_equal(pts.numpy(), np.array(want, dtype=np.float32))
    assert build_points([[]]).shape == (1, 2, 3)  # N = max(#pos, #neg, 1)


def test_first_click_and_zoom_in_crop(model):
    session = ClickSession(model, preset="evaluation", device="cpu")  # the reference protocol
    session.set_image(_image())
    probs = session.add_click(150, 200, True)
    assert probs.shape == (300, 400) and probs.dtype == np.float32
    assert model.last_input_hw == (300, 400)  # first click: no zoom (skip_clicks=1)
    assert probs[150, 200] > 0.9 and probs[10, 10] < 0.5
    assert session.mask[150, 200] and not session.mask[10, 10]
    probs = session.add_click(160, 230, True)
    roi, crop = session.probs_roi
    assert roi != (0, 299, 0, 399)  # zoomed in on the object
    h, w = roi[1] - roi[0] + 1, roi[3] - roi[2] + 1
    assert max(model.last_input_hw) == 400 and crop.shape == (h, w)
    outside = np.ones_like(probs, dtype=bool)
    outside[roi[0] : roi[1] + 1, roi[2] : roi[3] + 1] = False
    assert np.all(probs[outside] == 0)  # reference: zero outside the ROI
    np.testing.assert_array_equal(probs[roi[0] : roi[1] + 1, roi[2] : roi[3] + 1], crop)


def test_returned_probs_are_read_only(session):
    probs = session.add_click(150, 200)
    with pytest.raises(ValueError):
        probs[0, 0] = 1.0


def test_undo_redo_restore_exact_state(session, model):
    states = [_state(session)]
    for c in CLICKS:
        session.add_click(c.row, c.col, c.positive)
        states.append(_state(session))
    calls = model.calls
    session.undo()
    session.undo()
    _assert_same_state(_state(session)[:2], states[2][:2])
    assert session.can_redo
    session.redo()
    np.testing.assert_array_equal(session.probs, states[3][1])
    session.redo()
    np.testing.assert_array_equal(session.probs, states[4][1])
    assert model.calls == calls  # undo/redo recompute nothing
    session.redo()  # nothing to redo: unchanged
    np.testing.assert_array_equal(session.probs, states[4][1])
    for _ in range(10):
        session.undo()
    assert session.clicks == [] and not session.can_undo
    np.testing.assert_array_equal(session.probs, np.zeros((300, 400), np.float32))


def test_undo_restores_zoom_state(model):
    """A click after an undo gives what a fresh session with the same clicks gives."""
    a = ClickSession(model, device="cpu")
    a.set_image(_image())
    for c in CLICKS:
        a.add_click(c.row, c.col, c.positive)
    a.undo()
    a.undo()
    a.add_click(200, 120, True)
    assert not a.can_redo  # a new click clears the redo stack
    b = ClickSession(model, device="cpu")
    b.set_image(_image())
    for c in [*CLICKS[:2], Click(200, 120, True)]:
        b.add_click(c.row, c.col, c.positive)
    assert a.clicks == b.clicks
    np.testing.assert_array_equal(a.probs, b.probs)
    assert a.probs_roi[0] == b.probs_roi[0]


def test_set_clicks_equals_add_click_and_is_incremental(session, model):
    for c in CLICKS:
        session.add_click(c.row, c.col, c.positive)
    want = session.probs.copy()
    other = ClickSession(model, device="cpu")
    other.set_image(_image())
    np.testing.assert_array_equal(other.set_clicks(CLICKS), want)
    calls = model.calls
    other.set_clicks([*CLICKS, Click(100, 100, False)])
    assert model.calls == calls + 1  # only the new click ran
    other.set_clicks(CLICKS[:2])
    assert model.calls == calls + 1  # a prefix: history reused
    np.testing.assert_array_equal(other.set_clicks(CLICKS), want)
    assert other.clicks == CLICKS
    # tuples work and a changed first click replays everything (the first click may take more
    # than one pass: count it on a fresh session)
    fresh = ClickSession(model, device="cpu")
    fresh.set_image(_image())
    calls = model.calls
    fresh.add_click(151, 200, True)
    first_passes = model.calls - calls
    calls = model.calls
    other.set_clicks([(151, 200, True), (160, 230, True)])
    assert model.calls == calls + first_passes + 1
    assert other.set_clicks([]).max() == 0.0 and other.clicks == []


def test_prior_mask_refinement(session):
    prior = _disk(300, 400, (150, 200), 40)
    probs = session.set_prior_mask(prior)
    np.testing.assert_array_equal(probs, prior.astype(np.float32))
    assert session.clicks == []
    probs = session.add_click(150, 200, True)
    mask = probs > 0.49
    inter = np.count_nonzero(mask & prior)
    assert inter / np.count_nonzero(mask | prior) > 0.9  # the object is kept
    session.undo()
    np.testing.assert_array_equal(session.probs, prior.astype(np.float32))  # prior survives undo
    # a negative click inside removes a part, and the rest stays
    probs = session.add_click(150, 200, False)
    assert probs[150, 200] < 0.49 and probs[150, 235] > 0.49
    session.reset()  # new object: no prior
    assert session.probs.max() == 0.0 and session.clicks == []
    session.set_image(_image(), prior_mask=prior.astype(np.uint8) * 255)
    np.testing.assert_array_equal(session.probs, prior.astype(np.float32))
    assert session.set_prior_mask(None).max() == 0.0


def test_float_prior_is_the_first_prev_mask(session):
    soft = 0.8 * _disk(300, 400, (100, 100), 30).astype(np.float32)
    np.testing.assert_array_equal(session.set_prior_mask(soft), soft)
    step = session.predict_step([Click(250, 350, True)], prev_probs=soft)
    np.testing.assert_array_equal(session.add_click(250, 350, True), step.probs)


def test_errors_leave_state_unchanged(session, model):
    with pytest.raises(RitmError, match="set_image"):
        ClickSession(model, device="cpu").add_click(1, 1)
    session.add_click(150, 200, True)
    before = _state(session)
    bad_calls = [
        lambda: session.add_click(-3, 10),
        lambda: session.add_click(10, 400),
        lambda: session.add_click(float("nan"), 10),
        lambda: session.add_click(10, float("inf")),
        lambda: session.set_clicks([Click(1, 1, True), Click(500, 1, True)]),
        lambda: session.set_prior_mask(np.zeros((299, 400), bool)),
        lambda: session.set_prior_mask(np.full((300, 400), 2.0)),
        lambda: session.set_image(np.zeros((300, 400, 3), dtype=bool)),
        lambda: session.set_image(np.zeros((0, 4))),
        lambda: session.set_image(_image(), prior_mask=np.zeros((10, 10), bool)),
    ]
    for call in bad_calls:
        with pytest.raises(ImageFormatError):
            call()
        _assert_same_state(_state(session), before)
    assert session.image_shape == (300, 400)


def test_uint16_float_and_recorded_normalization(model):
    rng = np.random.default_rng(1)
    img16 = (rng.gamma(2.0, 400.0, (120, 160)) + 100).astype(np.uint16)
    a = ClickSession(model, zoom_in=False, device="cpu")
    a.set_image(img16)
    norm = a.normalization
    assert norm.method == "percentile" and norm.low < norm.high
    want = a.set_clicks([Click(60, 80, True), Click(20, 30, False)]).copy()
    b = ClickSession(model, zoom_in=False, device="cpu")
    b.set_image(img16, contrast_limits=(norm.low, norm.high))
    np.testing.assert_array_equal(b.set_clicks(a.clicks), want)
    b.set_image(img16.astype(np.float32), normalization=norm)
    np.testing.assert_array_equal(b.set_clicks(a.clicks), want)
    assert b.normalization == norm
    b.set_image(img16.astype(np.float64) / 65535.0)  # float gray: percentiles of the floats
    np.testing.assert_allclose(b.set_clicks(a.clicks), want, atol=1e-5)


def test_switches(model):
    img = _image()
    clicks = [Click(150, 200, True), Click(160, 230, True)]
    full = ClickSession(model, device="cpu")
    full.set_image(img)
    step = full.predict_step(clicks, prev_probs=full.set_clicks(clicks[:1]))
    assert step.points.shape[0] == 2 and step.zoom_roi is not None

    plain = ClickSession(model, zoom_in=False, flip=False, device="cpu")
    plain.set_image(img)
    s = plain.predict_step(clicks)
    assert s.points.shape[0] == 1 and s.zoom_roi is None and s.net_input_hw == (300, 400)
    flipped = ClickSession(model, zoom_in=False, flip=True, device="cpu")
    flipped.set_image(img)
    # the stand-in model is flip-equivariant, so flip TTA must give the same probabilities
    np.testing.assert_allclose(flipped.predict_step(clicks).probs, s.probs, atol=1e-6)

    small = ClickSession(model, zoom_in=False, flip=False, max_size=100, device="cpu")
    small.set_image(img)
    s_small = small.predict_step(clicks)
    assert s_small.net_input_hw == (75, 100) and s_small.probs.shape == (300, 400)
    assert s_small.probs[150, 200] > 0.9 and s_small.probs[10, 10] < 0.5

    custom = ClickSession(model, zoom_in={"target_size": 200, "skip_clicks": 0}, device="cpu")
    custom.set_image(img)
    custom.set_prior_mask(_disk(300, 400, (150, 200), 30))
    assert custom.predict_step(clicks[:1], custom.probs).net_input_hw[1] == 200
    assert custom.threshold == 0.49
    with pytest.raises(RitmError):
        ClickSession(model, threshold=1.5, device="cpu")


def test_model_without_prev_mask():
    s = ClickSession(PointwiseModel(with_prev_mask=False), device="cpu")
    s.set_image(_image()[..., 0])
    probs = s.set_clicks(CLICKS[:2])
    assert probs[150, 200] > 0.9


def test_device_is_logged(model, caplog):
    with caplog.at_level(logging.INFO, logger="napari_ritm.inference.session"):
        s = ClickSession(model, device="cpu")
    assert s.device == torch.device("cpu")
    assert any("cpu" in r.getMessage() for r in caplog.records)


def _uint16_image(h: int = 120, w: int = 160, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 900.0, (h, w)).astype(np.uint16)


def test_default_normalization_is_the_trained_one(model):
    from napari_ritm.inference.preprocess import (
        DEFAULT_PERCENTILES,
        compute_normalization,
        percentiles_from_metadata,
    )

    image = _uint16_image()
    model.metadata = {
        "normalization": {
            "uint8": "value / 255",
            "other": "per-image percentiles, clipped",
            "percentiles": [1.0, 99.8],
        }
    }
    s = ClickSession(model, device="cpu")
    assert s.trained_percentiles == percentiles_from_metadata(model.metadata) == (1.0, 99.8)
    s.set_image(image)
    assert s.normalization == compute_normalization(image, percentiles=(1.0, 99.8))

    # other recorded percentiles change the normalization accordingly
    model.metadata = {"normalization": {"percentiles": [0.5, 99.5]}}
    other = ClickSession(model, device="cpu")
    assert other.trained_percentiles == (0.5, 99.5)
    other.set_image(image)
    expected = compute_normalization(image, percentiles=(0.5, 99.5))
    assert other.normalization == expected
    assert other.normalization.percentiles == (0.5, 99.5)
    assert other.normalization.high != s.normalization.high
    # explicit percentiles still override the model's
    other.set_image(image, percentiles=(1.0, 99.8))
    assert other.normalization == s.normalization
    # no metadata (or unusable metadata): the default percentiles
    del model.metadata
    assert ClickSession(model, device="cpu").trained_percentiles == DEFAULT_PERCENTILES
    assert percentiles_from_metadata({"normalization": {"percentiles": [50, 5]}}) == (1.0, 99.8)
    assert percentiles_from_metadata(None) == (1.0, 99.8)


def test_one_threshold_constant(session):
    from napari_ritm.evaluation import evaluator
    from napari_ritm.inference import session as session_module
    from napari_ritm.inference.presets import DEFAULT_THRESHOLD

    assert DEFAULT_THRESHOLD == session_module.DEFAULT_THRESHOLD == 0.49
    assert session.threshold == DEFAULT_THRESHOLD
    import inspect

    default = inspect.signature(evaluator.evaluate_sample).parameters["threshold"].default
    assert default == DEFAULT_THRESHOLD
