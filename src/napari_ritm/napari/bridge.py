"""The widget's bridge to the model: requests in, results out, nothing on the UI thread.

:class:`PredictionBridge` owns the :class:`~napari_ritm.napari.engine.PredictionEngine` (model +
ClickSession) and the :class:`~napari_ritm.napari.worker.LatestRunner` that calls it off the Qt
main thread. It turns the displayed plane + clicks + prior into a :class:`Request` whose identity
is made of generation numbers (:mod:`napari_ritm.napari.identity`), keeps the newest preview
result and runs "kept" jobs for commits (:meth:`PredictionBridge.run_kept`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer

from napari_ritm.inference.clicks import Click
from napari_ritm.napari.engine import PredictionEngine, Request, Result
from napari_ritm.napari.identity import Generations
from napari_ritm.napari.layers import Plane, image_plane
from napari_ritm.napari.worker import LatestRunner

if TYPE_CHECKING:  # pragma: no cover
    from napari_ritm.napari.controls import ControlPanel

logger = logging.getLogger(__name__)

__all__ = ["PredictionBridge"]


class PredictionBridge:
    """Runs predictions for the dock and keeps the newest result.

    Args:
        controls: the dock's controls (model options, image layer, normalization mode).
        engine: the inference state (tests inject one with a small model).
        on_result: UI-thread callback for each fresh preview :class:`Result`.
        on_data_replaced: UI-thread callback ``(layer)`` after a layer's data was replaced.
    """

    def __init__(
        self,
        controls: ControlPanel,
        engine: PredictionEngine | None,
        on_result: Callable[[Result], None],
        on_data_replaced: Callable[[Any], None] | None = None,
    ) -> None:
        self.controls = controls
        self.engine = engine or PredictionEngine()
        self.generations = Generations(on_data_replaced)
        self.result: Result | None = None  # newest preview result (None: none held)
        self._on_result = on_result
        self._progress_lock = threading.Lock()
        self._progress_state: tuple[int, int, str] | None = None
        self._said_busy = False  # "predicting…" shown for the current busy period
        self.engine.progress = self._progress_from_thread
        # No napari progress bar per job: its activity-dialog animation took the CPU from the
        # model (clicks ~3x slower on 2 cores, benchmarks/bench_widget.py); the status line
        # says "predicting…" (after 200 ms) and shows load progress instead.
        self.runner = LatestRunner(self._deliver, self._busy_changed, progress_desc=None)
        self._timer = QTimer(controls.native)  # parented: deleted with the dock
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._show_progress)

    # -- requests --------------------------------------------------------------------------------

    def build_request(
        self,
        plane: Plane,
        clicks: Sequence[Click],
        prior_mask: np.ndarray | None = None,
        prior_serial: int | None = None,
    ) -> Request:
        """The full-state request for ``clicks`` (and a prior) on ``plane`` of the chosen image."""
        controls = self.controls
        image = controls.image.value
        array = image_plane(image, plane, controls.channel_axis)
        contrast = None
        if controls.normalization.value == "contrast":
            contrast = tuple(float(v) for v in image.contrast_limits)
        channel = controls.channel.value if controls.channel_axis is not None else None
        key = (
            self.generations.key(image),
            tuple(image.data.shape),
            plane.key,
            plane.row_axis,
            plane.col_axis,
            controls.channel_axis,
            channel,
            contrast,
            prior_serial,
        )
        return Request(
            **controls.model_options(),
            image_key=key,
            image=array,
            contrast_limits=contrast,
            channel=channel,
            rgb=bool(image.rgb),
            prior_mask=prior_mask,
            clicks=tuple(clicks),
            tag=plane,
        )

    def predict(self, request: Request) -> int:
        """Queue a preview prediction (latest wins); returns its ticket."""
        return self.runner.submit(lambda r=request: self.engine.run(r))

    def run_kept(self, request: Request, on_result: Callable[[Result], None]) -> None:
        """Queue a prediction that is never superseded (a commit's snapshot)."""
        self.runner.submit_kept(lambda r=request: self.engine.run(r), on_result)

    def load_model(self) -> int | None:
        """Load (download if needed) the chosen model in the background."""
        options = self.controls.model_options()
        if not options["model"]:
            return None
        request = Request(**options, image_key=None, image=None)
        return self.runner.submit(lambda r=request: self.engine.run(r))

    def matches(self, request: Request) -> bool:
        """Whether the held result answers exactly ``request`` (same pixels, clicks, options)."""
        held = None if self.result is None else self.result.request
        return held is not None and (
            held.image_key == request.image_key
            and held.clicks == request.clicks
            and (held.model, held.device, held.zoom_in, held.flip, held.precision, held.preset)
            == (
                request.model,
                request.device,
                request.zoom_in,
                request.flip,
                request.precision,
                request.preset,
            )
        )

    def forget(self) -> None:
        """Drop the held result (the object changed)."""
        self.result = None

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        return self.runner.busy

    # -- results and progress (UI thread) --------------------------------------------------------

    def _deliver(self, result: Result) -> None:
        if result.error is None and result.roi is not None:
            self.result = result
        self._on_result(result)

    def _busy_changed(self, busy: bool) -> None:
        # "predicting…" only once a job has run for a timer interval: a status change repaints
        # the dock, and with software OpenGL (no GPU) each repaint re-composes the canvas, CPU
        # that a sub-second click would take from the model
        self._said_busy = False
        if busy:
            self._timer.start()
        else:
            self._timer.stop()

    def _progress_from_thread(self, done: int, total: int, message: str) -> None:
        # called from the worker thread: only store, the UI timer shows it
        with self._progress_lock:
            self._progress_state = (done, total, message)

    def _show_progress(self) -> None:
        with self._progress_lock:
            state, self._progress_state = self._progress_state, None
        if state is None and not self._said_busy:
            self._said_busy = True
            self.controls.set_status("predicting…")
        if state is not None:
            done, total, message = state
            self.controls.set_status(
                f"{message}: {100.0 * done / total:.0f}%" if total else f"{message}…"
            )

    def close(self) -> None:
        """Cancel waiting jobs; the model is released once the running job (if any) ends."""
        self._timer.stop()
        self.generations.disconnect()
        self.result = None
        self.runner.close(on_stopped=self.engine.release)
