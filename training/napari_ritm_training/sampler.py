"""Click sampling for training (reference §7.3 and §7.4).

* :class:`MultiPointSampler` draws the target object of a training crop and its random positive
  and negative clicks (RITM's MultiPointSampler with the COCO+LVIS parameters).
* :func:`next_points` adds one click per sample from the current errors of the network, as RITM's
  iterative training does (approximate distance transform, random pixel among the deepest ones).

Points are float32 rows ``(row, col, order)``: ``max_num_points`` positive rows followed by
``max_num_points`` negative rows; unused rows are ``(-1, -1, -1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["MultiPointSampler", "SampledTarget", "count_probabilities", "next_points"]

_KERNEL_3x3 = np.ones((3, 3), np.uint8)


def count_probabilities(
    max_count: int, gamma: float, *, start: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distribution of a click count: ``P(n) ∝ gamma ** (n - start)`` for ``n`` in start..max_count.

    Args:
        max_count: Largest count (inclusive).
        gamma: Geometric decay (0.8 in the reference).
        start: Smallest count (1 for positives, 0 for negatives).

    Returns:
        (counts int64 (K,), probabilities float64 (K,) summing to 1).
    """
    counts = np.arange(start, max_count + 1)
    weights = gamma ** (counts - start).astype(np.float64)
    return counts, weights / weights.sum()


@dataclass
class SampledTarget:
    """What the sampler returns for one training crop.

    Attributes:
        gt: float32 (H, W): 1 object, 0 background, -1 ignore.
        points: float32 (2 * max_num_points, 3), rows (row, col, order).
        object_ids: label ids merged into the target (empty for a background-only crop).
    """

    gt: np.ndarray
    points: np.ndarray
    object_ids: tuple[int, ...]


