"""Classical click baseline (OpenCV GrabCut) behind the same predictor protocol as ClickSession.

It gives evaluation a reference row that needs no network: ``napari-ritm evaluate --baseline``
reports it next to the model.
"""

from __future__ import annotations

import logging

import numpy as np

from napari_ritm.errors import ImageFormatError
from napari_ritm.inference.clicks import Click

__all__ = ["GrabCutBaseline"]

log = logging.getLogger(__name__)


class GrabCutBaseline:
    """GrabCut seeded by clicks; an :class:`~napari_ritm.evaluation.evaluator.InteractivePredictor`.

    Lifecycle: ``set_image`` (converts the image once to 8-bit RGB through
    :func:`napari_ritm.inference.preprocess.prepare_image`, so gray, uint16 and multichannel images
    work) -> ``add_click`` any number of times (each call re-runs GrabCut with all clicks) ->
    ``reset`` (same image, no clicks) or ``set_image`` again.

    Per click: GrabCut runs on a region of interest around the positive clicks and the previous
    mask (their bounding box grown by ``roi_scale``, at least ``min_roi`` of the longest image
    side; pixels outside it are background, like GrabCut's rectangle). Inside it, disks of
    ``radius`` pixels around positive clicks are sure foreground, around negative clicks sure
    background, the previous mask is probable foreground and the rest probable background.
    Of the result only the connected components that touch a positive click are kept (so
    similar-looking objects elsewhere, e.g. other nuclei, are not included).

    Args:
        radius: Click disk radius in pixels (5 as RITM's click encoding).
        iterations: GrabCut iterations per click.
        roi_scale: Growth of the bounding box of clicks + previous mask.
        min_roi: Smallest ROI side as a fraction of the longest image side.
        max_side: The ROI is downscaled to this longest side for GrabCut (speed), and the
            result upscaled back.
        init_radius: Radius of the probable-foreground disk put around a positive click outside
            the previous mask, as a fraction of the shorter ROI side.
        seed: OpenCV RNG seed set before each GrabCut call (its GMM initialisation is random).

    Attributes:
        name: "grabcut" (the model name in evaluation reports).
        clicks: Clicks so far, in image (row, col) pixels.
        probs: (H, W) float32 current result, values exactly 0 or 1.
    """

    name = "grabcut"

    def __init__(
        self,
        *,
        radius: int = 5,
        iterations: int = 3,
        roi_scale: float = 2.0,
        min_roi: float = 0.4,
        max_side: int = 400,
        init_radius: float = 0.15,
        seed: int = 0,
    ) -> None:
        if radius < 1 or iterations < 1 or roi_scale < 1 or not 0 < min_roi <= 1 or max_side < 16:
            raise ValueError("invalid GrabCutBaseline parameters")
        self.radius = radius
        self.iterations = iterations
        self.roi_scale = roi_scale
        self.min_roi = min_roi
        self.max_side = max_side
        self.init_radius = init_radius
        self.seed = seed
        self._image: np.ndarray | None = None
        self.clicks: list[Click] = []
        self.probs = np.zeros((0, 0), dtype=np.float32)

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool current mask."""
        return self.probs > 0.5

    def set_image(
        self,
        image: np.ndarray,
        *,
        contrast_limits: tuple[float, float] | None = None,
        channel: int | None = None,
        rgb: bool | None = None,
    ) -> None:
        """Use a new image and forget all clicks.

        Args:
            image: (H, W) or (H, W, C) image of any dtype :func:`prepare_image` accepts.
            contrast_limits, channel, rgb: Passed to :func:`prepare_image`.

        Raises:
            ImageFormatError: The image cannot be converted.
        """
        from napari_ritm.inference.preprocess import prepare_image

        rgb01, _ = prepare_image(image, contrast_limits=contrast_limits, channel=channel, rgb=rgb)
        self._image = np.ascontiguousarray(np.round(rgb01 * 255.0).astype(np.uint8))
        self.reset()

    def reset(self) -> None:
        """Forget all clicks; keep the image."""
        self.clicks = []
        shape = self._image.shape[:2] if self._image is not None else (0, 0)
        self.probs = np.zeros(shape, dtype=np.float32)

    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        """Add a click and re-segment.

        Args:
            row: Row of the click in image pixels.
            col: Column of the click in image pixels.
            positive: True for object, False for background.

        Returns:
            (H, W) float32 map with values 0 (background) or 1 (object).

        Raises:
            ImageFormatError: No image was set, or the click lies outside the image.
        """
        if self._image is None:
            raise ImageFormatError("call set_image(image) before adding clicks")
        h, w = self._image.shape[:2]
        if not (-0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5):
            raise ImageFormatError(f"click ({row}, {col}) lies outside the image of size {(h, w)}")
        self.clicks.append(Click(float(row), float(col), bool(positive)))
        self.probs = self._segment().astype(np.float32)
        return self.probs

    # -----------------------------------------------------------------------------------------

    def _roi(self, positives: list[tuple[int, int]]) -> tuple[int, int, int, int]:
        """Inclusive (r0, r1, c0, c1) region around positive clicks and the previous mask."""
        assert self._image is not None
        h, w = self._image.shape[:2]
        rows = [r for r, _ in positives]
        cols = [c for _, c in positives]
        prev = np.nonzero(self.probs > 0.5)
        if prev[0].size:
            rows += [int(prev[0].min()), int(prev[0].max())]
            cols += [int(prev[1].min()), int(prev[1].max())]
        min_side = max(self.min_roi * max(h, w), 4 * self.radius)

        def span(lo: int, hi: int, size: int) -> tuple[int, int]:
            centre = (lo + hi) / 2
            half = max((hi - lo + 1) * self.roi_scale, min_side) / 2
            return max(0, round(centre - half)), min(size - 1, round(centre + half))

        r0, r1 = span(min(rows), max(rows), h)
        c0, c1 = span(min(cols), max(cols), w)
        return r0, r1, c0, c1

    def _segment(self) -> np.ndarray:
        import cv2

        assert self._image is not None
        h, w = self._image.shape[:2]
        pixels = [(c.pixel, c.positive) for c in self.clicks]
        positives = [p for p, pos in pixels if pos]
        if not positives:
            return np.zeros((h, w), dtype=bool)
        r0, r1, c0, c1 = self._roi(positives)
        crop = self._image[r0 : r1 + 1, c0 : c1 + 1]
        ch, cw = crop.shape[:2]
        scale = min(1.0, self.max_side / max(ch, cw))
        sh, sw = max(2, round(ch * scale)), max(2, round(cw * scale))
        if scale < 1.0:
            crop = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA)
        prev = self.probs[r0 : r1 + 1, c0 : c1 + 1] > 0.5
        if scale < 1.0:
            prev = cv2.resize(prev.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST)
        labels = np.full((sh, sw), cv2.GC_PR_BGD, dtype=np.uint8)
        labels[prev > 0] = cv2.GC_PR_FGD
        # sides of the ROI that are not the image border are outside the object (GrabCut rect)
        if r0 > 0:
            labels[0, :] = cv2.GC_BGD
        if r1 < h - 1:
            labels[-1, :] = cv2.GC_BGD
        if c0 > 0:
            labels[:, 0] = cv2.GC_BGD
        if c1 < w - 1:
            labels[:, -1] = cv2.GC_BGD
        radius = max(1, round(self.radius * scale))
        # A click on a new region also seeds a probable-foreground disk: from a 5-px seed alone
        # the foreground colour model is too narrow and GrabCut returns little more than the seed.
        grow = max(radius, round(self.init_radius * min(sh, sw)))
        for (r, c), pos in pixels:
            if pos and not self.probs[r, c] > 0.5:
                centre = (round((c - c0) * scale), round((r - r0) * scale))
                cv2.circle(labels, centre, grow, int(cv2.GC_PR_FGD), thickness=-1)
        seeds = []
        for (r, c), pos in pixels:  # later clicks overwrite earlier ones where disks overlap
            centre = (round((c - c0) * scale), round((r - r0) * scale))  # cv2: (x, y)
            value = cv2.GC_FGD if pos else cv2.GC_BGD
            cv2.circle(labels, centre, radius, int(value), thickness=-1)
            if pos:
                seeds.append((centre[1], centre[0]))
        is_bg = (labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)
        if is_bg.any() and (~is_bg).any():
            cv2.setRNGSeed(self.seed)
            bgd_model = np.zeros((1, 65), np.float64)
            fgd_model = np.zeros((1, 65), np.float64)
            cv2.grabCut(
                crop, labels, None, bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK
            )
        fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
        fg = _components_with_seeds(fg, seeds)
        if scale < 1.0:
            fg = cv2.resize(fg, (cw, ch), interpolation=cv2.INTER_NEAREST)
        out = np.zeros((h, w), dtype=bool)
        out[r0 : r1 + 1, c0 : c1 + 1] = fg > 0
        return out


def _components_with_seeds(fg: np.ndarray, seeds: list[tuple[int, int]]) -> np.ndarray:
    """Keep the 8-connected components of ``fg`` (uint8 0/1) that contain a seed (row, col)."""
    import cv2

    n, comp = cv2.connectedComponents(fg, connectivity=8)
    if n <= 1:
        return fg
    h, w = fg.shape
    keep = {int(comp[r, c]) for r, c in seeds if 0 <= r < h and 0 <= c < w} - {0}
    return np.isin(comp, list(keep)).astype(np.uint8)
