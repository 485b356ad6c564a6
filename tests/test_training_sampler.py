"""MultiPointSampler (§7.3) and the training next-click rule (§7.4) on synthetic masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from napari_ritm_training.sampler import MultiPointSampler, count_probabilities, next_points

N = 24


def _three_objects() -> np.ndarray:
    labels = np.zeros((96, 96), np.int32)
    labels[10:40, 10:40] = 1
    labels[50:85, 20:60] = 2
    labels[15:35, 60:90] = 3
    return labels


def _rows(points: np.ndarray, half: int) -> np.ndarray:
    part = points[half * N : (half + 1) * N]
    return part[part[:, 0] >= 0]


def test_count_distributions_match_reference():
    counts, probs = count_probabilities(24, 0.8, start=1)
    assert counts[0] == 1 and counts[-1] == 24
    assert probs[0] == pytest.approx(0.2009, abs=1e-4)
    assert float((counts * probs).sum()) == pytest.approx(4.89, abs=0.01)
    counts, probs = count_probabilities(24, 0.8, start=0)
    assert counts[0] == 0 and counts[-1] == 24
    assert probs[0] == pytest.approx(0.2008, abs=1e-4)
    assert float((counts * probs).sum()) == pytest.approx(3.91, abs=0.01)


def test_layout_and_regions():
    labels = _three_objects()
    sampler = MultiPointSampler()
    rng = np.random.default_rng(0)
    n_pos, merged, on_other, n_neg = [], 0, 0, 0
    for _ in range(600):
        s = sampler.sample(labels, rng)
        assert s.points.shape == (2 * N, 3) and s.points.dtype == np.float32
        assert s.gt.shape == labels.shape and set(np.unique(s.gt)) <= {0.0, 1.0}
        target = s.gt > 0.5
        np.testing.assert_array_equal(target, np.isin(labels, s.object_ids))
        for half in (0, 1):
            part = s.points[half * N : (half + 1) * N]
            valid = part[:, 0] >= 0
            # Valid rows first, then (-1, -1, -1) padding; sampled clicks carry order 100.
            k = int(valid.sum())
            assert valid[:k].all() and not valid[k:].any()
            assert (part[k:] == -1).all() and (part[:k, 2] == 100).all()
        pos, neg = _rows(s.points, 0), _rows(s.points, 1)
        assert len(pos) >= 1
        r, c = pos[:, 0].astype(int), pos[:, 1].astype(int)
        assert target[r, c].all(), "positive clicks must lie on the target"
        r, c = neg[:, 0].astype(int), neg[:, 1].astype(int)
        assert not target[r, c].any(), "negative clicks must lie off the target"
        if len(s.object_ids) == 2:
            merged += 1
            for obj in s.object_ids:  # every merged object gets at least one click
                assert (labels[pos[:, 0].astype(int), pos[:, 1].astype(int)] == obj).any()
        else:
            n_pos.append(len(pos))
        on_other += int((labels[r, c] > 0).sum())
        n_neg += len(neg)
    assert merged / 600 == pytest.approx(0.15, abs=0.05)
    assert np.mean(n_pos) == pytest.approx(4.89, abs=0.6)
    assert np.mean(np.array(n_pos) == 1) == pytest.approx(0.2, abs=0.06)
    # "other object" negatives are drawn with p 0.4 (the ring and background never overlap them)
    assert on_other / n_neg == pytest.approx(0.4, abs=0.06)


def test_positives_avoid_the_border_after_erosion():
    labels = np.zeros((64, 64), np.int32)
    labels[8:56, 8:56] = 1
    sampler = MultiPointSampler(merge_objects_prob=0.0)
    rng = np.random.default_rng(1)
    near_edge = total = 0
    for _ in range(300):
        pos = _rows(sampler.sample(labels, rng).points, 0).astype(int)
        d = np.minimum.reduce([pos[:, 0] - 8, 55 - pos[:, 0], pos[:, 1] - 8, 55 - pos[:, 1]])
        near_edge += int((d < 3).sum())
        total += len(pos)
    # Without erosion 23% of the square is within 3 px of its edge; erosion (p 0.9) removes it.
    assert near_edge / total < 0.06


def test_negatives_fall_back_to_background_and_ring():
    """One object only: 'other' = background; ring = dilation by ceil(0.1 sqrt(area))."""
    labels = np.zeros((80, 80), np.int32)
    labels[30:50, 30:50] = 7
    sampler = MultiPointSampler()
    rng = np.random.default_rng(2)
    ring = cv2.dilate((labels > 0).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2) > 0
    ring &= labels == 0
    in_ring = n = 0
    for _ in range(400):
        s = sampler.sample(labels, rng)
        assert s.object_ids == (7,)
        neg = _rows(s.points, 1).astype(int)
        in_ring += int(ring[neg[:, 0], neg[:, 1]].sum())
        n += len(neg)
    # Ring strategy p 0.5, plus background/other draws (p 0.5) that land in the ring by chance.
    expected = 0.5 + 0.5 * ring.sum() / (labels == 0).sum()
    assert in_ring / n == pytest.approx(expected, abs=0.06)


def test_empty_sample_and_ignore():
    labels = np.zeros((40, 40), np.int32)
    labels[:5] = -1
    s = MultiPointSampler().sample(labels, np.random.default_rng(0))
    assert s.object_ids == ()
    assert len(_rows(s.points, 0)) == 0
    assert (s.gt[:5] == -1).all() and (s.gt[5:] == 0).all()
    neg = _rows(s.points, 1).astype(int)
    assert (neg[:, 0] >= 5).all(), "no negative click on ignored pixels"


def test_object_ids_restrict_targets():
    labels = _three_objects()
    rng = np.random.default_rng(3)
    chosen = {MultiPointSampler().sample(labels, rng, object_ids=[2]).object_ids for _ in range(50)}
    assert chosen == {(2,)}


# --- next_points ---------------------------------------------------------------------------------


def _empty_points(batch: int) -> np.ndarray:
    return np.full((batch, 2 * N, 3), -1.0, np.float32)


def test_next_point_positive_in_deep_false_negative():
    gt = np.zeros((1, 1, 50, 60), np.float32)
    gt[0, 0, 10:40, 5:45] = 1
    probs = np.zeros_like(gt)  # everything missed -> false negative
    points = _empty_points(1)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        out = next_points(probs, gt, points, 1, rng)
        changed = np.flatnonzero((out != points).any(axis=2)[0])
        assert changed.tolist() == [N - 1]
        r, c, order = out[0, N - 1]
        assert order == 1
        seen.add((int(r), int(c)))
    fn = np.pad(gt[0, 0].astype(np.uint8), 1)
    dt = cv2.distanceTransform(fn, cv2.DIST_L2, 5)[1:-1, 1:-1]
    for r, c in seen:
        assert dt[r, c] > dt.max() / 2
    assert len(seen) > 10, "the click is random among the candidates"
    assert points[0, N - 1, 0] == -1, "input points are not modified"


def test_next_point_negative_slot_and_step():
    gt = np.zeros((2, 1, 40, 40), np.float32)
    gt[:, :, 5:15, 5:15] = 1
    probs = np.zeros_like(gt)
    probs[:, :, 5:15, 5:15] = 0.9  # object right
    probs[0, :, 20:38, 20:38] = 0.9  # big false positive in sample 0
    out = next_points(probs, gt, _empty_points(2), 3, np.random.default_rng(0))
    r, c, order = out[0, 2 * N - 3]
    assert order == 3 and 20 <= r < 38 and 20 <= c < 38
    # sample 1 has no error at all: nothing is added
    np.testing.assert_array_equal(out[1], _empty_points(1)[0])


def test_next_point_tie_goes_negative_and_threshold_049():
    gt = np.zeros((1, 1, 30, 60), np.float32)
    gt[0, 0, 5:14, 5:14] = 1  # 9x9 missed square (FN)
    probs = np.zeros_like(gt)
    probs[0, 0, 5:14, 40:49] = 0.495  # 9x9 FP square, just above the 0.49 threshold
    out = next_points(probs, gt, _empty_points(1), 1, np.random.default_rng(0))
    assert out[0, N - 1, 0] == -1 and out[0, 2 * N - 1, 2] == 1
    assert 40 <= out[0, 2 * N - 1, 1] < 49
    probs[0, 0, 5:14, 40:49] = 0.49  # not > 0.49: no false positive any more
    out = next_points(probs, gt, _empty_points(1), 1, np.random.default_rng(0))
    assert out[0, N - 1, 2] == 1 and out[0, 2 * N - 1, 0] == -1


def test_next_point_padding_counts_image_border_as_background():
    gt = np.zeros((1, 1, 40, 40), np.float32)
    gt[0, 0, :10, :] = 1  # a band along the top edge
    out = next_points(np.zeros_like(gt), gt, _empty_points(1), 1, np.random.default_rng(0))
    r = out[0, N - 1, 0]
    # With the 1-px zero padding the deepest pixels are in the band's middle rows, not row 0.
    assert 2 <= r <= 7
