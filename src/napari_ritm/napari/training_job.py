"""What runs a Fine-tune training besides the form: layer snapshots, the worker, the dock's end.

:func:`snapshot_pairs` copies the layers to train on; :func:`is_training_labels` says which
Labels layers may be offered (never the RITM widget's own).
:class:`TrainingJob` runs one training function in a napari thread worker. It owns the stop flag,
relays progress from the worker thread to the Qt main thread through a signal (at most once a
second: with software OpenGL every repaint of the window re-composes the canvas, CPU taken from
the training) and hands the outcome (result or exception) to one callback on the main thread.
No napari progress bar: its activity indicator repainted the window all through a run (~20% of
a 2-core machine's CPU measured under Xvfb); the dock shows progress in its own widgets.
:class:`DockLifecycle` ends a dock widget's life when it is closed, removed from its dock or
destroyed (asking first while work runs); :class:`LayerWatch` follows the layer list until then.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication, QMessageBox, QWidget

from napari_ritm.errors import RitmError
from napari_ritm.napari.layers import NEGATIVE_NAME, POSITIVE_NAME, PREVIEW_NAME, is_ritm_layer
from napari_ritm.napari.worker import call_on_quit

if TYPE_CHECKING:  # pragma: no cover
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "DockLifecycle",
    "LayerWatch",
    "TrainingJob",
    "ask_stop",
    "is_training_labels",
    "short_message",
    "snapshot_pairs",
    "wait_for_jobs",
]

ProgressFn = Callable[[int, int, str], None]
StopFn = Callable[[], bool]
TrainFn = Callable[[ProgressFn, StopFn], Path]

#: Jobs whose worker has not finished. Keeps each job (and the callbacks it holds) alive after its
#: widget is gone, until the run has saved its state.
_ACTIVE: set[TrainingJob] = set()
_DUPLICATE_SUFFIX = re.compile(r" \[\d+\]$")  # napari's suffix for a repeated layer name
_OURS = (PREVIEW_NAME, POSITIVE_NAME, NEGATIVE_NAME)
#: Progress reaches the dock at most this often (ms)
PROGRESS_INTERVAL_MS = 1000


def is_training_labels(layer: Any) -> bool:
    """Whether ``layer`` may be offered as training labels: a Labels layer that is not one of the
    RITM widget's own layers (preview, clicks), also when napari renamed it ("RITM preview [1]")."""
    if not isinstance(layer, Labels) or is_ritm_layer(layer):
        return False
    return _DUPLICATE_SUFFIX.sub("", layer.name) not in _OURS


