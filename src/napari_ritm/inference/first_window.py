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
   passes in all;
4. small objects: if the object under the click spans fewer than :data:`SMALL_OBJECT_PX`
   pixels, one more pass runs on ZoomIn's box for it (grown 1.4x, at least ``min_size``: a 200
   px box shown at 400 px, 2x), without the first pass's mask, and its result is kept
   (:func:`magnified_window`). This is the view ZoomIn gives click 2 anyway; giving it to click
   1 fixes what a scale-1 pass does to objects near the low end of the trained scales: tiny
   cells merged with their neighbours (whole cells of ~10 px: a first mask 6x the cell's area;
   held-out mIoU@1 0.25 -> 0.56, NoC@90 12.8 -> 9.8 with this pass) and small H&E nuclei
   (mIoU@1 0.67 -> 0.70); larger objects lose from it (nuclei of ~90 px: 0.88 -> 0.80, EM
   organelles, natural images 0.36 -> 0.20), hence the bound (per-object measurements in
   docs/performance.md).

(The session runs an image that fits the start window whole, at its own scale, instead of
steps 1-3: that is the reference's first click and costs no more than one pass; step 4 applies
to it too.) Every pass costs what a following click costs (the network input is ZoomIn's
target), so the first click is bounded by ``max_passes`` + 1 following clicks whatever the image
size; objects of 64 px to ~300 px take one pass, smaller ones two. The windows are derived from
the model's own prediction, so they need no image-type-specific heuristics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_ritm.inference.transforms import Roi, clamp_box, expand_box

__all__ = [
    "SMALL_OBJECT_PX",
    "ObjectZoom",
    "grow_window",
    "initial_window",
    "magnified_window",
    "object_box",
    "search_first_window",
]

#: Passes at most of the window search (1 for objects inside the start window).
MAX_PASSES = 3
#: Objects whose box is shorter than this on both sides (image pixels) after the scale-1 pass
#: get one magnified pass (step 4 of the module docstring). Chosen from per-object first-click
#: IoU by the first pass's object extent (docs/performance.md): below 64 px the magnified
#: pass won on whole cells, H&E and GOWT1 nuclei (52 objects better by > 0.02, 11 worse); at
#: 64-100 px it lost on NIH3T3 nuclei, EM and natural images.
SMALL_OBJECT_PX = 64


@dataclass(frozen=True)
class ObjectZoom:
    """How ZoomIn turns a predicted object into a window (ritm-reference §8.4); the session
    passes its ZoomIn's values.

    Attributes:
        prob_thresh: Object pixels are ``probs > prob_thresh`` (0.5).
        min_size: Minimum side of a window (``min_crop_size``, 200).
        expansion_ratio: Growth of the object's box about its centre (1.4).
    """

    prob_thresh: float = 0.5
    min_size: float = 200
    expansion_ratio: float = 1.4

    def window(self, box: Roi) -> Roi:
        """ZoomIn's window for an object ``box`` (not clamped to the image)."""
        return expand_box(box, self.expansion_ratio, self.min_size)


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


def object_box(
    roi: Roi, roi_probs: np.ndarray, seed: tuple[float, float], prob_thresh: float = 0.5
) -> Roi | None:
    """Box (image pixels, inclusive) of the connected component of ``roi_probs > prob_thresh``
    under ``seed``, or None when the seed pixel is not in the object."""
    mask = roi_probs > prob_thresh
    r = min(max(int(seed[0]) - roi[0], 0), mask.shape[0] - 1)
    c = min(max(int(seed[1]) - roi[2], 0), mask.shape[1] - 1)
    if not mask[r, c]:
        return None
    labels, n = ndimage.label(mask)
    rows, cols = ndimage.find_objects(labels, n)[labels[r, c] - 1]
    return (
        rows.start + roi[0],
        rows.stop - 1 + roi[0],
        cols.start + roi[2],
        cols.stop - 1 + roi[2],
    )


