"""ZoomIn / LimitLongestSide / HorizontalFlip: the reference's rules and quirks, one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_ritm.errors import RitmError
from napari_ritm.inference.clicks import Click
from napari_ritm.inference.transforms import (
    HorizontalFlip,
    LimitLongestSide,
    ZoomIn,
    ZoomInState,
    box_iou,
    clicks_in_roi,
    expand_box,
    map_clicks,
    object_roi,
    resized_hw,
)

POS = Click(50, 60, True)


def _probs_box(h: int, w: int, box: tuple[int, int, int, int], value: float = 0.9) -> np.ndarray:
    p = np.zeros((h, w), np.float32)
    p[box[0] : box[1] + 1, box[2] : box[3] + 1] = value
    return p


def test_expand_box_rounds_half_to_even():
    # centre 5.5, size 6: ends 2.5 and 8.5 -> 2 and 8 (not 3 and 9)
    assert expand_box((3, 8, 3, 8), 1.0, None) == (2, 8, 2, 8)
    # min size wins over the ratio
    assert expand_box((10, 19, 0, 0), 1.4, 200) == (-86, 114, -100, 100)


def test_box_iou_is_product_of_interval_ious():
    assert box_iou((0, 9, 0, 9), (0, 9, 0, 9)) == 1.0
    assert box_iou((0, 9, 0, 9), (5, 14, 0, 9)) == pytest.approx(5 / 15)
    assert box_iou((0, 9, 0, 9), (5, 14, 5, 14)) == pytest.approx((5 / 15) ** 2)
    assert box_iou((0, 9, 0, 9), (20, 29, 0, 9)) == 0.0


def test_clicks_in_roi_uses_ge_on_the_max_side():
    roi = (0, 10, 0, 10)
    assert clicks_in_roi([Click(9.99, 5, True)], roi)
    assert not clicks_in_roi([Click(10, 5, True)], roi)
    assert not clicks_in_roi([Click(5, 10, True)], roi)
    assert clicks_in_roi([Click(5, 5, True), Click(50, 50, False)], roi)  # negatives ignored


def test_object_roi_includes_positive_clicks_and_clamps():
    probs = _probs_box(300, 400, (100, 120, 100, 130))
    roi = object_roi(probs, [Click(290.7, 110, True), Click(0, 0, False)])
    # rows 100..290 (int(290.7)), size max(1.4 * 191, 200) = 267.4 about 195 -> clamp at 299
    assert roi == (61, 299, 15, 215)
    assert object_roi(np.zeros((30, 30), np.float32), [POS]) is None
    # compact form: the crop at a region gives the same answer
    crop = probs[90:140, 90:150]
    assert object_roi(crop, [POS], region=(90, 139, 90, 149), image_hw=(300, 400)) == object_roi(
        probs, [POS]
    )


def test_zoom_skips_first_click_and_without_object():
    zoom = ZoomIn()
    assert zoom.update_roi([POS], (300, 400)) is None
    assert zoom.update_roi([POS, POS], (300, 400)) is None  # no previous probabilities
    zoom.set_state(ZoomInState(prev_probs=np.zeros((300, 400), np.float32)))
    assert zoom.update_roi([POS, POS], (300, 400)) is None and zoom.roi is None


def test_zoom_keeps_roi_when_candidate_is_empty_reference_quirk():
    roi = (10, 209, 20, 219)
    zoom = ZoomIn()
    zoom.set_state(ZoomInState(roi=roi, prev_probs=np.zeros((300, 400), np.float32)))
    x = torch.rand(1, 4, 300, 400)
    out, clicks = zoom.forward(x, [POS, POS])
    assert out is x and clicks == [POS, POS] and zoom.roi == roi  # passed through, ROI kept
    full = zoom.inverse(torch.ones(1, 1, 300, 400))
    # the quirk: the full-image result is squeezed into the old ROI; zero elsewhere
    assert full.shape == (1, 1, 300, 400)
    assert full[0, 0, 10:210, 20:220].min() == 1.0 and full.sum() == 200 * 200

    fixed = ZoomIn(reference_quirks=False)
    fixed.set_state(ZoomInState(roi=roi, prev_probs=np.zeros((300, 400), np.float32)))
    assert fixed.update_roi([POS, POS], (300, 400)) is None and fixed.roi is None
    assert fixed.inverse(torch.ones(1, 1, 300, 400)).sum() == 300 * 400


def test_zoom_recomputes_roi_only_when_needed():
    h, w = 600, 800
    zoom = ZoomIn()
    prev = _probs_box(h, w, (200, 299, 300, 399))
    zoom.set_state(ZoomInState(prev_probs=prev))
    first = zoom.update_roi([Click(250, 350, True)] * 2, (h, w))
    assert zoom.image_changed and first == (
        150,
        350,
        250,
        450,
    )  # centre 249.5 +- 100: halves to even
    # a slightly moved object: box IoU >= 0.5 and clicks inside -> ROI kept
    zoom.set_state(ZoomInState(roi=first, prev_probs=_probs_box(h, w, (210, 309, 300, 399))))
    assert zoom.update_roi([Click(250, 350, True)] * 2, (h, w)) == first
    assert not zoom.image_changed
    # a positive click outside the stored ROI -> recomputed
    assert zoom.update_roi([Click(250, 350, True), Click(360, 350, True)], (h, w)) != first
    assert zoom.image_changed
    # a negative click outside changes nothing
    zoom.set_state(ZoomInState(roi=first, prev_probs=prev))
    assert zoom.update_roi([Click(250, 350, True), Click(500, 700, False)], (h, w)) == first
    # the object moved: clicks inside the stored ROI but box IoU < 0.5 -> recomputed
    zoom.set_state(ZoomInState(roi=first, prev_probs=_probs_box(h, w, (300, 340, 300, 340))))
    clicks = [Click(320, 320, True), Click(320, 330, True)]
    assert clicks_in_roi(clicks, first)
    assert zoom.update_roi(clicks, (h, w)) == (220, 420, 220, 420) and zoom.image_changed


def test_negative_skip_clicks_zooms_on_whole_image():
    zoom = ZoomIn(target_size=(400, 400), skip_clicks=-1)
    out, clicks = zoom.forward(torch.rand(1, 4, 300, 600), [Click(150, 300, True)])
    assert zoom.roi == (0, 299, 0, 599) and out.shape == (1, 4, 400, 400)
    assert clicks[0].row == pytest.approx(200.0) and clicks[0].col == pytest.approx(200.0)


def test_zoom_forward_inverse_round_trip():
    h, w = 300, 400
    zoom = ZoomIn(target_size=400)
    zoom.set_state(ZoomInState(prev_probs=_probs_box(h, w, (100, 149, 100, 179))))
    rr, cc = np.mgrid[:h, :w]
    ramp = torch.from_numpy(((rr + 2 * cc) / 1000.0).astype(np.float32))[None, None]
    out, clicks = zoom.forward(ramp.repeat(1, 4, 1, 1), [Click(120, 140, True), Click(1, 1, False)])
    rmin, rmax, cmin, cmax = zoom.roi
    assert out.shape[-2:] == zoom.crop_hw(zoom.roi) and max(out.shape[-2:]) == 400
    assert clicks[0].row == pytest.approx(out.shape[-2] * (120 - rmin) / (rmax - rmin + 1))
    assert clicks[1].col < 0  # clicks outside the ROI are mapped too
    back = zoom.inverse(out[:, :1])
    inside = back[0, 0, rmin : rmax + 1, cmin : cmax + 1]
    # bilinear resampling of a linear ramp is exact up to float error
    torch.testing.assert_close(
        inside, ramp[0, 0, rmin : rmax + 1, cmin : cmax + 1], atol=1e-5, rtol=0
    )
    assert back.sum() == pytest.approx(inside.sum().item())  # zero outside the ROI
    assert zoom.prev_region == zoom.roi and zoom.prev_probs.shape == inside.shape


def test_limit_longest_side():
    lls = LimitLongestSide(200)
    x = torch.rand(1, 4, 150, 180)
    assert lls.forward(x, [POS])[0] is x
    assert lls.output_hw((301, 401)) == (150, 200)  # 301 * 200 / 401 = 150.12
    assert resized_hw((5, 2), 5) == (5, 2)
    big = torch.rand(1, 4, 301, 401)
    out, clicks = lls.forward(big, [Click(300, 400, True)])
    assert out.shape == (1, 4, 150, 200)
    assert clicks[0].row == pytest.approx(150 * 300 / 301) and clicks[0].col == pytest.approx(
        200 * 400 / 401
    )
    assert lls.inverse(out[:, :1]).shape == (1, 1, 301, 401)
    with pytest.raises(RitmError):
        LimitLongestSide(1)


def test_horizontal_flip():
    flip = HorizontalFlip()
    x = torch.arange(24, dtype=torch.float32).view(1, 2, 3, 4)
    out, lists = flip.forward(x, [Click(1, 0.25, True)])
    assert out.shape == (2, 2, 3, 4)
    torch.testing.assert_close(out[1], torch.flip(x[0], dims=[2]))
    assert lists[0][0].col == 0.25 and lists[1][0].col == pytest.approx(2.75)
    logits = torch.randn(1, 1, 3, 4)
    same = flip.inverse(torch.cat([logits, torch.flip(logits, dims=[3])]))
    torch.testing.assert_close(same, logits)
    avg = flip.inverse(torch.cat([torch.full((1, 1, 3, 4), 2.0), torch.zeros(1, 1, 3, 4)]))
    assert torch.all(avg == 1.0)  # logits are averaged


def test_map_clicks_formula():
    (c,) = map_clicks([Click(10, 20, False)], (5, 14, 10, 29), (50, 40))
    assert c.row == 50 * 5 / 10 and c.col == 40 * 10 / 20 and c.positive is False


def test_bad_zoom_parameters():
    with pytest.raises(RitmError):
        ZoomIn(target_size=1)
    with pytest.raises(RitmError):
        ZoomIn(expansion_ratio=0)
