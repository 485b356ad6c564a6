"""ZoomIn, LimitLongestSide, HorizontalFlip: the inference transforms as forward/inverse pairs.

These reproduce the official RITM test-time transforms (ritm-reference §8.3-8.5), quirks
included, so that predictions match the reference. Images are torch tensors (B, C, H, W); the
previous-mask channel travels with the image as its last channel. Clicks are
:class:`~napari_ritm.inference.clicks.Click` lists in the (row, col) pixels of each transform's
input.

Boxes ("ROIs") are ``(rmin, rmax, cmin, cmax)`` with **inclusive** bounds.

Pipeline order (§8.2): ZoomIn -> LimitLongestSide -> HorizontalFlip forward, then the inverses in
reverse order (the flip inverse averages logits; the sigmoid sits between flip and resize).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from napari_ritm.errors import RitmError
from napari_ritm.inference.clicks import Click

__all__ = [
    "HorizontalFlip",
    "LimitLongestSide",
    "Roi",
    "ZoomIn",
    "ZoomInState",
    "box_iou",
    "clamp_box",
    "clicks_in_roi",
    "expand_box",
    "map_clicks",
    "object_roi",
    "resize_bilinear",
    "resized_hw",
]

Roi = tuple[int, int, int, int]


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with align_corners=True, as every resampling in RITM (§12.7).

    Args:
        x: (B, C, h, w) float tensor.
        size: Output (h_out, w_out).

    Returns:
        (B, C, h_out, w_out) tensor; ``x`` itself when the size does not change.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # align_corners=True at the same size is the identity
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def resized_hw(hw: tuple[int, int], target: int | tuple[int, int]) -> tuple[int, int]:
    """Output size when the longer side of ``hw`` is scaled to ``target``.

    ``(round(h * s), round(w * s))`` with ``s = target / max(h, w)`` and Python's round
    (half to even), as the reference; a tuple target is used as it is.
    """
    if isinstance(target, tuple):
        return int(target[0]), int(target[1])
    h, w = int(hw[0]), int(hw[1])  # Python numbers, so round() is Python's half-to-even
    scale = target / max(h, w)
    return round(h * scale), round(w * scale)


def map_clicks(clicks: Sequence[Click], roi: Roi, out_hw: tuple[int, int]) -> list[Click]:
    """Map clicks into a crop of ``roi`` resized to ``out_hw`` (ZoomIn step 6).

    ``r' = h_out * (r - rmin) / (rmax - rmin + 1)`` and the same for columns, in float64; clicks
    outside the ROI are mapped too (to coordinates outside the crop).
    """
    rmin, rmax, cmin, cmax = roi
    h_out, w_out = out_hw
    return [
        replace(
            c,
            row=h_out * (c.row - rmin) / (rmax - rmin + 1),
            col=w_out * (c.col - cmin) / (cmax - cmin + 1),
        )
        for c in clicks
    ]


def box_iou(a: Roi, b: Roi) -> float:
    """The reference's box IoU: IoU of the row intervals times IoU of the column intervals."""

    def segment_iou(a0: int, a1: int, b0: int, b1: int) -> float:
        inter = max(0, min(a1, b1) - max(a0, b0) + 1)
        union = max(1e-6, max(a1, b1) - min(a0, b0) + 1)
        return inter / union

    return segment_iou(a[0], a[1], b[0], b[1]) * segment_iou(a[2], a[3], b[2], b[3])


def expand_box(box: Roi, ratio: float, min_size: float | None) -> Roi:
    """Grow a box about its centre by ``ratio`` and to at least ``min_size`` per side.

    Ends are rounded with Python's ``round`` (half to even), as the reference; not clamped.
    """
    rmin, rmax, cmin, cmax = (int(v) for v in box)  # Python numbers for Python's round()
    rc, cc = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    h, w = ratio * (rmax - rmin + 1), ratio * (cmax - cmin + 1)
    if min_size is not None:
        h, w = max(h, min_size), max(w, min_size)
    return (
        round(rc - 0.5 * h),
        round(rc + 0.5 * h),
        round(cc - 0.5 * w),
        round(cc + 0.5 * w),
    )


def clamp_box(box: Roi, image_hw: tuple[int, int]) -> Roi:
    """``box`` (inclusive) cut to the image of size ``image_hw``."""
    h, w = image_hw
    return max(box[0], 0), min(box[1], h - 1), max(box[2], 0), min(box[3], w - 1)


