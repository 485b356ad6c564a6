"""Session presets: the interactive first-click window vs the evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_ritm.errors import RitmError
from napari_ritm.inference.first_window import (
    SMALL_OBJECT_PX,
    grow_window,
    initial_window,
    magnified_window,
)
from napari_ritm.inference.presets import PRESETS, get_preset
from napari_ritm.inference.session import ClickSession


class BrightModel(nn.Module):
    """Segments the bright pixels (a stand-in whose 'object' is known); records input sizes."""

    with_prev_mask = True

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        self.sizes.append(tuple(image.shape[-2:]))
        logits = 20.0 * (image[:, :1] - 0.5)
        return {"instances": logits}


def _square_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.full((h, w), 100, dtype=np.uint16)
    r0, r1, c0, c1 = box
    image[r0 : r1 + 1, c0 : c1 + 1] = 3000
    return image


def test_presets_table():
    assert get_preset("interactive").precision == "auto" and PRESETS["interactive"].first_window
    assert get_preset("evaluation").precision == "float32"
    assert not get_preset("evaluation").first_window
    with pytest.raises(RitmError, match="preset"):
        get_preset("turbo")


def test_initial_window_is_clamped():
    assert initial_window((10.0, 500.0), (1000, 1200), 400) == (0, 399, 300, 699)
    assert initial_window((990.0, 1190.0), (1000, 1200), 400) == (600, 999, 800, 1199)
    assert initial_window((50.0, 60.0), (120, 150), 400) == (0, 119, 0, 149)


def test_grow_window_follows_the_truncated_object():
    roi = (100, 499, 100, 499)
    probs = np.zeros((400, 400), dtype=np.float32)
    probs[150:300, 0:200] = 1.0  # the object runs out of the left side
    probs[10:20, 350:390] = 1.0  # another object: ignored
    grown = grow_window(roi, probs, (300.0, 150.0), (2000, 2000))
    assert grown is not None
    assert grown[2] < roi[2]  # extended to the left
    assert grown[0] <= 250 and grown[1] >= 400  # still holds the object's rows
    # object inside the window, no object under the click, or truncated only by the image
    inside = np.zeros((400, 400), dtype=np.float32)
    inside[150:300, 50:200] = 1.0
    assert grow_window(roi, inside, (300.0, 200.0), (2000, 2000)) is None
    assert grow_window(roi, inside, (110.0, 110.0), (2000, 2000)) is None
    assert grow_window((0, 399, 0, 399), probs, (200.0, 50.0), (2000, 2000)) is None


def test_magnified_window_only_for_small_objects():
    roi = (100, 499, 100, 499)
    probs = np.zeros((400, 400), dtype=np.float32)
    probs[190:210, 190:220] = 1.0  # 20 x 30 px object under the click at (300, 310)
    box = magnified_window(roi, probs, (300.0, 310.0), (2000, 2000))
    assert box is not None
    r0, r1, c0, c1 = box
    assert r1 - r0 + 1 in (200, 201) and c1 - c0 + 1 in (200, 201)  # ZoomIn's minimum crop
    assert r0 <= 290 and r1 >= 309 and c0 <= 290 and c1 >= 319  # holds the object
    # no object under the click, an object of SMALL_OBJECT_PX or more, a box as long as the
    # network input (nothing to magnify)
    assert magnified_window(roi, probs, (150.0, 150.0), (2000, 2000)) is None
    large = np.zeros((400, 400), dtype=np.float32)
    large[150 : 150 + SMALL_OBJECT_PX, 150:200] = 1.0
    assert magnified_window(roi, large, (200.0, 260.0), (2000, 2000)) is None
    assert magnified_window(roi, probs, (300.0, 310.0), (2000, 2000), target_size=200) is None
    # clamped to the image
    edge = magnified_window((0, 399, 0, 399), probs, (200.0, 210.0), (300, 300))
    assert edge is not None and edge[0] >= 0 and edge[3] <= 299


def test_interactive_first_click_small_object_is_magnified():
    """An object under SMALL_OBJECT_PX gets a second pass on ZoomIn's box: 2x, as click 2."""
    model = BrightModel()
    # 20 x 30 px; 8 bit (a 16-bit image this sparse would be normalised by its percentiles to
    # one flat level)
    image = np.where(_square_image(1000, 1200, (490, 509, 590, 619)) > 1000, 220, 20)
    image = image.astype(np.uint8)
    s = ClickSession(model, device="cpu")
    s.set_image(image)
    s.add_click(500, 600, True)
    assert model.sizes == [(400, 400), (400, 400)]  # scale-1 window, then the magnified box
    (r0, r1, c0, c1), crop = s.probs_roi
    assert r1 - r0 + 1 in (200, 201) and c1 - c0 + 1 in (200, 201)
    assert crop.shape == (r1 - r0 + 1, c1 - c0 + 1)
    truth = image > 100
    assert (s.mask & truth).sum() / (s.mask | truth).sum() > 0.9