def snapshot_pairs(
    viewer: napari.viewer.Viewer, pairs: Sequence[tuple[str, str]]
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Copies of the data of (image layer name, labels layer name) pairs, taken now.

    Call it on the main thread, where painting happens: the run then sees these pixels only.
    Multiscale layers give their full-resolution level.

    Returns:
        (images, labels, names): the arrays as stored in the layers, and the image layer names.

    Raises:
        RitmError: a named layer no longer exists.
    """
    images, labels, names = [], [], []
    for image_name, labels_name in pairs:
        if image_name not in viewer.layers or labels_name not in viewer.layers:
            raise RitmError(f"layer {image_name!r} or {labels_name!r} no longer exists")
        for name, out in ((image_name, images), (labels_name, labels)):
            layer = viewer.layers[name]
            out.append(np.array(layer.data[0] if layer.multiscale else layer.data, copy=True))
        names.append(image_name)
    return images, labels, names


def short_message(exc: BaseException, limit: int = 160) -> str:
    """First line of the exception's message, at most ``limit`` characters (for a status label)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def ask_stop(message: str) -> bool:
    """Ask with a QMessageBox whether to stop the running training; True means stop."""
    buttons = QMessageBox.StandardButton
    answer = QMessageBox.question(
        QApplication.activeWindow(), "Fine-tune", message, buttons.Yes | buttons.No, buttons.No
    )
    return answer == buttons.Yes


class _Bridge(QObject):
    """Carries progress from the worker thread to the main thread (queued connection)."""

    progressed = Signal(int, int, str)
    reported = Signal(object)


class TrainingJob:
    """One training run in a napari thread worker.

    Lifecycle: ``start()`` -> the worker runs ``train(progress, should_stop)`` -> ``finished``
    becomes True and ``on_finished(job)`` is called on the main thread, with ``result`` or
    ``error`` set. ``request_stop()`` makes ``should_stop`` return True; the trainer then saves
    a resumable state and returns after the current step. napari's own cancel (``worker.quit``,
    e.g. when the main window closes) stops the run the same way.

    Args:
        train: the work, called in the worker thread; must not touch Qt.
        total: expected number of progress steps (until the work reports its own).
        description: what is shown when the job starts.
        on_progress: ``(done, total, message)`` on the main thread: at start, then the newest
            report at most every :data:`PROGRESS_INTERVAL_MS`, and the last one at the end.
        on_finished: called once on the main thread when the worker has finished.
        on_report: called on the main thread with each object the work passes to
            :meth:`report` (e.g. a ``TrainingReport``).
    """

    def __init__(
        self,
        train: TrainFn,
        *,
        total: int,
        description: str,
        on_progress: ProgressFn,
        on_finished: Callable[[TrainingJob], None],
        on_report: Callable[[Any], None] | None = None,
    ) -> None:
        self._train = train
        self._total = total
        self._description = description
        self._on_progress = on_progress
        self._on_finished = on_finished
        self._stop = threading.Event()
        self._done = threading.Event()
        self._bridge = _Bridge()  # no parent: it must outlive the widget while the worker runs
        self._bridge.progressed.connect(self._relay_progress)
        self._on_report = on_report
        self._bridge.reported.connect(self._relay_report)
        self._latest: tuple[int, int, str] | None = None  # progress not shown yet
        self._flush = QTimer(self._bridge)
        self._flush.setInterval(PROGRESS_INTERVAL_MS)
        self._flush.timeout.connect(self._show_progress)
        self.worker: Any = None
        self.result: Path | None = None
        self.error: Exception | None = None

    @property
    def running(self) -> bool:
        """The worker was started and has not finished its work."""
        return self.worker is not None and not self._done.is_set()

    @property
    def finished(self) -> bool:
        """The work has returned or raised (the worker thread is ending)."""
        return self._done.is_set()

    @property
    def stop_requested(self) -> bool:
        """Stop was requested (by :meth:`request_stop` or napari's cancel)."""
        return self._stop.is_set() or bool(self.worker is not None and self.worker.abort_requested)

    def start(self) -> None:
        """Start the worker thread (progress goes to ``on_progress``, at most once a second)."""
        from napari.qt.threading import create_worker

        # quitting napari must not kill a run half-way through writing its resumable state
        call_on_quit(wait_for_jobs)
        self._on_progress(0, self._total, self._description)
        self._flush.start()
        _ACTIVE.add(self)
        self.worker = create_worker(
            self._run, _connect={"finished": self._finish}, _ignore_errors=True, _start_thread=False
        )
        self.worker.start()

    def request_stop(self) -> None:
        """Ask the run to save a resumable state and return after the current step."""
        self._stop.set()

    def report(self, value: Any) -> None:
        """Hand ``value`` to ``on_report`` on the main thread (callable from the worker)."""
        self._bridge.reported.emit(value)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work has returned (True) or ``timeout`` seconds passed (False)."""
        return self._done.wait(timeout)

    # -- worker thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.result = self._train(self._bridge.progressed.emit, lambda: self.stop_requested)
        except Exception as exc:  # the boundary to the UI: the main thread reports it
            self.error = exc
        finally:
            self._done.set()

    # -- main thread ---------------------------------------------------------------------------
    def _relay_progress(self, done: int, total: int, message: str) -> None:
        self._latest = (done, total, message)  # shown by the timer (the newest one only)

    def _show_progress(self) -> None:
        latest, self._latest = self._latest, None
        if latest is not None:
            self._on_progress(*latest)

    def _relay_report(self, value: Any) -> None:
        if self._on_report is not None:
            self._on_report(value)

    def _finish(self) -> None:
        self._flush.stop()  # nothing is shown after the outcome but the last report
        self._show_progress()
        _ACTIVE.discard(self)
        try:
            self._on_finished(self)
        finally:
            self.worker = None


def wait_for_jobs(timeout: float = 60.0) -> bool:
    """Stop every running job and wait (up to ``timeout`` s each) until it has saved its state.

    Returns:
        True when no job is left running.
    """
    for job in list(_ACTIVE):
        job.request_stop()
    return all(job.wait(timeout) for job in list(_ACTIVE))


class DockLifecycle(QObject):
    """Event filter that ends a dock widget's life: asks, then calls ``teardown(stop)``.

    Three ways a dock widget ends: its ``close()`` is called (a Close event: while ``busy()``
    it asks ``confirm()``, and No keeps the widget open); napari removes it from its dock (its
    parent becomes None: while busy it asks, and No means ``teardown(stop=False)``: the work goes
    on without the widget); or Qt destroys it with the viewer window (no question: the window is
    going, and napari asks before closing a window with busy workers). Hiding is none of these.

    Args:
        widget: the dock's inner widget (a magicgui container's ``native``).
        busy: whether work is running that the question is about.
        confirm: asks whether to stop that work; True means stop.
        teardown: ``teardown(stop)``; may be called more than once, and from Qt's ``destroyed``
            signal, when the widget's Qt children are gone.
    """

    def __init__(
        self,
        widget: QWidget,
        *,
        busy: Callable[[], bool],
        confirm: Callable[[], bool],
        teardown: Callable[[bool], None],
    ) -> None:
        super().__init__(widget)
        self._busy, self._confirm, self._teardown = busy, confirm, teardown
        self._docked = widget.parent() is not None
        widget.installEventFilter(self)
        widget.destroyed.connect(lambda *_: teardown(True))

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind == QEvent.Type.Close:
            if self._busy() and not self._confirm():
                event.ignore()
                return True
            self._teardown(True)
        elif kind == QEvent.Type.ParentChange and isinstance(obj, QWidget):
            if obj.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self._teardown(not self._busy() or self._confirm())
        return False


class LayerWatch:
    """Calls ``callback()`` when a layer is added, removed or renamed, until :meth:`disconnect`."""

    _EVENTS = ("inserted", "removed", "renamed")

    def __init__(self, viewer: napari.viewer.Viewer, callback: Callable[[], None]) -> None:
        self._events = viewer.layers.events
        self._callback = callback
        self.connected = True
        for name in self._EVENTS:
            getattr(self._events, name).connect(self._on_change)

    def _on_change(self, event: Any = None) -> None:
        self._callback()

    def disconnect(self) -> None:
        """Disconnect every event it connected; the callback is not called again."""
        if self.connected:
            self.connected = False
            for name in self._EVENTS:
                getattr(self._events, name).disconnect(self._on_change)