def _mask_bbox(mask: np.ndarray) -> Roi | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def object_roi(
    probs: np.ndarray,
    clicks: Sequence[Click],
    *,
    prob_thresh: float = 0.5,
    expansion_ratio: float = 1.4,
    min_crop_size: float | None = 200,
    region: Roi | None = None,
    image_hw: tuple[int, int] | None = None,
) -> Roi | None:
    """ZoomIn's ROI candidate (§8.4 step 2), or None when no pixel exceeds ``prob_thresh``.

    The tight box of ``probs > prob_thresh`` plus the pixels ``(int(row), int(col))`` of the
    positive clicks, expanded by :func:`expand_box` and clamped to the image.

    Args:
        probs: Float probability map of the previous prediction: (H, W) for the whole image, or
            the crop at ``region`` when one is given (the image is 0 outside it).
        clicks: All clicks so far, in image pixels.
        prob_thresh: Strict threshold for the object pixels (0.5 in the reference).
        expansion_ratio: Growth factor of the box about its centre.
        min_crop_size: Minimum side of the expanded box, before clamping.
        region: Box (inclusive) that ``probs`` covers; None means the whole image.
        image_hw: (H, W) of the image; needed when ``region`` is given.

    Returns:
        (rmin, rmax, cmin, cmax), inclusive, or None.
    """
    if region is None:
        h, w = probs.shape
        r0 = c0 = 0
    else:
        if image_hw is None:
            raise ValueError("object_roi needs image_hw together with region")
        h, w = image_hw
        r0, c0 = region[0], region[2]
    box = _mask_bbox(probs > prob_thresh)
    if box is None:
        return None
    rmin, rmax, cmin, cmax = box[0] + r0, box[1] + r0, box[2] + c0, box[3] + c0
    for c in clicks:
        if c.positive:
            r, cc = int(c.row), int(c.col)
            rmin, rmax = min(rmin, r), max(rmax, r)
            cmin, cmax = min(cmin, cc), max(cmax, cc)
    return clamp_box(expand_box((rmin, rmax, cmin, cmax), expansion_ratio, min_crop_size), (h, w))


def clicks_in_roi(clicks: Sequence[Click], roi: Roi) -> bool:
    """True if every positive click lies in the ROI (``>=`` on the max side, as the reference)."""
    rmin, rmax, cmin, cmax = roi
    return all(
        not (c.row < rmin or c.row >= rmax or c.col < cmin or c.col >= cmax)
        for c in clicks
        if c.positive
    )


@dataclass(frozen=True)
class ZoomInState:
    """Snapshot of a ZoomIn's state (for undo): the stored ROI and the previous probabilities.

    Attributes:
        roi: Stored (rmin, rmax, cmin, cmax) inclusive, or None.
        prev_probs: Previous probabilities (float32, treated as read-only) or None: the whole
            (H, W) map, or only its crop at ``prev_region`` (the map is 0 outside it).
        prev_region: Box (inclusive) that ``prev_probs`` covers, or None for the whole image.
    """

    roi: Roi | None = None
    prev_probs: np.ndarray | None = None
    prev_region: Roi | None = None