def test_interactive_first_click_medium_object_one_pass_at_scale_one():
    model = BrightModel()
    image = _square_image(1000, 1200, (470, 549, 560, 649))  # 80 x 90 px
    s = ClickSession(model, device="cpu")
    assert s.preset == "interactive"
    s.set_image(image)
    probs = s.add_click(500, 600, True)
    assert model.sizes == [(400, 400)] * 1  # one pass, a 400 window at scale 1 (flip: batch)
    region, crop = s.probs_roi
    assert region == (300, 699, 400, 799)  # the window around the click
    assert crop.shape == (400, 400)
    assert s._full_planes is None  # the whole image was never normalised
    np.testing.assert_array_equal(s.mask, image > 1000)
    assert probs.shape == (1000, 1200)
    # the next click zooms exactly as the reference: ROI from the previous object
    step = s.predict_step([*s.clicks, s.clicks[0]], s.probs, None)
    assert step.zoom_roi is not None and step.zoom_roi != region


def test_interactive_first_click_large_object_grows_the_window():
    model = BrightModel()
    obj = (100, 799, 150, 1049)  # 700 x 900, larger than the 400 start window
    image = _square_image(1000, 1200, obj)
    s = ClickSession(model, device="cpu")
    s.set_image(image)
    s.add_click(450, 600, True)
    assert 2 <= len(model.sizes) <= 3  # grown, bounded
    assert all(max(hw) <= 400 for hw in model.sizes)  # every pass costs a following click
    region, _ = s.probs_roi
    assert region[0] <= obj[0] and region[1] >= obj[1]
    assert region[2] <= obj[2] and region[3] >= obj[3]
    iou = (s.mask & (image > 1000)).sum() / (s.mask | (image > 1000)).sum()
    assert iou > 0.95


def test_evaluation_preset_first_click_is_the_whole_image():
    model = BrightModel()
    image = _square_image(300, 360, (100, 150, 100, 160))
    s = ClickSession(model, preset="evaluation", device="cpu")
    s.set_image(image)
    s.add_click(120, 130, True)
    assert model.sizes == [(300, 360)]
    assert s.probs_roi[0] == (0, 299, 0, 359)


def test_interactive_large_image_is_bounded_by_the_start_window():
    model = BrightModel()
    image = _square_image(3000, 4000, (1480, 1560, 1990, 2080))
    s = ClickSession(model, device="cpu")
    s.set_image(image)
    s.add_click(1520, 2020, True)
    assert model.sizes == [(400, 400)]
    (r0, r1, c0, c1), crop = s.probs_roi
    assert (r1 - r0 + 1, c1 - c0 + 1) == (400, 400) and crop.shape == (400, 400)
    assert s._full_planes is None
    # undo / redo restore the stored first-click result
    s.add_click(1510, 2010, True)
    s.undo()
    assert s.probs_roi[0] == (r0, r1, c0, c1)


def test_interactive_zoom_off_keeps_whole_image_predictions():
    model = BrightModel()
    image = _square_image(200, 240, (50, 90, 50, 100))
    s = ClickSession(model, zoom_in=False, device="cpu")
    s.set_image(image)
    s.add_click(60, 60, True)
    assert model.sizes == [(200, 240)]


def test_interactive_small_image_first_click_is_the_reference_one():
    """An image that fits the start window runs whole, at its own scale (not magnified)."""
    model = BrightModel()
    image = _square_image(200, 300, (40, 130, 60, 170))
    s = ClickSession(model, device="cpu")
    s.set_image(image)
    s.add_click(100, 120, True)
    assert model.sizes == [(200, 300)]
    assert s.probs_roi[0] == (0, 199, 0, 299)
    # a small object in it is magnified on the second pass, as in a large image
    small = _square_image(200, 300, (90, 105, 110, 130))
    s.set_image(small)
    model.sizes.clear()
    s.add_click(97, 120, True)
    assert len(model.sizes) == 2 and model.sizes[0] == (200, 300) and max(model.sizes[1]) == 400
    assert (s.mask & (small > 1000)).sum() / (s.mask | (small > 1000)).sum() > 0.9
