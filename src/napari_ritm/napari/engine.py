"""The widget's inference state: one model, one ClickSession, brought to a requested state.

No napari or Qt here. :class:`PredictionEngine` lives in the widget and is only ever called from
the widget's :class:`~napari_ritm.napari.worker.LatestRunner` (one job at a time, off the UI
thread).
Each :class:`Request` carries the *whole* wanted state (model, options, image plane, prior mask,
clicks), so any request can replace an older one that never ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_ritm.errors import RitmError
from napari_ritm.inference.clicks import Click

logger = logging.getLogger(__name__)

__all__ = ["PredictionEngine", "Request", "Result"]


@dataclass(frozen=True, eq=False)
class Request:
    """Everything needed to compute the current object's probabilities.

    Attributes:
        model: weights name from the registry or path of a checkpoint file.
        device: "cpu", "cuda", "mps" or None (best available).
        zoom_in: ClickSession zoom-in switch.
        flip: ClickSession flip test-time augmentation switch.
        precision: ClickSession precision: "auto" (the session's choice for this machine),
            "float32" (exact), "bfloat16" (CPU) or "float16" (GPU).
        preset: ClickSession preset: "interactive" (zoom from the first click) or "evaluation"
            (the reference protocol).
        image_key: hashable identity of ``image`` + normalization settings + ``prior_mask``,
            made of generation numbers (never ``id()``: a freed object's id is reused); the
            session is re-initialised only when it changes.
        image: (h, w), (h, w, 3|4) or (h, w, C) plane of the image (a view; not modified).
        contrast_limits: (low, high) used to normalise uint16/float images, or None (percentiles).
        channel: channel of an (h, w, C) plane, or None (RGB for rgb planes, else channel mean).
        rgb: whether ``image`` is RGB(A).
        prior_mask: (h, w) bool mask of an existing object to refine, or None.
        clicks: clicks in (row, col) plane pixels, in the order they were made.
        tag: anything the caller wants back in the :class:`Result`.
    """

    model: str
    device: str | None
    zoom_in: bool
    flip: bool
    image_key: Hashable
    image: np.ndarray | None
    contrast_limits: tuple[float, float] | None = None
    precision: str = "auto"
    preset: str = "interactive"
    channel: int | None = None
    rgb: bool | None = None
    prior_mask: np.ndarray | None = None
    clicks: tuple[Click, ...] = ()
    tag: Any = None


@dataclass
class Result:
    """Outcome of a :class:`Request`.

    Attributes:
        request: the request this answers.
        roi: (rmin, rmax, cmin, cmax), inclusive, outside which the probabilities are 0; None
            when only the model was loaded or an error occurred.
        crop: (rmax - rmin + 1, cmax - cmin + 1) float32 probabilities inside ``roi``
            (read-only; the session's own array, never copied).
        hw: (h, w) of the plane.
        error: a user error to show (the job itself never raises RitmError).
        timings: seconds spent per step ("load", "set_image", "predict").
        precision: the precision the session runs in ("float32", "bfloat16", ...).
        device: the device the session runs on ("cpu", "cuda", ...).
    """

    request: Request
    roi: tuple[int, int, int, int] | None = None
    crop: np.ndarray | None = None
    hw: tuple[int, int] = (0, 0)
    error: RitmError | None = None
    timings: dict[str, float] = field(default_factory=dict)
    precision: str | None = None
    device: str | None = None

    @property
    def probs(self) -> np.ndarray | None:
        """(h, w) float32 probabilities (built from ``roi``/``crop``: an image-sized array)."""
        if self.roi is None or self.crop is None:
            return None
        r0, r1, c0, c1 = self.roi
        if (r0, c0) == (0, 0) and (r1 + 1, c1 + 1) == self.hw:
            return self.crop
        full = np.zeros(self.hw, dtype=np.float32)
        full[r0 : r1 + 1, c0 : c1 + 1] = self.crop
        return full


def _default_loader(name: str, device: str | None, progress: Callable | None) -> Any:
    from napari_ritm.weights import load_model

    # False: no tqdm bar on stderr when nobody listens
    return load_model(name, device=device, progress=progress or False)


def _default_session_factory(
    model: Any,
    *,
    zoom_in: bool,
    flip: bool,
    device: Any,
    precision: str = "auto",
    preset: str = "interactive",
) -> Any:
    from napari_ritm.inference.session import ClickSession

    # zoom-in on means "the preset's zoom-in"; only switching it off overrides the preset
    extra: dict[str, Any] = {} if zoom_in else {"zoom_in": False}
    return ClickSession(
        model, preset=preset, flip=flip, device=device, precision=precision, **extra
    )


class PredictionEngine:
    """Owns the loaded model and the :class:`~napari_ritm.inference.session.ClickSession` of the
    widget.

    Lifecycle: the model is loaded on the first request naming it and kept (one at a time); the
    session is rebuilt when the model, the zoom-in/flip switches or the precision change,
    re-initialised with ``set_image`` when the plane, its normalization or the prior mask
    change, and otherwise just brought to the requested clicks with ``set_clicks``
    (incremental when only clicks were added).

    Args:
        loader: ``(name, device, progress) -> model``; default ``weights.load_model``.
        session_factory: ``(model, *, zoom_in, flip, device, precision, preset) -> session``;
            default
            ClickSession.
        progress: ``(done, total, message)`` callable for model downloads/loads.
    """

    def __init__(
        self,
        loader: Callable[[str, str | None, Callable | None], Any] | None = None,
        session_factory: Callable[..., Any] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> None:
        self._loader = loader or _default_loader
        self._session_factory = session_factory or _default_session_factory
        self.progress = progress
        self.model: Any = None
        self.model_key: tuple[str, str | None] | None = None
        self.session: Any = None
        self._session_key: tuple | None = None
        self._image_key: Hashable | None = None

    def load(self, name: str, device: str | None) -> Any:
        """The model for (name, device), loading it if it is not the current one."""
        key = (name, device)
        if self.model is None or self.model_key != key:
            self.model = None  # free the old one first: two large models may not fit
            self.session = None
            self._session_key = None
            self._image_key = None
            logger.info("loading model %s on %s", name, device or "auto")
            self.model = self._loader(name, device, self.progress)
            self.model_key = key
        return self.model

    def run(self, request: Request) -> Result:
        """Bring model and session to ``request`` and predict; user errors go into the Result."""
        import time

        result = Result(request)
        try:
            t0 = time.perf_counter()
            model = self.load(request.model, request.device)
            result.timings["load"] = time.perf_counter() - t0
            if request.image is None:
                return result
            session_key = (
                self.model_key,
                request.zoom_in,
                request.flip,
                request.precision,
                request.preset,
            )
            if self.session is None or self._session_key != session_key:
                self.session = self._session_factory(
                    model,
                    zoom_in=request.zoom_in,
                    flip=request.flip,
                    device=request.device,
                    precision=request.precision,
                    preset=request.preset,
                )
                self._session_key = session_key
                self._image_key = None
            t0 = time.perf_counter()
            if self._image_key != request.image_key:
                self._image_key = None  # stays None if set_image fails
                self.session.set_image(
                    request.image,
                    contrast_limits=request.contrast_limits,
                    channel=request.channel,
                    rgb=request.rgb,
                    prior_mask=request.prior_mask,
                )
                self._image_key = request.image_key
            result.timings["set_image"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.session.update_clicks(list(request.clicks))
            # Only the changed box travels to the UI: the session's crop is a read-only entry of
            # its history, never changed later (a full map is 256 MB per click at 8192x8192).
            result.roi, result.crop = self.session.probs_roi
            result.hw = tuple(self.session.image_shape)
            result.timings["predict"] = time.perf_counter() - t0
            result.precision = _precision_name(self.session)
            result.device = str(getattr(self.session, "device", "") or "") or None
        except RitmError as exc:
            logger.info("user error: %s", exc)
            result.error = exc
        return result

    def release(self) -> None:
        """Drop the model and session (call only when no job can be running)."""
        self.session = None
        self.model = None
        self.model_key = None
        self._session_key = None
        self._image_key = None


def _precision_name(session: Any) -> str | None:
    """The precision a session computes in, as a short name ("float32", "bfloat16"...)."""
    value = getattr(session, "precision", None) or getattr(session, "dtype", None)
    if value is None:
        return None
    return str(value).replace("torch.", "")
