"""NoC / mIoU arithmetic, the per-sample loop with fake predictors, reports, table and plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_ritm.errors import ImageFormatError, RitmError
from napari_ritm.evaluation.evaluator import (
    NOC85_THRESHOLD,
    NOC90_THRESHOLD,
    SUMMARY_KEYS,
    InteractivePredictor,
    Report,
    SampleResult,
    evaluate_dataset,
    evaluate_sample,
    format_table,
    miou_curve,
    number_of_clicks,
    plot_miou,
)
from napari_ritm.inference.clicks import iou


class PerfectPredictor:
    """Returns the ground truth object as soon as it gets a click."""

    def __init__(self, gts: list[np.ndarray]) -> None:
        self._gts = gts
        self._i = -1
        self.n_clicks = 0

    def set_image(self, image: np.ndarray) -> None:
        self._i += 1

    def reset(self) -> None:
        pass

    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        self.n_clicks += 1
        return (self._gts[self._i] == 1).astype(np.float32)


class NeverRightPredictor:
    """Always predicts background only."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.clicks: list[tuple[float, float, bool]] = []

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]
        self.clicks = []

    def reset(self) -> None:
        self.clicks = []

    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        self.clicks.append((row, col, positive))
        return np.zeros(self.shape, dtype=np.float32)


class ScriptedPredictor:
    """Click k returns a prediction with a prescribed IoU: the top `frac` rows of the object."""

    def __init__(self, fractions: list[float]) -> None:
        self.fractions = fractions
        self.k = 0
        self.shape: tuple[int, ...] = ()

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]
        self.k = 0

    def reset(self) -> None:
        self.k = 0

    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        frac = self.fractions[min(self.k, len(self.fractions) - 1)]
        self.k += 1
        probs = np.zeros(self.shape, dtype=np.float32)
        probs[10 : 10 + round(20 * frac), 10:30] = 0.9  # object is rows 10..29, cols 10..29
        return probs


def _square_gt(shape=(40, 40)) -> np.ndarray:
    gt = np.zeros(shape, dtype=np.int8)
    gt[10:30, 10:30] = 1
    return gt


class _S:
    def __init__(self, name, image, gt):
        self.name, self.image, self.gt = name, image, gt


# --- arithmetic ------------------------------------------------------------------------------


def test_thresholds_match_reference_arange() -> None:
    assert NOC85_THRESHOLD == np.arange(0.8, 0.901, 0.05)[1]
    assert NOC90_THRESHOLD == np.arange(0.8, 0.901, 0.05)[2]
    # float32(0.9) is below the reference's float64 threshold 0.9000000000000001
    assert number_of_clicks(np.array([0.9], np.float32), NOC90_THRESHOLD, 20) == 20


@pytest.mark.parametrize(
    ("ious", "threshold", "expected"),
    [
        ([0.5, 0.86, 0.91], NOC85_THRESHOLD, 2),
        ([0.5, 0.86, 0.91], NOC90_THRESHOLD, 3),
        ([0.95], NOC90_THRESHOLD, 1),
        ([0.1, 0.2, 0.3], NOC85_THRESHOLD, 5),  # never reached -> max_clicks
        ([0.1, 0.2, 0.3, 0.4, 0.91], NOC90_THRESHOLD, 5),  # reached at the last click
    ],
)
def test_number_of_clicks(ious, threshold, expected) -> None:
    assert number_of_clicks(np.asarray(ious, np.float32), threshold, max_clicks=5) == expected


def test_miou_curve_carries_last_value_forward() -> None:
    curve = miou_curve([np.array([0.5, 0.95]), np.array([0.2, 0.4, 0.6, 0.8])], max_clicks=4)
    assert curve == pytest.approx([0.35, 0.675, 0.775, 0.875])
    assert all(math.isnan(v) for v in miou_curve([], 3))


def test_report_aggregates_exact_values() -> None:
    results = [
        SampleResult("a", np.array([0.5, 0.86, 0.91], np.float32), [], 0.3),
        SampleResult("b", np.array([0.95], np.float32), [], 0.1),
        SampleResult("c", np.array([0.1, 0.2, 0.3, 0.4], np.float32), [], 0.4),
        SampleResult("d", np.array([0.3, 0.5, 0.8, 0.92], np.float32), [], 0.4),
    ]
    report = Report.from_results(
        results, max_clicks=4, target_iou=0.9, seconds=2.4, model="m", dataset="d"
    )
    assert report.noc85 == pytest.approx((2 + 1 + 4 + 4) / 4)
    assert report.noc90 == pytest.approx((3 + 1 + 4 + 4) / 4)
    assert report.failures90 == 2  # "c" never, "d" exactly at the last click
    assert report.seconds_per_click == pytest.approx(2.4 / 12)
    assert report.n_samples == 4
    assert len(report.miou_at_k) == 4
    expected_k1 = np.mean([0.5, 0.95, 0.1, 0.3])
    expected_k4 = np.mean([0.91, 0.95, 0.4, 0.92])
    assert report.miou_at_k[0] == pytest.approx(expected_k1, abs=1e-6)
    assert report.miou_at_k[3] == pytest.approx(expected_k4, abs=1e-6)
    summary = report.summary()
    assert tuple(summary) == SUMMARY_KEYS
    data = json.loads(report.to_json(include_samples=True))
    assert data["samples"][0] == {
        "name": "a",
        "ious": pytest.approx([0.5, 0.86, 0.91], abs=1e-6),
        "clicks": [],
        "noc85": 2,
        "noc90": 3,
        "seconds": 0.3,
    }
    assert set(json.loads(report.to_json())) == set(SUMMARY_KEYS)


# --- per-sample loop -------------------------------------------------------------------------


