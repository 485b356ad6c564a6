"""One prediction step of the session: network input, transforms, network, inverse transforms.

:class:`PredictionSteps` is the part of :class:`~napari_ritm.inference.session.ClickSession`
that turns (clicks, previous state) into a new state, following the RITM NoBRS predictor
(ritm-reference §8.2); the session adds the image, the history and the public API on top. Kept
apart so that each module stays readable; it is not meant to be used on its own.

Memory: only the region fed to the network is normalised (cached while it stays the same);
the previous mask is cut from the stored ROI probabilities; results are stored as (ROI,
probabilities inside it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from napari_ritm.inference.clicks import Click
from napari_ritm.inference.first_window import (
    ObjectZoom,
    magnified_window,
    search_first_window,
)
from napari_ritm.inference.preprocess import Normalization, normalize_planes
from napari_ritm.inference.presets import Preset
from napari_ritm.inference.transforms import (
    HorizontalFlip,
    LimitLongestSide,
    Roi,
    ZoomIn,
    ZoomInState,
    map_clicks,
)

__all__ = ["PredictionSteps", "State", "StepResult", "build_points"]

logger = logging.getLogger("napari_ritm.inference.session")


def build_points(click_lists: Sequence[Sequence[Click]]) -> torch.Tensor:
    """The network's ``points`` tensor for a batch of click lists (ritm-reference §2.1, §8.2).

    Args:
        click_lists: One click list per batch item, in network-input pixels (fractional allowed);
            every list has the same clicks in the same time order.

    Returns:
        (B, 2N, 3) float32: per item N positive rows then N negative rows, each
        ``(row, col, index)`` with index = the click's position in its list; unused rows are
        (-1, -1, -1). N = max(#pos, #neg, 1) over the batch.
    """
    n = 1
    for clicks in click_lists:
        n_pos = sum(1 for c in clicks if c.positive)
        n = max(n, n_pos, len(clicks) - n_pos)
    pad = [(-1.0, -1.0, -1.0)]
    rows = []
    for clicks in click_lists:
        pos = [(c.row, c.col, float(i)) for i, c in enumerate(clicks) if c.positive]
        neg = [(c.row, c.col, float(i)) for i, c in enumerate(clicks) if not c.positive]
        rows.append(pos + pad * (n - len(pos)) + neg + pad * (n - len(neg)))
    return torch.tensor(rows, dtype=torch.float32)


@dataclass(frozen=True)
class State:
    """One entry of the history: the object after some clicks, stored compactly.

    ``region_probs`` are the probabilities inside ``region`` (inclusive box; None = the whole
    image); the map is 0 elsewhere. ``region_probs`` None means all zeros.
    """

    click: Click | None
    region: Roi | None
    region_probs: np.ndarray | None
    zoom_roi: Roi | None


@dataclass(frozen=True)
class StepResult:
    """Result of one prediction (:meth:`ClickSession.predict_step`).

    Attributes:
        probs: (H, W) float32 probabilities in [0, 1] of the full image (read-only).
        region: Box (rmin, rmax, cmin, cmax), inclusive, outside which ``probs`` is 0; None
            when the whole image was predicted.
        zoom_roi: ZoomIn's stored ROI after this step (None: none stored / zoom off).
        zoom_changed: True when ZoomIn (re)computed its ROI at this step.
        net_input_hw: (h, w) of the tensor fed to the network.
        points: (B, 2N, 3) float32 points fed to the network (B = 2 with flip).
    """

    probs: np.ndarray
    region: Roi | None
    zoom_roi: Roi | None
    zoom_changed: bool
    net_input_hw: tuple[int, int]
    points: np.ndarray


def readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class PredictionSteps:
    """The prediction machinery of :class:`~napari_ritm.inference.session.ClickSession`.

    The session sets the attributes below; the methods read them and return new
    :class:`State` objects without changing the session's history.
    """

    window: int | None
    zoom: ZoomIn | None
    flip: HorizontalFlip | None
    limit: LimitLongestSide | None
    _preset: Preset
    _net: torch.nn.Module
    _device: torch.device
    _with_prev_mask: bool
    _image: np.ndarray | None
    _norm: Normalization | None
    _hw: tuple[int, int]
    _full_planes: np.ndarray | None
    _crop_cache: tuple[Roi, np.ndarray] | None

    def _window_box(self, click: Click) -> Roi | None:
        """The ``window`` x ``window`` box around ``click`` (clamped to the image), or None when
        the image fits the window."""
        h, w = self._hw
        if self.window is None or (h <= self.window and w <= self.window):
            return None
        sh, sw = min(self.window, h), min(self.window, w)
        r0 = min(max(round(click.row) - sh // 2, 0), h - sh)
        c0 = min(max(round(click.col) - sw // 2, 0), w - sw)
        return r0, r0 + sh - 1, c0, c0 + sw - 1

    def _cap_roi(self, roi: Roi, click: Click) -> Roi:
        """Shrink a ZoomIn ROI of a large image to at most ``window`` per side, around the click
        (kept inside the ROI); unchanged when it fits or the image fits the window."""
        box = self._window_box(click)
        if box is None:
            return roi
        out = list(roi)
        for lo, center in ((0, click.row), (2, click.col)):
            a, b = roi[lo], roi[lo + 1]
            if b - a + 1 > self.window:
                start = min(max(round(center) - self.window // 2, a), b - self.window + 1)
                out[lo], out[lo + 1] = start, start + self.window - 1
        return tuple(out)

    def _full_probs(self, state: State) -> np.ndarray:
        if state.region is None and state.region_probs is not None:
            return state.region_probs  # already a full, read-only map
        full = np.zeros(self._hw, dtype=np.float32)
        if state.region_probs is not None:
            r0, r1, c0, c1 = state.region
            full[r0 : r1 + 1, c0 : c1 + 1] = state.region_probs
        return readonly(full)

    def _prev_crop(self, state: State, box: Roi) -> np.ndarray:
        """The previous probabilities inside ``box`` (bounded by the box, not the image)."""
        r0, r1, c0, c1 = box
        if state.region_probs is None:
            return np.zeros((r1 - r0 + 1, c1 - c0 + 1), dtype=np.float32)
        if state.region is None:
            return state.region_probs[r0 : r1 + 1, c0 : c1 + 1]
        s0, s1, t0, t1 = state.region
        if (s0, s1, t0, t1) == box:
            return state.region_probs
        out = np.zeros((r1 - r0 + 1, c1 - c0 + 1), dtype=np.float32)
        a0, a1, b0, b1 = max(r0, s0), min(r1, s1), max(c0, t0), min(c1, t1)
        if a0 <= a1 and b0 <= b1:
            out[a0 - r0 : a1 - r0 + 1, b0 - c0 : b1 - c0 + 1] = state.region_probs[
                a0 - s0 : a1 - s0 + 1, b0 - t0 : b1 - t0 + 1
            ]
        return out

    def _planes(self, box: Roi) -> np.ndarray:
        """(1 or 3, h, w) float32 normalised image planes of the box (gray is not replicated).

        Only the box is normalised, unless the whole image is needed: then the whole image is
        converted once and cached for every later click. The last crop is cached too (the zoom
        ROI often stays the same between clicks).
        """
        h, w = self._hw
        r0, r1, c0, c1 = box
        if self._full_planes is None and box == (0, h - 1, 0, w - 1):
            self._full_planes = normalize_planes(self._image, self._norm)
        if self._full_planes is not None:
            return self._full_planes[:, r0 : r1 + 1, c0 : c1 + 1]
        if self._crop_cache is not None and self._crop_cache[0] == box:
            return self._crop_cache[1]
        crop = normalize_planes(self._image, self._norm, slice(r0, r1 + 1), slice(c0, c1 + 1))
        self._crop_cache = (box, crop)
        return crop

    def _net_input(self, prev: State, box: Roi) -> torch.Tensor:
        """(1, 3 [+1], h, w) float32 network input of the box: RGB in [0, 1] (+ prev mask)."""
        r0, r1, c0, c1 = box
        n_ch = 4 if self._with_prev_mask else 3
        # one allocation; gray planes broadcast to R, G, B
        x = np.empty((1, n_ch, r1 - r0 + 1, c1 - c0 + 1), dtype=np.float32)
        x[0, :3] = self._planes(box)
        if self._with_prev_mask:
            x[0, 3] = self._prev_crop(prev, box)
        return torch.from_numpy(x).to(self._device)

    def _step(
        self,
        clicks: Sequence[Click],
        prev: State,
        click: Click | None,
        info: dict[str, Any] | None = None,
    ) -> State:
        """One prediction: returns the new state; ``self`` is not modified."""
        h, w = self._hw
        roi = None
        zoom_changed = False
        if self.zoom is not None:
            self.zoom.set_state(ZoomInState(prev.zoom_roi, prev.region_probs, prev.region))
            roi = self.zoom.update_roi(clicks, (h, w))
            zoom_changed = self.zoom.image_changed
            if roi is not None:
                capped = self._cap_roi(roi, clicks[-1])
                if capped != roi:
                    self.zoom.roi = roi = capped
            elif self._preset.first_window:
                return self._first_window_step(clicks, prev, click, info)
        # large image, no zoom ROI: a window around the latest click replaces the whole image
        window = self._window_box(clicks[-1]) if roi is None else None
        region, out, net_hw, points = self._predict(clicks, prev, roi, window)
        if info is not None:
            info.update(zoom_changed=zoom_changed, net_input_hw=net_hw, points=points.numpy())
        zoom_roi = self.zoom.roi if self.zoom is not None else None
        return State(click, region, out, zoom_roi)

    def _first_window_step(
        self,
        clicks: Sequence[Click],
        prev: State,
        click: Click | None,
        info: dict[str, Any] | None,
    ) -> State:
        """Interactive preset, ZoomIn without a ROI: zoom on a window sized for the object
        under the latest positive click (:mod:`~napari_ritm.inference.first_window`)."""
        seed_click = next((c for c in reversed(clicks) if c.positive), clicks[-1])
        seed = (seed_click.row, seed_click.col)
        target = self.zoom.target_size
        start = max(target) if isinstance(target, tuple) else int(target)
        zoom = ObjectZoom(
            self.zoom.prob_thresh, self.zoom.min_crop_size or 200, self.zoom.expansion_ratio
        )
        if max(self._hw) <= start:
            # the whole image costs no more than a zoomed pass: run it at its own scale, as the
            # reference's first click (a start window would magnify a small image instead)
            self.zoom.roi = None
            result = self._predict(clicks, prev, None, None)
            roi = (0, self._hw[0] - 1, 0, self._hw[1] - 1)
        else:
            last: list[tuple[Roi | None, np.ndarray, tuple[int, int], torch.Tensor]] = []

            def predict(roi: Roi) -> np.ndarray:
                self.zoom.roi = roi
                last[:] = [self._predict(clicks, prev, roi, None)]
                return last[0][1]

            roi, passes = search_first_window(
                predict,
                seed,
                self._hw,
                start_size=start,
                zoom=zoom,
                cap=lambda r: self._cap_roi(r, seed_click),
            )
            result = last[0]
            logger.debug("first-click window %s after %d pass(es)", roi, passes)
        # a small object is predicted again on the view ZoomIn would give click 2 (magnified)
        box = magnified_window(roi, result[1], seed, self._hw, target_size=start, zoom=zoom)
        if box is not None:
            self.zoom.roi = box
            result = self._predict(clicks, prev, box, None)
            logger.debug("first-click object small: magnified pass on %s", box)
        region, out, net_hw, points = result
        if info is not None:
            zoomed = region is not None
            info.update(zoom_changed=zoomed, net_input_hw=net_hw, points=points.numpy())
        # no stored ROI: from the next click on, ZoomIn decides exactly as in the reference
        return State(click, region, out, None)

    def _predict(
        self,
        clicks: Sequence[Click],
        prev: State,
        roi: Roi | None,
        window: Roi | None,
    ) -> tuple[Roi | None, np.ndarray, tuple[int, int], torch.Tensor]:
        """Run the network on the zoom ``roi`` (``self.zoom.roi`` == roi), else the large-image
        ``window``, else the whole image (ritm-reference §8.2 steps 1-4).

        Returns:
            ``(region, probs inside region (read-only), network input (h, w), points)``;
            region None means the whole image.
        """
        h, w = self._hw
        if roi is not None:
            box = roi
        elif window is not None:
            box = window
        else:
            box = (0, h - 1, 0, w - 1)
        x = self._net_input(prev, box)
        net_clicks = list(clicks)
        if roi is not None:
            x = self.zoom.crop(x, roi, already_cropped=True)
            net_clicks = map_clicks(net_clicks, roi, tuple(x.shape[-2:]))
        elif window is not None:
            net_clicks = [replace(c, row=c.row - box[0], col=c.col - box[2]) for c in net_clicks]
        if self.limit is not None:
            x, net_clicks = self.limit.forward(x, net_clicks)
        net_hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.flip is not None:
            x, click_lists = self.flip.forward(x, net_clicks)
        else:
            click_lists = [net_clicks]
        points = build_points(click_lists)
        with torch.inference_mode():
            logits = self._net(x, points.to(self._device))["instances"]
            if self.flip is not None:
                logits = self.flip.inverse(logits)
            probs = torch.sigmoid(logits)
            if self.limit is not None:
                probs = self.limit.inverse(probs)
            region = None
            if window is not None:
                region = window  # 0 outside the window, like a ZoomIn ROI
            elif self.zoom is not None:
                region, probs = self.zoom.inverse_roi(probs)
            out = probs[0, 0].to("cpu", torch.float32).numpy()
        return region, readonly(np.ascontiguousarray(out)), net_hw, points
