"""Latest-click-wins runner over napari thread workers; the only module that knows threads.

Jobs run one at a time in a napari ``FunctionWorker`` so the viewer stays responsive. While a job
runs, a newly submitted job does not start a second thread: it waits in a single "pending" slot,
and a newer submission replaces it (latest wins). The result of a job is delivered only if no
newer job was submitted meanwhile, so the user never sees a stale prediction after a newer click.

Jobs must therefore be *idempotent full-state* jobs ("bring the session to these clicks and
predict"), which is what :class:`napari_ritm.napari.engine.PredictionEngine` runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker

logger = logging.getLogger(__name__)

__all__ = ["LatestRunner"]


class LatestRunner:
    """Run submitted callables off the UI thread, one at a time, delivering only the newest result.

    Args:
        on_result: called on the UI thread with the return value of the newest job.
        on_busy: called on the UI thread with True when work starts and False when the queue
            empties (drive a busy indicator with it).
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
        self._ticket = 0
        self._closed = False

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        return self._worker is not None or self._pending is not None

    @property
    def ticket(self) -> int:
        """Number of the newest submitted job."""
        return self._ticket

    def submit(self, fn: Callable[[], Any]) -> int:
        """Queue ``fn`` to run in a worker thread; it supersedes any job still waiting.

        Returns:
            the job's ticket (increasing integers).
        """
        if self._closed:
            return self._ticket
        self._ticket += 1
        if self._worker is None:
            self._start(self._ticket, fn)
        else:
            if self._pending is not None:
                logger.debug("job %d superseded by %d", self._pending[0], self._ticket)
            self._pending = (self._ticket, fn)
        return self._ticket

    def close(self) -> None:
        """Drop waiting jobs and ignore results of the running one (widget closing)."""
        self._closed = True
        self._pending = None

    def _start(self, ticket: int, fn: Callable[[], Any]) -> None:
        if self._on_busy is not None and self._worker is None:
            self._on_busy(True)
        kwargs: dict[str, Any] = {}
        if self._progress_desc:
            kwargs["_progress"] = {"desc": self._progress_desc}
        worker = create_worker(fn, **kwargs)
        worker.returned.connect(lambda value, t=ticket: self._returned(t, value))
        worker.finished.connect(lambda w=worker: self._finished(w))
        self._worker = worker
        worker.start()

    def _returned(self, ticket: int, value: Any) -> None:
        if self._closed:
            return
        if ticket == self._ticket:
            self._on_result(value)
        else:
            logger.debug("dropping stale result of job %d (newest %d)", ticket, self._ticket)

    def _finished(self, worker: Any) -> None:
        if worker is not self._worker:
            return
        self._worker = None
        if self._closed:
            return  # the owner is gone: no callbacks into a deleted widget
        if self._pending is not None:
            ticket, fn = self._pending
            self._pending = None
            self._start(ticket, fn)
        elif self._on_busy is not None:
            self._on_busy(False)
