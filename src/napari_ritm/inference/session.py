"""ClickSession: the one inference path (widget, CLI, evaluation, training checks, tests).

A session holds one image and one object being segmented. With ``preset="evaluation"`` each
click runs the RITM NoBRS predictor exactly as the reference does (ritm-reference §8.2); the
default ``preset="interactive"`` differs only where ZoomIn has no ROI (the first click): it zooms
on a window sized for the clicked object (:mod:`~napari_ritm.inference.first_window`) instead of
running the whole image, and it computes in the fastest native precision
(:mod:`~napari_ritm.inference.presets`, :mod:`~napari_ritm.inference.precision`):

1. the previous probability map is the 4th input channel, attached **before** cropping;
2. forward transforms ZoomIn -> LimitLongestSide -> HorizontalFlip;
3. points = N positives then N negatives, ``(row, col, click index)``, padded with -1,
   N = max(#pos, #neg, 1);
4. flip logits averaged in logit space, sigmoid, inverse resizes in reverse order; outside the
   zoom ROI the probability is 0;
5. that full-resolution map is the next previous mask; ``mask = probs > threshold`` (0.49).

The prediction step itself lives in :mod:`~napari_ritm.inference.steps`.

Performance notes (docs/performance.md): the network runs as a
:class:`~napari_ritm.model.inference.FastISModel` (BatchNorm folded, channels-last, main head
only; same probabilities to float32 rounding) unless ``backend="eager"``. The raw image is kept
as given (not copied) and only the region fed to the network is normalised (cached while the
region stays the same); the whole normalised image is cached the first time a whole-image
prediction needs it. Images larger than ``window`` never go through the network whole: see the
``window`` argument, which bounds every click's work and memory by the window, not the image.
Undo history stores each result as (ROI, probabilities inside the ROI); the full (H, W) map is
built when ``probs`` is read (``add_click`` returns it) as a zero-initialised allocation with the
ROI pasted in, so only the ROI's memory is written; a UI can use ``probs_roi`` instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from napari_ritm.errors import ImageFormatError, RitmError
from napari_ritm.inference.clicks import Click
from napari_ritm.inference.precision import (
    fastest_cpu_precision,
    resolve_precision,
    torch_dtype,
)
from napari_ritm.inference.preprocess import (
    Normalization,
    percentiles_from_metadata,
    resolve_normalization,
)
from napari_ritm.inference.presets import DEFAULT_PRESET, DEFAULT_THRESHOLD, Preset, get_preset
from napari_ritm.inference.steps import PredictionSteps, State, StepResult, build_points, readonly
from napari_ritm.inference.transforms import HorizontalFlip, LimitLongestSide, Roi, ZoomIn

__all__ = ["DEFAULT_THRESHOLD", "ClickSession", "StepResult", "build_points"]

logger = logging.getLogger(__name__)


class ClickSession(PredictionSteps):
    """Interactive click segmentation of one object in one image with a RITM model.

    Lifecycle: ``set_image`` (optionally with a prior mask to refine), then ``add_click`` /
    ``set_clicks`` / ``undo`` / ``redo``; ``reset`` starts a new object on the same image, and
    ``set_image`` a new image. Every method that changes the object returns the new ``probs``.

    Returned probability arrays are **read-only** views of the session's state (no copy per
    click); copy them before changing them in place. The raw image is not copied either: do not
    modify it in place while the session uses it.

    Args:
        model: An ``ISModel`` (``forward(image (B, 3|4, H, W), points (B, 2N, 3))`` returning
            ``{"instances": logits}``). It is put in eval mode and moved to ``device``.
        preset: ``"interactive"`` (default): zoom-in from the first click on a window sized for
            the clicked object (:mod:`~napari_ritm.inference.first_window`) and precision
            ``"auto"``; ``"evaluation"``: the reference protocol (first click on the whole
            image or ``window``, zoom-in from click 2, exact float32), used by
            ``napari-ritm evaluate`` and the conformance tests. See
            :mod:`~napari_ritm.inference.presets`; the arguments below override it.
        zoom_in: True for the reference ZoomIn (target 400, skip 1 click, ...), False for none,
            a :class:`~napari_ritm.inference.transforms.ZoomIn` instance, or a dict of ZoomIn
            arguments. With the interactive preset, whenever ZoomIn has no ROI (first click, or
            an empty previous prediction) the first-click window replaces the whole image.
        flip: Horizontal-flip test-time augmentation (logits averaged).
        max_size: Longest side fed to the network after zoom (LimitLongestSide); None: no limit
            (the reference evaluation); the official demo uses 800.
        threshold: ``mask = probs > threshold`` (0.49 as in the reference evaluation).
        device: torch device (string or object); None picks CUDA > MPS > CPU.
        backend: ``"fast"`` (default): an inference copy of the model with BatchNorm folded into
            the convolutions, channels-last, main head only
            (:class:`~napari_ritm.model.inference.FastISModel`; probabilities equal the eager
            model's to float32 rounding, ~1e-4). ``"eager"``: the model itself, as given (the
            reference configuration). The fast copy is made here: after changing the model's
            weights, make a new session. Models that are not an ``ISModel`` always run as given.
        window: Large-image mode. When the image is larger than ``window`` in a dimension, a
            prediction that would run on the whole image (first click, or zoom-in off) runs
            on a ``window`` x ``window`` box around the latest click instead (clamped to the
            image; probabilities 0 outside, like a ZoomIn ROI), and a ZoomIn ROI is shrunk to
            at most ``window`` per side around the latest click, so the cost of a click does
            not grow with the image. Images that fit the window (e.g. up to 1024 x 1024 with
            the default) keep the exact reference behaviour. None: always the whole image.
        dtype: Compute precision of the fast backend (alias of ``precision``, kept for
            compatibility): a name or torch dtype.
        precision: ``"auto"`` (bfloat16 on CPUs with native bf16 - AMX or AVX512-BF16 - where
            a timed pass of the model says it is faster, float16 on CUDA/MPS, float32
            elsewhere; :mod:`~napari_ritm.inference.precision`),
            ``"float32"`` (exact), ``"bfloat16"`` (CPU) or ``"float16"`` (GPU). None: the
            preset's (interactive "auto", evaluation "float32"). The eager backend and models
            that are not an ``ISModel`` always run in float32 (``precision`` says so).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        preset: str | Preset = DEFAULT_PRESET,
        zoom_in: bool | ZoomIn | Mapping[str, Any] = True,
        flip: bool = True,
        max_size: int | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        device: str | torch.device | None = None,
        backend: str = "fast",
        window: int | None = 1024,
        dtype: str | torch.dtype | None = None,
        precision: str | None = None,
    ) -> None:
        from napari_ritm.model import select_device

        self._preset = get_preset(preset)
        if dtype is not None and precision is not None and dtype != precision:
            raise RitmError(f"dtype={dtype!r} and precision={precision!r} disagree; give one")
        requested = precision if precision is not None else dtype

        if isinstance(zoom_in, ZoomIn):
            self.zoom: ZoomIn | None = zoom_in
        elif isinstance(zoom_in, Mapping):
            self.zoom = ZoomIn(**zoom_in)
        elif zoom_in is True:
            self.zoom = ZoomIn()
        elif zoom_in is False or zoom_in is None:
            self.zoom = None
        else:
            raise RitmError(
                f"zoom_in must be True/False, a ZoomIn or a dict of ZoomIn options, not {zoom_in!r}"
            )
        self.flip = HorizontalFlip() if flip else None
        self.limit = LimitLongestSide(max_size) if max_size is not None else None
        if not 0.0 <= float(threshold) < 1.0:
            raise RitmError(f"threshold must be in [0, 1), got {threshold}")
        self.threshold = float(threshold)
        if window is not None and int(window) < 16:
            raise RitmError(
                f"window must be at least 16 pixels (or None for no window), got {window}"
            )
        self.window = None if window is None else int(window)
        self._device = select_device(device)
        self.model = model.to(self._device).eval()
        self._with_prev_mask = bool(getattr(model, "with_prev_mask", True))
        # the normalization the model was trained with (default percentiles without metadata)
        self._trained_percentiles = percentiles_from_metadata(getattr(model, "metadata", None))
        self.backend = backend
        self._precision = "float32"
        self._net = self._build_net(backend, requested)
        logger.info(
            "ClickSession on %s (preset=%s, precision=%s, zoom_in=%s, flip=%s, max_size=%s, "
            "backend=%s, window=%s)",
            self._device,
            self._preset.name,
            self._precision,
            self.zoom,
            bool(flip),
            max_size,
            backend,
            self.window,
        )
        self._image: np.ndarray | None = None
        self._norm: Normalization | None = None
        self._hw: tuple[int, int] = (0, 0)
        self._full_planes: np.ndarray | None = None
        self._crop_cache: tuple[Roi, np.ndarray] | None = None
        self._states: list[State] = []
        self._redo: list[State] = []
        self._probs_cache: np.ndarray | None = None

    def _build_net(self, backend: str, requested: str | torch.dtype | None) -> torch.nn.Module:
        """The module that runs each prediction (see the ``backend`` argument); sets
        ``self._precision`` to the precision it really runs in."""
        from napari_ritm.model import ISModel
        from napari_ritm.model.inference import FastISModel, tune_malloc

        explicit = requested is not None
        name = resolve_precision(requested if explicit else self._preset.precision, self._device)
        if backend == "eager":
            if explicit and name != "float32" and requested != "auto":
                raise RitmError("backend='eager' runs in float32; use backend='fast' for dtype")
            return self.model
        if backend != "fast":
            raise RitmError(f"backend must be 'fast' or 'eager', got {backend!r}")
        if self._device.type == "cpu":
            tune_malloc()  # process-wide, once: see its docstring (~10-15% per click on CPU)
        if not isinstance(self.model, ISModel):
            # any other nn.Module with the ISModel call signature runs as it is
            logger.debug("backend 'fast' needs an ISModel; running %s eagerly", type(self.model))
            return self.model
        auto = (requested if explicit else self._preset.precision) == "auto"
        if auto and name == "bfloat16" and self._device.type == "cpu":
            name = fastest_cpu_precision(self.model)  # the bf16 flag alone is not enough
        self._precision = name
        return FastISModel(self.model, dtype=torch_dtype(name))

    # -- image and prior -------------------------------------------------------------------------
    def set_image(
        self,
        image: np.ndarray,
        *,
        contrast_limits: tuple[float, float] | None = None,
        channel: int | None = None,
        rgb: bool | None = None,
        prior_mask: np.ndarray | None = None,
        normalization: Normalization | None = None,
        percentiles: tuple[float, float] | None = None,
    ) -> None:
        """Start a session on a new image (clears clicks, history and any prior mask).

        Args:
            image: (H, W) or (H, W, C) array, any integer or float dtype; see
                :func:`napari_ritm.inference.preprocess.prepare_image` for how it becomes RGB in
                [0, 1].
            contrast_limits: (low, high) mapped to 0 and 1 (non-uint8 images, or uint8 with
                limits other than (0, 255)); default: the image's percentiles.
            channel: Channel of an (H, W, C) image to use.
            rgb: Force or refuse RGB(A) interpretation of a 3/4-channel image.
            prior_mask: Optional (H, W) mask of an existing object to refine (see
                :meth:`set_prior_mask`).
            normalization: A recorded :class:`Normalization` to reuse (overrides the options
                above), e.g. the one of another slice of the same stack.
            percentiles: Percentiles used when no contrast limits are given (uint16/float
                images); None: the model's :attr:`trained_percentiles`, i.e. the normalization
                recorded in its checkpoint metadata.

        Raises:
            ImageFormatError: unusable image, options or prior mask; the session is unchanged.
        """
        image = np.asarray(image)
        norm = resolve_normalization(
            image,
            normalization,
            contrast_limits=contrast_limits,
            channel=channel,
            rgb=rgb,
            percentiles=self._trained_percentiles if percentiles is None else percentiles,
        )
        hw = (int(image.shape[0]), int(image.shape[1]))
        prior = self._check_prior(prior_mask, hw) if prior_mask is not None else None
        self._image, self._norm, self._hw = image, norm, hw
        self._full_planes = None
        self._crop_cache = None
        self._set_initial(prior)
        logger.debug("set_image %s %s -> %s", image.shape, image.dtype, norm)

    def set_prior_mask(self, mask: np.ndarray | None) -> np.ndarray:
        """Refine an existing object: its mask becomes the starting point (or None: no prior).

        The mask becomes the initial previous mask and ZoomIn's previous probabilities, and
        ``probs`` before any click equals it. Clicks, history and redo are cleared.

        Args:
            mask: (H, W) bool, integer (nonzero = object) or float probabilities in [0, 1].

        Returns:
            (H, W) float32 probabilities (read-only): the prior itself.

        Raises:
            RitmError: no image set; ImageFormatError: wrong shape or values (state unchanged).
        """
        self._require_image()
        prior = self._check_prior(mask, self._hw) if mask is not None else None
        self._set_initial(prior)
        return self.probs

    @staticmethod
    def _check_prior(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.shape != hw:
            raise ImageFormatError(
                f"prior mask shape {mask.shape} does not match the image size {hw}; "
                "pass an (H, W) mask of the same image"
            )
        if mask.dtype == bool or mask.dtype.kind in "ui":
            return (mask != 0).astype(np.float32)
        if mask.dtype.kind != "f":
            raise ImageFormatError(f"prior mask dtype {mask.dtype} is not bool, integer or float")
        if not np.isfinite(mask).all() or mask.min() < 0.0 or mask.max() > 1.0:
            raise ImageFormatError(
                "a float prior mask must hold probabilities in [0, 1] without NaN; "
                "pass a boolean mask instead"
            )
        return mask.astype(np.float32, copy=True)

    def _set_initial(self, prior: np.ndarray | None) -> None:
        region: Roi | None = None
        region_probs = None
        if prior is not None:
            rows = np.flatnonzero(prior.any(axis=1))
            if rows.size:
                cols = np.flatnonzero(prior.any(axis=0))
                region = (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1]))
                region_probs = readonly(
                    np.ascontiguousarray(
                        prior[region[0] : region[1] + 1, region[2] : region[3] + 1]
                    )
                )
        self._states = [State(None, region, region_probs, None)]
        self._redo = []
        self._probs_cache = None

    def reset(self) -> None:
        """Start a new object on the same image: no clicks, no history, no prior mask."""
        if self._image is not None:
            self._set_initial(None)

    # -- properties ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The torch device the model runs on."""
        return self._device

    @property
    def precision(self) -> str:
        """The precision the network really runs in: "float32", "bfloat16" or "float16"."""
        return self._precision

    @property
    def preset(self) -> str:
        """The preset's name: "interactive" or "evaluation"."""
        return self._preset.name

    @property
    def trained_percentiles(self) -> tuple[float, float]:
        """(low, high) percentiles of uint16/float images used when ``set_image`` gets neither
        contrast limits nor percentiles: those recorded in the model's checkpoint metadata
        (``metadata["normalization"]["percentiles"]``), else (1, 99.8)."""
        return self._trained_percentiles

    @property
    def normalization(self) -> Normalization | None:
        """How the current image is mapped to RGB in [0, 1] (None before ``set_image``)."""
        return self._norm

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the current image ((0, 0) before ``set_image``)."""
        return self._hw

    @property
    def clicks(self) -> list[Click]:
        """The clicks so far, in order (a new list)."""
        return [s.click for s in self._states[1:]]

    @property
    def probs(self) -> np.ndarray:
        """(H, W) float32 probabilities in [0, 1] of the current object (read-only)."""
        self._require_image()
        if self._probs_cache is None:
            self._probs_cache = self._full_probs(self._states[-1])
        return self._probs_cache

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: ``probs > threshold``."""
        return self.probs > self.threshold

    @property
    def probs_roi(self) -> tuple[Roi, np.ndarray]:
        """``((rmin, rmax, cmin, cmax), probs_crop)``: the box (inclusive) outside which the
        current probabilities are 0, and the (read-only) float32 probabilities inside it.

        A UI can redraw only this region. An all-zero map gives the whole image box.
        """
        self._require_image()
        state = self._states[-1]
        h, w = self._hw
        if state.region_probs is None or state.region is None:
            return (0, h - 1, 0, w - 1), self.probs
        return state.region, state.region_probs

    @property
    def can_undo(self) -> bool:
        """True when there is a click to undo."""
        return len(self._states) > 1

    @property
    def can_redo(self) -> bool:
        """True when an undone click can be redone."""
        return bool(self._redo)

    # -- clicks ----------------------------------------------------------------------------------
    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        """Add a click and predict.

        Args:
            row: Row in image pixels, in [-0.5, H - 0.5) (pixel centres are integers).
            col: Column in image pixels, in [-0.5, W - 0.5).
            positive: True for object, False for background.

        Returns:
            (H, W) float32 probabilities (read-only).

        Raises:
            RitmError: no image set; ImageFormatError: NaN or out-of-image coordinates. The
            session is unchanged after an error.
        """
        self._require_image()
        click = self._check_click(Click(row, col, bool(positive)))
        self._push(self._step([*self.clicks, click], self._states[-1], click))
        self._redo = []
        return self.probs

    def set_clicks(self, clicks: Sequence[Click | tuple[float, float, bool]]) -> np.ndarray:
        """Replace the click list and predict, as if the clicks were added one by one.

        Work is incremental: history is kept up to the longest common prefix of the old and
        new lists and only the remaining clicks run. The redo stack is cleared (unless the list
        is unchanged).

        Args:
            clicks: Clicks (or ``(row, col, positive)`` tuples) in time order.

        Returns:
            (H, W) float32 probabilities (read-only).

        Raises:
            RitmError / ImageFormatError as :meth:`add_click`; the session is unchanged.
        """
        self.update_clicks(clicks)
        return self.probs

    def update_clicks(self, clicks: Sequence[Click | tuple[float, float, bool]]) -> None:
        """:meth:`set_clicks` without building the full-size probability map.

        A UI reads :attr:`probs_roi` afterwards: on a large image the full map is an image-sized
        allocation per click that only the changed box needs.
        """
        self._require_image()
        new = [
            self._check_click(c if isinstance(c, Click) else Click(c[0], c[1], bool(c[2])))
            for c in clicks
        ]
        old = self.clicks
        keep = 0
        while keep < min(len(old), len(new)) and old[keep] == new[keep]:
            keep += 1
        if keep == len(old) == len(new):
            return  # nothing changes (the redo stack is kept too)
        states = self._states[: keep + 1]
        for k in range(keep, len(new)):
            states.append(self._step(new[: k + 1], states[-1], new[k]))
        self._states = states
        self._redo = []
        self._probs_cache = None

    def undo(self) -> np.ndarray:
        """Remove the last click and restore the state before it (probs and ZoomIn state).

        Returns:
            (H, W) float32 probabilities (read-only); unchanged when there is nothing to undo.
        """
        self._require_image()
        if len(self._states) > 1:
            self._redo.append(self._states.pop())
            self._probs_cache = None
        return self.probs

    def redo(self) -> np.ndarray:
        """Re-apply the last undone click (its stored result; nothing is recomputed).

        Returns:
            (H, W) float32 probabilities (read-only); unchanged when there is nothing to redo.
        """
        self._require_image()
        if self._redo:
            self._push(self._redo.pop())
        return self.probs

    # -- low level -------------------------------------------------------------------------------
    def predict_step(
        self,
        clicks: Sequence[Click],
        prev_probs: np.ndarray | None = None,
        zoom_roi: Roi | None = None,
    ) -> StepResult:
        """Run one prediction from an explicit state, without changing the session.

        This is the predictor's ``get_prediction`` with the state given explicitly, e.g. for
        teacher forcing against recorded reference runs.

        Args:
            clicks: All clicks so far (at least one), in image pixels.
            prev_probs: (H, W) float probabilities used as the previous mask and as ZoomIn's
                previous map; None for zeros.
            zoom_roi: ZoomIn's stored ROI (rmin, rmax, cmin, cmax), inclusive, or None.

        Returns:
            A :class:`StepResult`.
        """
        self._require_image()
        clicks = [self._check_click(c) for c in clicks]
        if not clicks:
            raise RitmError("predict_step needs at least one click")
        prev = None if prev_probs is None else self._check_prior(prev_probs, self._hw)
        state = State(None, None, prev, None if zoom_roi is None else tuple(map(int, zoom_roi)))
        info: dict[str, Any] = {}
        new = self._step(clicks, state, clicks[-1], info)
        return StepResult(
            probs=self._full_probs(new),
            region=new.region,
            zoom_roi=new.zoom_roi,
            zoom_changed=info["zoom_changed"],
            net_input_hw=info["net_input_hw"],
            points=info["points"],
        )

    # -- internals -------------------------------------------------------------------------------
    def _require_image(self) -> None:
        if self._image is None:
            raise RitmError("no image set: call set_image(image) before clicking")

    def _check_click(self, click: Click) -> Click:
        h, w = self._hw
        try:
            row, col = float(click.row), float(click.col)
        except (TypeError, ValueError) as exc:
            raise ImageFormatError(f"click coordinates must be numbers, got {click}") from exc
        if not (math.isfinite(row) and math.isfinite(col)):
            raise ImageFormatError(f"click coordinates must be finite numbers, got ({row}, {col})")
        if not (-0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5):
            raise ImageFormatError(
                f"click at (row {row:g}, col {col:g}) is outside the {h}x{w} image; "
                "click inside the image"
            )
        return Click(row, col, bool(click.positive))

    def _push(self, state: State) -> None:
        self._states.append(state)
        self._probs_cache = None
