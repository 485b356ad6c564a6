"""Jobs off the UI thread, one at a time: latest-wins previews and kept commit jobs.

Jobs run in napari ``FunctionWorker`` threads so the viewer stays responsive, one at a time
because they share one model and one session. Two kinds:

* **preview** jobs (``submit``): while one runs, a newer preview waits in a single slot and an
  even newer one replaces it (latest wins); a preview's result is delivered only if no newer
  preview was submitted meanwhile, so the user never sees a stale prediction after a new click.
* **kept** jobs (``submit_kept``): never superseded, run in submission order *before* waiting
  previews, and each result goes to the callback given with it. "Finish object" uses them: the
  snapshot of an object must be computed even when the user already clicks on the next one.

Jobs must be *idempotent full-state* jobs ("bring the session to these clicks and predict"), which
is what :class:`napari_ritm.napari.engine.PredictionEngine` runs.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QThreadPool
from qtpy.QtWidgets import QApplication

logger = logging.getLogger(__name__)

__all__ = ["LatestRunner", "call_on_quit", "wait_for_closed_runners"]

#: Runners closed while a job still ran: kept alive (with their thread pool) until that job's
#: thread has finished, so that neither the pool nor the model under the job is destroyed
#: mid-job when the dock or the viewer goes away.
_CLOSING: set[LatestRunner] = set()
_ON_QUIT: set[Callable[[], object]] = set()  # connected to QApplication.aboutToQuit


def call_on_quit(callback: Callable[[], object]) -> None:
    """Connect ``callback`` to ``QApplication.aboutToQuit``, once per process (no-op before a
    QApplication exists): work that must not be cut off when napari quits waits there."""
    app = QApplication.instance()
    if app is not None and callback not in _ON_QUIT:
        app.aboutToQuit.connect(callback)
        _ON_QUIT.add(callback)


def wait_for_closed_runners(timeout_ms: int = 60_000) -> bool:
    """Block until the jobs of closed runners have finished (at most ``timeout_ms`` each).

    Connected to ``QApplication.aboutToQuit``: quitting napari while the model loads or a
    prediction runs waits for that job instead of tearing the interpreter down under it.

    Returns:
        True when no closed runner has a job left.
    """
    for runner in list(_CLOSING):
        runner._pool.waitForDone(timeout_ms)
    return all(runner._pool.activeThreadCount() == 0 for runner in _CLOSING)


class LatestRunner:
    """Run submitted callables off the UI thread, one at a time (see the module docstring).

    Args:
        on_result: called on the UI thread with the return value of the newest preview job.
        on_busy: called on the UI thread with True when work starts and False when all queues
            are empty (drive a busy indicator with it).
        progress_desc: text of napari's indeterminate progress bar shown while a job runs
            (None: no napari progress bar).

    Exceptions raised by a job are not caught here: napari's worker relays them as error
    notifications with their traceback (they are bugs). Jobs report user errors by returning
    them (see ``PredictionEngine.run``).
    """

    def __init__(
        self,
        on_result: Callable[[Any], None],
        on_busy: Callable[[bool], None] | None = None,
        progress_desc: str | None = None,
    ) -> None:
        self._on_result = on_result
        self._on_busy = on_busy
        self._progress_desc = progress_desc
        self._worker: Any = None
        self._pending: tuple[int, Callable[[], Any]] | None = None
        self._kept: deque[tuple[Callable[[], Any], Callable[[Any], None]]] = deque()
        self._ticket = 0
        self._closed = False
        self._on_stopped: Callable[[], None] | None = None
        # One long-lived thread for every job: torch's intra-op (OpenMP) threads belong to the
        # thread that calls torch, and a new pool thread per job would start another team
        # competing for the cores (measured ~1.4x slower clicks on 2 cores).
        self._pool = QThreadPool()
        self._pool.setMaxThreadCount(1)
        self._pool.setExpiryTimeout(-1)

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        return self._worker is not None or self._pending is not None or bool(self._kept)

    @property
    def ticket(self) -> int:
        """Number of the newest submitted preview job."""
        return self._ticket

    @property
    def closed(self) -> bool:
        """True after :meth:`close`: nothing new starts."""
        return self._closed

    def submit(self, fn: Callable[[], Any]) -> int:
        """Queue preview job ``fn``; it supersedes any preview still waiting.

        Returns:
            the job's ticket (increasing integers).
        """
        if self._closed:
            return self._ticket
        self._ticket += 1
        if self._pending is not None:
            logger.debug("job %d superseded by %d", self._pending[0], self._ticket)
        self._pending = (self._ticket, fn)
        self._start_next()
        return self._ticket

    def submit_kept(self, fn: Callable[[], Any], on_result: Callable[[Any], None]) -> None:
        """Queue a job that is never superseded; ``on_result(value)`` gets its return value."""
        if self._closed:
            return
        self._kept.append((fn, on_result))
        self._start_next()

    def close(self, on_stopped: Callable[[], None] | None = None) -> None:
        """Drop every waiting job and ignore the running one's result (the owner is closing).

        Args:
            on_stopped: called once no job runs any more: at once when idle, else on the UI
                thread when the running job's thread has finished (release shared state there,
                never while a job may still use it).
        """
        self._closed = True
        self._pending = None
        self._kept.clear()
        if self._worker is None:
            if on_stopped is not None:
                on_stopped()
        else:
            self._on_stopped = on_stopped
            _CLOSING.add(self)  # alive until the running job's thread has finished
            call_on_quit(wait_for_closed_runners)

    def _start_next(self) -> None:
        if self._worker is not None or self._closed:
            return
        if self._kept:
            fn, callback = self._kept.popleft()
            deliver: Callable[[Any], None] = callback
        elif self._pending is not None:
            ticket, fn = self._pending
            self._pending = None

            def deliver(value: Any, t: int = ticket) -> None:
                if t == self._ticket:
                    self._on_result(value)
                else:
                    logger.debug("dropping stale result of job %d (newest %d)", t, self._ticket)

        else:
            if self._on_busy is not None:
                self._on_busy(False)
            return
        kwargs: dict[str, Any] = {}
        if self._progress_desc:
            kwargs["_progress"] = {"desc": self._progress_desc}
        worker = create_worker(fn, **kwargs)
        worker.returned.connect(lambda value: None if self._closed else deliver(value))
        worker.finished.connect(lambda w=worker: self._finished(w))
        if self._on_busy is not None:
            self._on_busy(True)
        self._worker = worker
        self._pool.start(worker)  # our own one-thread pool (see __init__), not the global one

    def _finished(self, worker: Any) -> None:
        if worker is not self._worker:
            return
        self._worker = None
        if self._closed:
            _CLOSING.discard(self)
            stopped, self._on_stopped = self._on_stopped, None
            if stopped is not None:
                stopped()
            return  # the owner is gone: no other callbacks into a closed widget
        self._start_next()
