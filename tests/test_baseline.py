"""GrabCut click baseline: protocol, accuracy on synthetic objects, gray/uint16 input, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ritm.errors import ImageFormatError
from napari_ritm.evaluation.baseline import GrabCutBaseline
from napari_ritm.evaluation.evaluator import NOC90_THRESHOLD, InteractivePredictor, evaluate_sample
from napari_ritm.inference.clicks import iou


def _disk(shape, centre, radius) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


@pytest.fixture
def two_cells() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint16 gray image with two equally bright cells, and their masks."""
    rng = np.random.default_rng(0)
    shape = (120, 160)
    a = _disk(shape, (40, 45), 18)
    b = _disk(shape, (80, 115), 22)
    image = rng.normal(800, 60, shape)
    image[a | b] += 2500
    return np.clip(image, 0, 65535).astype(np.uint16), a, b


def test_rgb_object_one_click() -> None:
    rng = np.random.default_rng(1)
    shape = (100, 130)
    obj = _disk(shape, (50, 60), 25)
    image = rng.integers(0, 60, (*shape, 3)).astype(np.uint8)
    image[obj] = rng.integers(180, 255, (int(obj.sum()), 3))
    baseline = GrabCutBaseline()
    assert isinstance(baseline, InteractivePredictor)
    baseline.set_image(image)
    probs = baseline.add_click(50, 60, True)
    assert probs.dtype == np.float32 and probs.shape == shape
    assert set(np.unique(probs)) <= {0.0, 1.0}
    assert iou(obj.astype(np.int8), probs > 0.5) > 0.9


def test_uint16_only_clicked_cell(two_cells) -> None:
    image, a, b = two_cells
    baseline = GrabCutBaseline()
    baseline.set_image(image)
    mask = baseline.add_click(40, 45) > 0.5
    assert iou(a.astype(np.int8), mask) > 0.85
    assert not (mask & b).any()  # the other, identical-looking cell is not taken
    mask = baseline.add_click(80, 115) > 0.5  # second positive click adds it
    assert iou((a | b).astype(np.int8), mask) > 0.85
    assert baseline.mask.sum() == mask.sum()


def test_negative_click_is_background(two_cells) -> None:
    image, _a, _ = two_cells
    baseline = GrabCutBaseline()
    baseline.set_image(image)
    baseline.add_click(40, 45)
    mask = baseline.add_click(40, 60, positive=False) > 0.5  # inside the cell, near its edge
    assert not mask[40, 60]
    assert not mask[_disk(mask.shape, (40, 60), 5)].any()
    assert mask[40, 40]
    assert len(baseline.clicks) == 2 and not baseline.clicks[1].positive


def test_only_negative_clicks_give_empty(two_cells) -> None:
    image, _, _ = two_cells
    baseline = GrabCutBaseline()
    baseline.set_image(image)
    assert baseline.add_click(5, 5, positive=False).sum() == 0


def test_reset_and_errors(two_cells) -> None:
    image, a, _ = two_cells
    baseline = GrabCutBaseline()
    with pytest.raises(ImageFormatError):
        baseline.add_click(1, 1)
    baseline.set_image(image)
    with pytest.raises(ImageFormatError):
        baseline.add_click(500, 1)
    baseline.add_click(40, 45)
    baseline.reset()
    assert baseline.clicks == [] and baseline.probs.sum() == 0
    # reset keeps the image: the same click gives the same answer
    again = baseline.add_click(40, 45)
    assert iou(a.astype(np.int8), again > 0.5) > 0.85


def test_evaluate_sample_with_baseline(two_cells) -> None:
    image, _, b = two_cells
    result = evaluate_sample(GrabCutBaseline(), image, b.astype(np.int8), max_clicks=5)
    assert result.noc(NOC90_THRESHOLD, 5) <= 2
    assert result.ious[-1] >= 0.9
