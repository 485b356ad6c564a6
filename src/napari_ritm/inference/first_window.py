"""The interactive preset's first zoom-in window: sized for the object under the click.

The reference predictor runs the first click on the whole image, at the image's own scale, and
zooms in from click 2 on a window around the predicted object (ritm-reference §8.4: its box
grown 1.4x, at least 200 px, resized to 400 px). Zooming from click 1 on the whole image instead
(ZoomIn with ``skip_clicks=-1``) squeezes a large image into 400 px and loses small objects;
zooming on ZoomIn's minimum crop (200 px, magnified 2x) loses objects of 100-200 px (measured on
EM: first-click IoU 0.1-0.5 instead of 0.7-0.85). Here the first window reproduces the reference's
first click locally and grows only when the object needs it:

1. window = ``start_size`` x ``start_size`` (ZoomIn's target, 400 px) around the click, clamped
   to the image: the network sees the image at scale 1, as in the reference's first click, with
   200 px of context on each side of the click;
2. one ordinary zoomed prediction (crop, resize to ZoomIn's target: the identity here, flip TTA);
3. the object = the connected component of ``probs > 0.5`` under the click; if it touches a
   window side that is not an image side, the window becomes ZoomIn's box for that object
   (grown 1.4x, at least ``min_size``) extended by ``growth`` times the object's extent on the
   truncated sides, and step 2 runs again (now downscaled to 400 px), at most ``max_passes``
   passes in all.

(The session runs an image that fits the start window whole, at its own scale, instead: that
is the reference's first click and costs no more than one pass.) Every pass costs what a
following click costs (the network input is ZoomIn's target), so the
first click is bounded by ``max_passes`` following clicks whatever the image size, and objects
up to ~300 px (nuclei, cells, organelles at usual magnifications) take one pass. The window is
derived from the model's own prediction, so it needs no image-type-specific heuristics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from napari_ritm.inference.transforms import Roi, expand_box

__all__ = ["grow_window", "initial_window", "search_first_window"]

#: Passes at most for the first click (1 for objects inside the minimum window).
MAX_PASSES = 3


def initial_window(center: tuple[float, float], image_hw: tuple[int, int], size: int) -> Roi:
    """A ``size`` x ``size`` box centred on ``center`` (row, col), shifted inside the image.

    Args:
        center: (row, col) in image pixels.
        image_hw: (H, W) of the image.
        size: Side of the box; sides longer than the image are cut to the image.

    Returns:
        (rmin, rmax, cmin, cmax), inclusive.
    """
    h, w = image_hw
    sh, sw = min(int(size), h), min(int(size), w)
    r0 = min(max(round(float(center[0])) - sh // 2, 0), h - sh)
    c0 = min(max(round(float(center[1])) - sw // 2, 0), w - sw)
    return r0, r0 + sh - 1, c0, c0 + sw - 1


def grow_window(
    roi: Roi,
    roi_probs: np.ndarray,
    seed: tuple[float, float],
    image_hw: tuple[int, int],
    *,
    prob_thresh: float = 0.5,
    min_size: float = 200,
    expansion_ratio: float = 1.4,
    growth: float = 1.25,
) -> Roi | None:
    """The next first-click window, or None when the object fits ``roi`` (or is empty).

    Args:
        roi: The window just predicted, inclusive, in image pixels.
        roi_probs: (rmax-rmin+1, cmax-cmin+1) probabilities inside ``roi``.
        seed: (row, col) of the click whose object is followed, in image pixels.
        image_hw: (H, W) of the image.
        prob_thresh: Object pixels are ``roi_probs > prob_thresh`` (ZoomIn's 0.5).
        min_size: Minimum side of the window (ZoomIn's ``min_crop_size``).
        expansion_ratio: Growth of the object box about its centre (ZoomIn's 1.4).
        growth: Extension beyond each truncated side, in units of the object's extent.

    Returns:
        (rmin, rmax, cmin, cmax), inclusive and inside the image, strictly beyond ``roi`` on at
        least one truncated side; None when no side of the object is truncated by the window,
        or no object lies under the seed.
    """
    h, w = image_hw
    mask = roi_probs > prob_thresh
    r = min(max(int(seed[0]) - roi[0], 0), mask.shape[0] - 1)
    c = min(max(int(seed[1]) - roi[2], 0), mask.shape[1] - 1)
    if not mask[r, c]:
        return None
    labels, n = ndimage.label(mask)
    rows, cols = ndimage.find_objects(labels, n)[labels[r, c] - 1]
    b0, b1 = rows.start + roi[0], rows.stop - 1 + roi[0]
    d0, d1 = cols.start + roi[2], cols.stop - 1 + roi[2]
    cut = (
        b0 == roi[0] and roi[0] > 0,
        b1 == roi[1] and roi[1] < h - 1,
        d0 == roi[2] and roi[2] > 0,
        d1 == roi[3] and roi[3] < w - 1,
    )
    if not any(cut):
        return None
    out = list(expand_box((b0, b1, d0, d1), expansion_ratio, min_size))
    ext_r, ext_c = growth * (b1 - b0 + 1), growth * (d1 - d0 + 1)
    if cut[0]:
        out[0] = min(out[0], round(b0 - ext_r))
    if cut[1]:
        out[1] = max(out[1], round(b1 + ext_r))
    if cut[2]:
        out[2] = min(out[2], round(d0 - ext_c))
    if cut[3]:
        out[3] = max(out[3], round(d1 + ext_c))
    grown = (max(out[0], 0), min(out[1], h - 1), max(out[2], 0), min(out[3], w - 1))
    beyond = (grown[0] < roi[0], grown[1] > roi[1], grown[2] < roi[2], grown[3] > roi[3])
    if not any(c and b for c, b in zip(cut, beyond, strict=True)):
        return None
    return grown


def search_first_window(
    predict: Callable[[Roi], np.ndarray],
    seed: tuple[float, float],
    image_hw: tuple[int, int],
    *,
    start_size: int = 400,
    min_size: float = 200,
    cap: Callable[[Roi], Roi] = lambda roi: roi,
    max_passes: int = MAX_PASSES,
    prob_thresh: float = 0.5,
    expansion_ratio: float = 1.4,
) -> tuple[Roi, int]:
    """Run the first-click window search (module docstring).

    Args:
        predict: Runs one zoomed prediction on a window and returns its probabilities inside
            the window; the caller keeps the last result.
        seed: (row, col) of the click.
        image_hw: (H, W) of the image.
        start_size: Side of the first window (ZoomIn's target size: scale 1).
        min_size: Minimum side of a grown window (ZoomIn's ``min_crop_size``).
        cap: Bounds a window (e.g. the session's large-image ``window``).
        max_passes: Predictions at most.
        prob_thresh, expansion_ratio: As ZoomIn's.

    Returns:
        ``(roi, passes)``: the window of the last prediction and how many ran.
    """
    roi = cap(initial_window(seed, image_hw, start_size))
    passes = 0
    while True:
        probs = predict(roi)
        passes += 1
        if passes >= max_passes:
            return roi, passes
        grown = grow_window(
            roi,
            probs,
            seed,
            image_hw,
            prob_thresh=prob_thresh,
            min_size=min_size,
            expansion_ratio=expansion_ratio,
        )
        if grown is None:
            return roi, passes
        grown = cap(grown)
        if grown == roi:
            return roi, passes
        roi = grown
