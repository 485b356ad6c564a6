"""Click, the evaluation clicker (next click from errors), and IoU with ignore labels.

The clicker reproduces the official RITM evaluation rule exactly (ritm-reference §9.2,
conformance README 3e), so NoC numbers are comparable with the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from napari_ritm.errors import ImageFormatError

__all__ = ["IGNORE_LABEL", "Click", "error_masks", "iou", "next_click"]

#: Ground-truth value of pixels that count neither as object nor as background.
IGNORE_LABEL = -1


@dataclass(frozen=True)
class Click:
    """One user click in image pixel coordinates.

    Attributes:
        row: Row (y) coordinate in image pixels; may be fractional.
        col: Column (x) coordinate in image pixels; may be fractional.
        positive: True for a foreground ("add") click, False for a background one.
    """

    row: float
    col: float
    positive: bool = True

    @property
    def pixel(self) -> tuple[int, int]:
        """The integer (row, col) of the pixel the click falls on (nearest pixel centre)."""
        return int(np.floor(self.row + 0.5)), int(np.floor(self.col + 0.5))


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim != 2 or pred.ndim != 2:
        raise ImageFormatError(
            f"gt and prediction must be 2D (H, W) arrays, got shapes {gt.shape} and {pred.shape}; "
            "pass one 2D slice at a time"
        )
    if gt.shape != pred.shape:
        raise ImageFormatError(
            f"gt shape {gt.shape} differs from prediction shape {pred.shape}; "
            "they must cover the same pixels"
        )
    if gt.size == 0:
        raise ImageFormatError("gt and prediction are empty; pass a non-empty 2D mask")
    if pred.dtype.kind == "f":
        raise ImageFormatError(
            "the prediction must be a boolean mask, got float values; threshold the "
            "probabilities first, e.g. probs > 0.49"
        )
    if pred.dtype != bool:
        pred = pred != 0
    return gt, pred


def error_masks(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-negative and false-positive masks, ignoring pixels where gt == -1.

    Args:
        gt: (H, W) int ground truth: 1 object, 0 background, -1 ignore (bool is accepted).
        pred: (H, W) bool prediction (integer masks: nonzero = object).

    Returns:
        (fn, fp): two (H, W) bool arrays. fn = object & ~pred, fp = ~object & pred, both False
        wherever gt == -1.

    Raises:
        ImageFormatError: if the arrays are not 2D, their shapes differ, or the prediction
            is float (probabilities instead of a mask).
    """
    gt, pred = _check_pair(gt, pred)
    valid = gt != IGNORE_LABEL
    obj = gt == 1
    fn = obj & ~pred & valid
    fp = ~obj & pred & valid
    return fn, fp


def _padded_edt(mask: np.ndarray) -> np.ndarray:
    # 1-px zero border so that the image border counts as region boundary; exact (precise) L2
    # distance in float32 as cv2 computes it in the reference, then crop the border off.
    padded = np.pad(mask.astype(np.uint8), 1, mode="constant")
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]


def next_click(gt: np.ndarray, pred: np.ndarray, clicks: Sequence[Click] = ()) -> Click:
    """The official RITM evaluation clicker: the next click that fixes the largest error.

    Rule (ritm-reference §9.2): exact Euclidean distance transforms of the FN and FP masks, each
    zero-padded by one pixel, are multiplied by a "not yet clicked" map (0 at every pixel that
    already has a click, whatever its sign). The click is positive iff max(FN dist) > max(FP dist)
    (ties, including 0 == 0, give a negative click) and lies on the first pixel in row-major order
    that reaches the chosen maximum.

    Args:
        gt: (H, W) int ground truth: 1 object, 0 background, -1 ignore (bool is accepted).
        pred: (H, W) bool current prediction (all False before the first click).
        clicks: Clicks already made on this object, in image pixel (row, col); each marks its
            nearest pixel as clicked. Clicks outside the image are ignored here.

    Returns:
        The next Click, at integer (row, col).

    Raises:
        ImageFormatError: if the arrays are not 2D, their shapes differ, or the prediction
            is float (probabilities instead of a mask).
    """
    fn, fp = error_masks(gt, pred)
    h, w = fn.shape
    fn_dist = _padded_edt(fn)
    fp_dist = _padded_edt(fp)
    not_clicked = np.ones((h, w), dtype=np.float32)
    for click in clicks:
        r, c = click.pixel
        if 0 <= r < h and 0 <= c < w:
            not_clicked[r, c] = 0.0
    fn_dist *= not_clicked
    fp_dist *= not_clicked
    fn_max = fn_dist.max()
    fp_max = fp_dist.max()
    positive = bool(fn_max > fp_max)  # strict: ties go negative, as in the reference
    dist, best = (fn_dist, fn_max) if positive else (fp_dist, fp_max)
    # argmax over a flattened C-order array = first row-major pixel reaching the maximum
    flat = int(np.argmax(dist == best))
    row, col = divmod(flat, w)
    return Click(row=int(row), col=int(col), positive=positive)


def iou(gt: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of a mask with the object, ignoring gt == -1 pixels.

    IoU = |mask & obj & valid| / |(mask | obj) & valid| with obj = (gt == 1), valid = (gt != -1),
    as in the official evaluation (ritm-reference §9.3).

    Args:
        gt: (H, W) int ground truth: 1 object, 0 background, -1 ignore (bool is accepted).
        mask: (H, W) bool predicted mask (integer masks: nonzero = object).

    Returns:
        IoU in [0, 1]. When both the object and the mask are empty on valid pixels the official
        code gives NaN (0/0); this returns 1.0 instead (the prediction is exactly right).

    Raises:
        ImageFormatError: if the arrays are not 2D, their shapes differ, or the prediction
            is float (probabilities instead of a mask).
    """
    gt, mask = _check_pair(gt, mask)
    valid = gt != IGNORE_LABEL
    obj = gt == 1
    inter = np.count_nonzero(mask & obj & valid)
    union = np.count_nonzero((mask | obj) & valid)
    if union == 0:
        return 1.0
    return float(inter) / float(union)