def test_perfect_predictor_needs_one_click() -> None:
    gt = _square_gt()
    pred = PerfectPredictor([gt])
    assert isinstance(pred, InteractivePredictor)
    result = evaluate_sample(pred, np.zeros((40, 40, 3), np.uint8), gt, max_clicks=20, name="sq")
    assert result.n_clicks == 1
    assert result.ious.dtype == np.float32
    assert result.ious[0] == 1.0
    assert result.noc(NOC90_THRESHOLD, 20) == 1
    c = result.clicks[0]
    assert c.positive and gt[int(c.row), int(c.col)] == 1


def test_never_right_predictor_fails_with_max_clicks() -> None:
    gt = _square_gt()
    pred = NeverRightPredictor()
    result = evaluate_sample(pred, np.zeros((40, 40), np.uint16), gt, max_clicks=5)
    assert result.n_clicks == 5
    np.testing.assert_array_equal(result.ious, np.zeros(5, np.float32))
    assert result.noc(NOC85_THRESHOLD, 5) == 5
    # the clicker must not click the same pixel twice and all clicks are positive (only FN)
    assert len({(r, c) for r, c, _ in pred.clicks}) == 5
    assert all(p for _, _, p in pred.clicks)


def test_scripted_ious_and_stop_rule() -> None:
    gt = _square_gt()
    image = np.zeros((40, 40), np.uint8)
    # IoUs 0.5, 0.85, 0.95, 1.0: stops at click 3 with target 0.90
    pred = ScriptedPredictor([0.5, 0.85, 0.95, 1.0])
    result = evaluate_sample(pred, image, gt, max_clicks=10)
    np.testing.assert_allclose(result.ious, [0.5, 0.85, 0.95], atol=1e-6)
    # target > 1 never stops
    result = evaluate_sample(pred, image, gt, max_clicks=6, target_iou=1.01)
    np.testing.assert_allclose(result.ious, [0.5, 0.85, 0.95, 1, 1, 1], atol=1e-6)
    assert result.ious[1] == np.float32(iou(gt, _rows_mask(gt.shape, 17)))


def _rows_mask(shape, n_rows):
    m = np.zeros(shape, bool)
    m[10 : 10 + n_rows, 10:30] = True
    return m


def test_threshold_049_is_used() -> None:
    gt = _square_gt()

    class Half(NeverRightPredictor):
        def add_click(self, row, col, positive=True):
            return (gt == 1).astype(np.float32) * 0.495

    assert evaluate_sample(Half(), np.zeros((40, 40)), gt).ious[0] == 1.0
    assert evaluate_sample(Half(), np.zeros((40, 40)), gt, threshold=0.5).n_clicks == 20


def test_ignore_band_not_scored() -> None:
    gt = _square_gt()
    gt[8:10, 10:30] = -1  # predicted object spills into the ignore band: still IoU 1

    class Spill(NeverRightPredictor):
        def add_click(self, row, col, positive=True):
            p = np.zeros(self.shape, np.float32)
            p[8:30, 10:30] = 1
            return p

    assert evaluate_sample(Spill(), np.zeros((40, 40)), gt).ious[0] == 1.0


@pytest.mark.parametrize(
    ("gt", "image_shape"),
    [
        (np.zeros((40, 40), np.int8), (40, 40)),  # no object
        (np.full((40, 40), 2, np.int8), (40, 40)),  # bad values
        (_square_gt(), (41, 40)),  # shape mismatch
        (np.ones((2, 40, 40), np.int8), (40, 40)),  # not 2D
    ],
)
def test_bad_targets_raise(gt, image_shape) -> None:
    with pytest.raises(ImageFormatError):
        evaluate_sample(NeverRightPredictor(), np.zeros(image_shape), gt)


def test_evaluate_dataset_report_and_progress() -> None:
    gts = [_square_gt(), _square_gt((50, 60))]
    samples = [_S(f"s{i}", np.zeros((*g.shape, 3), np.uint8), g) for i, g in enumerate(gts)]
    calls = []
    report = evaluate_dataset(
        PerfectPredictor(gts),
        samples,
        max_clicks=5,
        dataset="toy",
        progress=lambda d, t, m: calls.append((d, t, m)),
    )
    assert calls == [(1, 2, "s0"), (2, 2, "s1")]
    assert (report.noc85, report.noc90, report.failures90, report.n_samples) == (1.0, 1.0, 0, 2)
    assert report.miou_at_k == [1.0] * 5
    assert report.model == "PerfectPredictor" and report.dataset == "toy"
    assert report.seconds_per_click > 0
    failing = evaluate_dataset(NeverRightPredictor(), samples, max_clicks=3, model="zero")
    assert (failing.noc90, failing.failures90, failing.miou_at_k) == (3.0, 2, [0.0] * 3)
    with pytest.raises(RitmError):
        evaluate_dataset(NeverRightPredictor(), [], max_clicks=3)


def test_table_and_plot(tmp_path) -> None:
    a = Report(1.5, 2.25, 1, [0.5, 0.8, 0.9], 0.123, 4, "modelA", "toy", max_clicks=3)
    b = Report(3.0, 3.0, 4, [0.1, 0.2, 0.3], 0.01, 4, "grabcut", "toy", max_clicks=3)
    table = format_table([a, b])
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].split()[:6] == ["model", "dataset", "n", "NoC@85", "NoC@90", ">=3@90"]
    assert lines[2].split() == [
        "modelA",
        "toy",
        "4",
        "1.50",
        "2.25",
        "1",
        "0.500",
        "0.900",
        "-",
        "-",
        "0.123",
    ]
    single = a.format_table().splitlines()
    assert len(single) == 3 and single[2].split()[0] == "modelA"
    out = plot_miou([a, b], tmp_path / "sub" / "curve.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