class MultiPointSampler:
    """Random target and clicks for one crop with instance labels (RITM §7.3).

    Args:
        max_num_points: Slots per click sign (24); also the largest positive/negative count.
        prob_gamma: Decay of the count distributions, ``P(n) ∝ prob_gamma ** n``.
        expand_ratio: Width of the border ring of negatives, as a fraction of sqrt(object area).
        positive_erode_prob: Probability of eroding the positive region (3x3, ``erode_iters``).
        positive_erode_iters: Erosion iterations of the positive region.
        negative_bg_prob: Probability of a background negative.
        negative_other_prob: Probability of a negative on another object.
        negative_border_prob: Probability of a negative in the ring around the target.
        merge_objects_prob: Probability of merging two objects into one target.
        order: Value of the third column for randomly sampled clicks (100 in the reference).
    """

    def __init__(
        self,
        max_num_points: int = 24,
        prob_gamma: float = 0.80,
        expand_ratio: float = 0.1,
        positive_erode_prob: float = 0.9,
        positive_erode_iters: int = 3,
        negative_bg_prob: float = 0.1,
        negative_other_prob: float = 0.4,
        negative_border_prob: float = 0.5,
        merge_objects_prob: float = 0.15,
        order: float = 100.0,
    ) -> None:
        self.max_num_points = int(max_num_points)
        self.expand_ratio = float(expand_ratio)
        self.positive_erode_prob = float(positive_erode_prob)
        self.positive_erode_iters = int(positive_erode_iters)
        probs = np.array([negative_bg_prob, negative_other_prob, negative_border_prob], np.float64)
        self.negative_strategy_probs = probs / probs.sum()
        self.merge_objects_prob = float(merge_objects_prob)
        self.order = float(order)
        self.pos_counts, self.pos_probs = count_probabilities(max_num_points, prob_gamma, start=1)
        self.neg_counts, self.neg_probs = count_probabilities(max_num_points, prob_gamma, start=0)

    # ------------------------------------------------------------------------------------------
    def sample(
        self,
        labels: np.ndarray,
        rng: np.random.Generator,
        object_ids: np.ndarray | list[int] | None = None,
    ) -> SampledTarget:
        """Pick a target among the objects of ``labels`` and sample its clicks.

        Args:
            labels: int array (H, W): 0 background, > 0 instance ids, < 0 ignore.
            rng: NumPy random generator (all randomness comes from it).
            object_ids: ids that may be chosen as the target (e.g. those above a minimum area);
                default: every positive id in ``labels``. Other labelled pixels still count as
                "other objects" for negatives.

        Returns:
            The target mask, the (2 * max_num_points, 3) points and the chosen ids.
        """
        labels = np.asarray(labels)
        if object_ids is None:
            object_ids = np.unique(labels[labels > 0])
        object_ids = [int(i) for i in object_ids]
        ignore = labels < 0
        labelled = labels > 0

        if not object_ids:
            target = np.zeros(labels.shape, bool)
            background = ~labelled & ~ignore
            negatives = self._sample_negatives(rng, background, background, background)
            return SampledTarget(self._gt(target, ignore), self._pack([], negatives), ())

        if len(object_ids) >= 2 and rng.random() < self.merge_objects_prob:
            chosen = [int(i) for i in rng.choice(object_ids, size=2, replace=False)]
        else:
            chosen = [object_ids[int(rng.integers(len(object_ids)))]]
        object_masks = [labels == i for i in chosen]
        target = np.logical_or.reduce(object_masks)

        positive_regions = [self._positive_region(m, rng) for m in object_masks]
        if len(chosen) == 1:
            n = int(rng.choice(self.pos_counts, p=self.pos_probs))
            positives = _random_pixels(positive_regions[0], n, rng)
        else:
            # One click per merged object, then extra clicks (count drawn like negatives) on
            # randomly chosen parts, truncated to the slot count.
            positives = [_random_pixels(r, 1, rng)[0] for r in positive_regions]
            n_extra = int(rng.choice(self.neg_counts, p=self.neg_probs))
            extra = [
                _random_pixels(positive_regions[int(rng.integers(len(chosen)))], 1, rng)[0]
                for _ in range(n_extra)
            ]
            room = self.max_num_points - len(positives)
            if len(extra) > room:
                keep = rng.choice(len(extra), size=room, replace=False)
                extra = [extra[i] for i in sorted(keep)]
            positives.extend(extra)

        background = ~target & ~ignore
        others = labelled & ~target
        if not others.any():
            others = background  # no other object in the crop: fall back to background
        area = int(target.sum())
        iterations = max(1, math.ceil(self.expand_ratio * math.sqrt(area)))
        dilated = cv2.dilate(target.astype(np.uint8), _KERNEL_3x3, iterations=iterations) > 0
        border = dilated & ~target & ~ignore
        negatives = self._sample_negatives(rng, background, others, border)
        return SampledTarget(
            self._gt(target, ignore), self._pack(positives, negatives), tuple(chosen)
        )

    # ------------------------------------------------------------------------------------------
    def _positive_region(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.positive_erode_prob:
            eroded = cv2.erode(
                mask.astype(np.uint8), _KERNEL_3x3, iterations=self.positive_erode_iters
            ).astype(bool)
            if eroded.sum() > 10:
                return eroded
        return mask

    def _sample_negatives(
        self,
        rng: np.random.Generator,
        background: np.ndarray,
        others: np.ndarray,
        border: np.ndarray,
    ) -> list[tuple[int, int]]:
        m = int(rng.choice(self.neg_counts, p=self.neg_probs))
        regions = (background, others, border)
        flat_cache: dict[int, np.ndarray] = {}
        points: list[tuple[int, int]] = []
        for _ in range(m):
            k = int(rng.choice(3, p=self.negative_strategy_probs))
            if k not in flat_cache:
                flat_cache[k] = np.flatnonzero(regions[k])
            flat = flat_cache[k]
            if flat.size == 0:
                continue
            idx = int(flat[rng.integers(flat.size)])
            points.append(divmod(idx, regions[k].shape[1]))
        return points

    def _gt(self, target: np.ndarray, ignore: np.ndarray) -> np.ndarray:
        gt = target.astype(np.float32)
        gt[ignore] = -1.0
        return gt

    def _pack(
        self, positives: list[tuple[int, int]], negatives: list[tuple[int, int]]
    ) -> np.ndarray:
        n = self.max_num_points
        points = np.full((2 * n, 3), -1.0, np.float32)
        for offset, group in ((0, positives[:n]), (n, negatives[:n])):
            for j, (r, c) in enumerate(group):
                points[offset + j] = (r, c, self.order)
        return points


def _random_pixels(
    region: np.ndarray, count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``count`` pixels drawn uniformly with replacement from a non-empty bool region."""
    flat = np.flatnonzero(region)
    picks = flat[rng.integers(flat.size, size=count)]
    width = region.shape[1]
    return [(int(p // width), int(p % width)) for p in picks]


def next_points(
    probs: np.ndarray,
    gt: np.ndarray,
    points: np.ndarray,
    step: int,
    rng: np.random.Generator,
    *,
    threshold: float = 0.49,
) -> np.ndarray:
    """Add one click per sample where the prediction is most wrong (training clicker, §7.4).

    For each sample: false negatives are ``gt > 0.5 & probs < threshold``, false positives
    ``gt <= 0.5 & probs > threshold`` (ignore pixels count as background, as in the reference).
    Each error mask is padded by one zero pixel and passed through OpenCV's approximate L2
    distance transform (5x5 mask). The click is positive when the deepest false negative is
    strictly deeper than the deepest false positive; its pixel is drawn uniformly among those
    whose distance exceeds half of the larger maximum. It is written as ``(row, col, step)`` into
    slot ``N - step`` (positive) or ``2N - step`` (negative). Samples without errors get no click.

    Args:
        probs: float array (B, 1, H, W) or (B, H, W), sigmoid probabilities.
        gt: float array of the same shape: 1 object, 0 background, -1 ignore.
        points: float32 (B, 2N, 3); not modified.
        step: 1-based index of the iterative click (1..N).
        rng: NumPy random generator.
        threshold: Probability threshold (0.49).

    Returns:
        float32 (B, 2N, 3), a copy of ``points`` with the new clicks.
    """
    probs = np.asarray(probs, np.float32).reshape(points.shape[0], *np.shape(probs)[-2:])
    gt = np.asarray(gt, np.float32).reshape(probs.shape)
    points = np.array(points, dtype=np.float32, copy=True)
    n = points.shape[1] // 2
    if not 1 <= step <= n:
        raise ValueError(f"step must be in 1..{n}, got {step}")
    for b in range(points.shape[0]):
        obj = gt[b] > 0.5
        fn = obj & (probs[b] < threshold)
        fp = ~obj & (probs[b] > threshold)
        dt_fn = _padded_distance(fn)
        dt_fp = _padded_distance(fp)
        a, c = float(dt_fn.max()), float(dt_fp.max())
        positive = a > c
        dt = dt_fn if positive else dt_fp
        candidates = np.flatnonzero(dt > max(a, c) / 2.0)
        if candidates.size == 0:
            continue
        idx = int(candidates[rng.integers(candidates.size)])
        row, col = divmod(idx, dt.shape[1])
        slot = n - step if positive else 2 * n - step
        points[b, slot] = (row, col, step)
    return points


def _padded_distance(mask: np.ndarray) -> np.ndarray:
    """Approximate L2 distance (cv2 mask 5) of a bool mask to its nearest False pixel or border."""
    padded = np.pad(mask.astype(np.uint8), 1)
    dt = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    return dt[1:-1, 1:-1]
