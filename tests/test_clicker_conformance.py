"""The evaluation clicker against the official one (conformance README 3e) plus edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_npz

from napari_ritm.errors import ImageFormatError, RitmError
from napari_ritm.inference.clicks import Click, error_masks, iou, next_click


def _clicks_from_rows(rows: np.ndarray) -> list[Click]:
    return [Click(int(r), int(c), bool(p)) for r, c, p in rows if r >= 0]


def test_next_click_matches_official_cases(conformance_dir):
    data = load_npz(conformance_dir, "clicker_points")
    n_cases = data["gt"].shape[0]
    assert n_cases >= 1
    for k in range(n_cases):
        prior = _clicks_from_rows(data["prior_clicks"][k])
        got = next_click(data["gt"][k], data["pred"][k], prior)
        want = data["next_click"][k]
        assert (got.row, got.col, int(got.positive)) == tuple(int(v) for v in want), f"case {k}"
        assert isinstance(got.row, int) and isinstance(got.col, int)


def test_next_click_follows_session_clicks(conformance_dir):
    """clicks[k+1] of the recorded session follow from gt, pred_masks[k] and earlier clicks."""
    data = load_npz(conformance_dir, "predictor_session")
    gt, clicks_rec = data["gt_mask"], data["clicks"]
    clicks: list[Click] = []
    pred = np.zeros(gt.shape, dtype=bool)
    for k in range(len(clicks_rec)):
        got = next_click(gt, pred, clicks)
        assert (got.row, got.col, int(got.positive)) == tuple(int(v) for v in clicks_rec[k]), k
        clicks.append(got)
        pred = data["pred_masks"][k]


def test_first_click_is_innermost_object_pixel():
    gt = np.zeros((30, 40), dtype=np.int32)
    gt[5:16, 10:21] = 1  # 11x11 square, centre (10, 15)
    click = next_click(gt, np.zeros_like(gt, dtype=bool))
    assert click == Click(10, 15, True)


def test_tie_goes_negative_and_border_counts_as_boundary():
    gt = np.zeros((20, 40), dtype=np.int32)
    gt[2:7, 2:7] = 1  # 5x5 FN, max dist 3
    pred = np.zeros_like(gt, dtype=bool)
    pred[10:15, 20:25] = True  # 5x5 FP, max dist 3
    assert next_click(gt, pred) == Click(12, 22, False)
    # an object touching the top-left corner: the padding makes the border a boundary
    gt2 = np.zeros((10, 10), dtype=np.int32)
    gt2[:3, :3] = 1
    assert next_click(gt2, np.zeros_like(gt2, dtype=bool)) == Click(1, 1, True)


def test_ignore_pixels_are_neither_fn_nor_fp():
    gt = np.full((10, 10), -1, dtype=np.int32)
    gt[4:6, 4:6] = 1
    pred = np.ones((10, 10), dtype=bool)
    pred[4:6, 4:6] = False
    fn, fp = error_masks(gt, pred)
    assert fn.sum() == 4 and fp.sum() == 0
    assert iou(gt, ~pred) == 1.0
    assert iou(gt, pred) == 0.0


def test_perfect_prediction_gives_negative_click_and_iou_one():
    gt = np.zeros((8, 8), dtype=np.int32)
    gt[2:5, 2:5] = 1
    click = next_click(gt, gt == 1)
    assert click.positive is False
    assert iou(gt, gt == 1) == 1.0
    assert iou(np.zeros((4, 4), np.int32), np.zeros((4, 4), bool)) == 1.0


def test_already_clicked_pixel_is_skipped():
    gt = np.zeros((11, 11), dtype=np.int32)
    gt[3:8, 3:8] = 1
    first = next_click(gt, np.zeros_like(gt, dtype=bool))
    second = next_click(gt, np.zeros_like(gt, dtype=bool), [first])
    assert first == Click(5, 5, True)
    assert second != first and second.positive


def test_iou_values():
    gt = np.zeros((10, 10), dtype=np.int32)
    gt[:5] = 1
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :5] = True
    assert iou(gt, mask) == pytest.approx(25 / 75)


@pytest.mark.parametrize(
    ("gt", "pred"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5), bool)),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool)),
        (np.zeros(4), np.zeros(4, bool)),
        (np.zeros((4, 4)), np.zeros((4, 4), np.float32)),  # probabilities, not a mask
    ],
)
def test_bad_shapes_raise(gt, pred):
    with pytest.raises(ImageFormatError) as info:
        next_click(gt, pred)
    assert isinstance(info.value, RitmError)
    with pytest.raises(ImageFormatError):
        iou(gt, pred)