class ZoomIn:
    """f-BRS-style test-time zoom: crop around the current object and resize it (§8.4).

    Lifecycle: ``reset()`` for a new image; per click, ``forward(image, clicks)`` (or
    ``update_roi`` + ``crop`` + ``map_clicks`` piecewise), run the network, then
    ``inverse(probs)``, which pastes the result back into a full-size map and remembers it as the
    previous probabilities for the next ROI decision.

    With fewer than ``skip_clicks + 1`` clicks, or when the previous prediction is empty, the
    image passes through unchanged. Reference quirk (kept when ``reference_quirks`` is True): a
    stored ROI is not cleared on such a pass-through, so the inverse still squeezes the
    full-image result into the old ROI. With ``reference_quirks=False`` the stored ROI is
    dropped instead and the result stays full size.

    Args:
        target_size: Longer side of the resized crop, or an exact (h, w).
        skip_clicks: Pass through while ``len(clicks) <= skip_clicks``; negative: zoom on the
            whole image when there is no candidate.
        expansion_ratio: Growth of the object box about its centre.
        min_crop_size: Minimum crop side (before clamping to the image).
        recompute_thresh_iou: Recompute the stored ROI when its box IoU with the candidate is
            below this.
        prob_thresh: Threshold on the previous probabilities for the object box (0.5 in the
            reference, unlike the 0.49 used for masks).
        reference_quirks: Reproduce the reference's pass-through quirk (see above).
    """

    def __init__(
        self,
        target_size: int | tuple[int, int] = 400,
        skip_clicks: int = 1,
        expansion_ratio: float = 1.4,
        min_crop_size: int = 200,
        recompute_thresh_iou: float = 0.5,
        prob_thresh: float = 0.5,
        *,
        reference_quirks: bool = True,
    ) -> None:
        if isinstance(target_size, tuple):
            if len(target_size) != 2 or min(target_size) < 2:
                raise RitmError(f"ZoomIn target_size must be (h, w) >= 2, got {target_size}")
        elif target_size < 2:
            raise RitmError(f"ZoomIn target_size must be at least 2, got {target_size}")
        if expansion_ratio <= 0:
            raise RitmError(f"ZoomIn expansion_ratio must be > 0, got {expansion_ratio}")
        self.target_size = target_size
        self.skip_clicks = int(skip_clicks)
        self.expansion_ratio = float(expansion_ratio)
        self.min_crop_size = min_crop_size
        self.recompute_thresh_iou = float(recompute_thresh_iou)
        self.prob_thresh = float(prob_thresh)
        self.reference_quirks = bool(reference_quirks)
        self.roi: Roi | None = None
        self.prev_probs: np.ndarray | None = None
        self.prev_region: Roi | None = None
        self.image_changed = False
        self._image_hw: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return (
            f"ZoomIn(target_size={self.target_size}, skip_clicks={self.skip_clicks}, "
            f"expansion_ratio={self.expansion_ratio}, min_crop_size={self.min_crop_size}, "
            f"recompute_thresh_iou={self.recompute_thresh_iou}, prob_thresh={self.prob_thresh})"
        )

    def params(self) -> dict:
        """Constructor arguments, e.g. to build an identical ZoomIn."""
        return {
            "target_size": self.target_size,
            "skip_clicks": self.skip_clicks,
            "expansion_ratio": self.expansion_ratio,
            "min_crop_size": self.min_crop_size,
            "recompute_thresh_iou": self.recompute_thresh_iou,
            "prob_thresh": self.prob_thresh,
            "reference_quirks": self.reference_quirks,
        }

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the ROI and the previous probabilities (new image or new object)."""
        self.roi = None
        self.prev_probs = None
        self.prev_region = None
        self.image_changed = False

    def get_state(self) -> ZoomInState:
        """The current state; arrays are shared, not copied (they are never modified in place)."""
        return ZoomInState(self.roi, self.prev_probs, self.prev_region)

    def set_state(self, state: ZoomInState) -> None:
        """Restore a state from :meth:`get_state` (or build one, e.g. for teacher forcing)."""
        self.roi = None if state.roi is None else tuple(int(v) for v in state.roi)
        self.prev_probs = state.prev_probs
        self.prev_region = state.prev_region

    # -- forward pieces ------------------------------------------------------------------------
    def update_roi(self, clicks: Sequence[Click], image_hw: tuple[int, int]) -> Roi | None:
        """Decide this click's ROI (§8.4 steps 1-4) and update the stored one.

        Args:
            clicks: All clicks so far, in image pixels.
            image_hw: (H, W) of the full image.

        Returns:
            The ROI to crop, or None to pass the full image through.
        """
        self.image_changed = False
        self._image_hw = tuple(image_hw)
        if len(clicks) <= self.skip_clicks:
            return None
        h, w = image_hw
        candidate = None
        if self.prev_probs is not None:
            candidate = object_roi(
                self.prev_probs,
                clicks,
                prob_thresh=self.prob_thresh,
                expansion_ratio=self.expansion_ratio,
                min_crop_size=self.min_crop_size,
                region=self.prev_region,
                image_hw=(h, w),
            )
        if candidate is None:
            if self.skip_clicks >= 0:
                if not self.reference_quirks:
                    self.roi = None
                return None
            candidate = (0, h - 1, 0, w - 1)
        if (
            self.roi is None
            or not clicks_in_roi(clicks, self.roi)
            or box_iou(candidate, self.roi) < self.recompute_thresh_iou
        ):
            self.roi = candidate
            self.image_changed = True
        return self.roi

    def crop_hw(self, roi: Roi) -> tuple[int, int]:
        """(h, w) of the resized crop for a ROI."""
        return resized_hw((roi[1] - roi[0] + 1, roi[3] - roi[2] + 1), self.target_size)

    def crop(self, x: torch.Tensor, roi: Roi, *, already_cropped: bool = False) -> torch.Tensor:
        """Crop (B, C, H, W) to the ROI and resize it to :meth:`crop_hw` (align_corners=True).

        With ``already_cropped`` the input is the ROI crop itself (the session crops the raw
        image before normalising it).
        """
        if not already_cropped:
            x = x[..., roi[0] : roi[1] + 1, roi[2] : roi[3] + 1]
        return resize_bilinear(x, self.crop_hw(roi))

    def forward(self, x: torch.Tensor, clicks: Sequence[Click]) -> tuple[torch.Tensor, list[Click]]:
        """Zoom the (1, C, H, W) input onto the object; returns the new input and clicks."""
        roi = self.update_roi(clicks, tuple(x.shape[-2:]))
        if roi is None:
            return x, list(clicks)
        out = self.crop(x, roi)
        return out, map_clicks(clicks, roi, tuple(out.shape[-2:]))

    # -- inverse -------------------------------------------------------------------------------
    def inverse_roi(self, probs: torch.Tensor) -> tuple[Roi | None, torch.Tensor]:
        """Resize the network-side probabilities back to the stored ROI (no state change).

        Args:
            probs: (1, 1, h, w) probabilities of the forward output.

        Returns:
            ``(roi, roi_probs)``: roi_probs is (1, 1, rmax-rmin+1, cmax-cmin+1) to paste at roi
            into an all-zero map; ``roi`` None means ``probs`` already is the full-size map.
        """
        if self.roi is None:
            return None, probs
        rmin, rmax, cmin, cmax = self.roi
        return self.roi, resize_bilinear(probs, (rmax - rmin + 1, cmax - cmin + 1))

    def inverse(self, probs: torch.Tensor) -> torch.Tensor:
        """Full-size (1, 1, H, W) probabilities, zero outside the ROI.

        The result is remembered (compactly, as the ROI crop) as the previous probabilities.
        """
        roi, roi_probs = self.inverse_roi(probs)
        self.prev_probs = roi_probs[0, 0].detach().cpu().numpy()
        self.prev_region = roi
        if roi is None:
            return probs
        if self._image_hw is None:
            raise RuntimeError("ZoomIn.inverse called before forward/update_roi")
        h, w = self._image_hw
        full = torch.zeros((1, 1, h, w), dtype=probs.dtype, device=probs.device)
        full[..., roi[0] : roi[1] + 1, roi[2] : roi[3] + 1] = roi_probs
        return full


class LimitLongestSide:
    """Downscale inputs whose longer side exceeds ``max_size`` (§8.5); the inverse upsamples.

    Args:
        max_size: Longest allowed side in pixels (the official demo uses 800).
    """

    def __init__(self, max_size: int) -> None:
        if int(max_size) < 2:
            raise RitmError(f"max_size must be at least 2 pixels, got {max_size}")
        self.max_size = int(max_size)
        self._input_hw: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"LimitLongestSide(max_size={self.max_size})"

    def output_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Size after the transform for an input of size ``hw``."""
        return tuple(hw) if max(hw) <= self.max_size else resized_hw(tuple(hw), self.max_size)

    def forward(self, x: torch.Tensor, clicks: Sequence[Click]) -> tuple[torch.Tensor, list[Click]]:
        """Resize (B, C, H, W) so that max(H, W) <= max_size; clicks scale the same way."""
        hw = tuple(x.shape[-2:])
        self._input_hw = hw
        out_hw = self.output_hw(hw)
        if out_hw == hw:
            return x, list(clicks)
        return resize_bilinear(x, out_hw), map_clicks(clicks, (0, hw[0] - 1, 0, hw[1] - 1), out_hw)

    def inverse(self, probs: torch.Tensor) -> torch.Tensor:
        """Resize (B, 1, h, w) probabilities back to the size seen by the last forward."""
        if self._input_hw is None:
            return probs
        return resize_bilinear(probs, self._input_hw)


class HorizontalFlip:
    """Flip test-time augmentation (§8.3): batch [x, flip(x)], average the logits back."""

    def __repr__(self) -> str:
        return "HorizontalFlip()"

    def forward(
        self, x: torch.Tensor, clicks: Sequence[Click]
    ) -> tuple[torch.Tensor, list[list[Click]]]:
        """(1, C, H, W) -> (2, C, H, W); the flipped clicks get ``col' = W - 1 - col``."""
        w = x.shape[-1]
        flipped = [replace(c, col=w - c.col - 1) for c in clicks]  # reference order
        return torch.cat([x, torch.flip(x, dims=[3])], dim=0), [list(clicks), flipped]

    def inverse(self, logits: torch.Tensor) -> torch.Tensor:
        """(2k, 1, H, W) logits -> (k, 1, H, W): ``0.5 * (l0 + flip(l1))``, in logit space."""
        k = logits.shape[0] // 2
        return 0.5 * (logits[:k] + torch.flip(logits[k:], dims=[3]))