def magnified_window(
    roi: Roi,
    roi_probs: np.ndarray,
    seed: tuple[float, float],
    image_hw: tuple[int, int],
    *,
    small_px: int = SMALL_OBJECT_PX,
    target_size: int = 400,
    zoom: ObjectZoom = ObjectZoom(),
) -> Roi | None:
    """ZoomIn's box for a small object under ``seed`` (step 4), or None.

    Args:
        roi: The window just predicted (at scale 1: the start window or the whole image),
            inclusive, in image pixels.
        roi_probs: Probabilities inside ``roi``.
        seed: (row, col) of the click, in image pixels.
        image_hw: (H, W) of the image.
        small_px: Objects at least this long on a side are left as predicted.
        target_size: ZoomIn's network input side: a box shorter than it is magnified.
        zoom: ZoomIn's object threshold and window rule.

    Returns:
        ZoomIn's window for the object, clamped to the image; None when no object lies under
        the seed, it is not small, or the box would not be magnified (not shorter than
        ``target_size``: a ZoomIn whose minimum crop is the network input or larger).
    """
    box = object_box(roi, roi_probs, seed, zoom.prob_thresh)
    if box is None or max(box[1] - box[0], box[3] - box[2]) + 1 >= small_px:
        return None
    out = clamp_box(zoom.window(box), image_hw)
    if max(out[1] - out[0], out[3] - out[2]) + 1 >= target_size:
        return None
    return out


def grow_window(
    roi: Roi,
    roi_probs: np.ndarray,
    seed: tuple[float, float],
    image_hw: tuple[int, int],
    *,
    zoom: ObjectZoom = ObjectZoom(),
    growth: float = 1.25,
) -> Roi | None:
    """The next first-click window, or None when the object fits ``roi`` (or is empty).

    Args:
        roi: The window just predicted, inclusive, in image pixels.
        roi_probs: (rmax-rmin+1, cmax-cmin+1) probabilities inside ``roi``.
        seed: (row, col) of the click whose object is followed, in image pixels.
        image_hw: (H, W) of the image.
        zoom: ZoomIn's object threshold and window rule.
        growth: Extension beyond each truncated side, in units of the object's extent.

    Returns:
        (rmin, rmax, cmin, cmax), inclusive and inside the image, strictly beyond ``roi`` on at
        least one truncated side; None when no side of the object is truncated by the window,
        or no object lies under the seed.
    """
    h, w = image_hw
    box = object_box(roi, roi_probs, seed, zoom.prob_thresh)
    if box is None:
        return None
    b0, b1, d0, d1 = box
    cut = (
        b0 == roi[0] and roi[0] > 0,
        b1 == roi[1] and roi[1] < h - 1,
        d0 == roi[2] and roi[2] > 0,
        d1 == roi[3] and roi[3] < w - 1,
    )
    if not any(cut):
        return None
    out = list(zoom.window((b0, b1, d0, d1)))
    ext_r, ext_c = growth * (b1 - b0 + 1), growth * (d1 - d0 + 1)
    if cut[0]:
        out[0] = min(out[0], round(b0 - ext_r))
    if cut[1]:
        out[1] = max(out[1], round(b1 + ext_r))
    if cut[2]:
        out[2] = min(out[2], round(d0 - ext_c))
    if cut[3]:
        out[3] = max(out[3], round(d1 + ext_c))
    grown = clamp_box(tuple(out), image_hw)
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
    zoom: ObjectZoom = ObjectZoom(),
    cap: Callable[[Roi], Roi] = lambda roi: roi,
    max_passes: int = MAX_PASSES,
) -> tuple[Roi, int]:
    """Run the first-click window search (module docstring).

    Args:
        predict: Runs one zoomed prediction on a window and returns its probabilities inside
            the window; the caller keeps the last result.
        seed: (row, col) of the click.
        image_hw: (H, W) of the image.
        start_size: Side of the first window (ZoomIn's target size: scale 1).
        zoom: ZoomIn's object threshold and window rule (grown windows).
        cap: Bounds a window (e.g. the session's large-image ``window``).
        max_passes: Predictions at most.

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
        grown = grow_window(roi, probs, seed, image_hw, zoom=zoom)
        if grown is None:
            return roi, passes
        grown = cap(grown)
        if grown == roi:
            return roi, passes
        roi = grown
