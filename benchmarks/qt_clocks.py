"""Qt event-loop and canvas clocks for the dock benchmarks (``bench_widget.py``).

``pump`` runs a real Qt event loop until a condition holds, re-checking after every canvas paint
(``PaintClock``) so the measured times are the paints' and the preview writes' own, not a
polling timer's; ``PreviewClock`` records when the dock's preview write returned;
``renderer_cpu_s`` reads the software-GL (llvmpipe) threads' CPU time from /proc.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

WAIT_S = 300.0  # give up on one measurement after this long (a hung worker)
POLL_S = 0.002  # sleep between event-loop passes while settling
# pump() also checks after every canvas paint; the timer only catches the rest. The times are
# taken by the paint and preview hooks, not by the check: a slower timer costs no precision but
# takes less CPU and GIL from the worker (a 2 ms timer measurably slowed it)
POLL_MS = 20


def pump(app: Any, until: Callable[[], bool], timeout: float = WAIT_S) -> float:
    """Run a Qt event loop until ``until()`` is true; returns the time it became true.

    A real ``QEventLoop.exec()``, as napari's own loop: the UI thread waits for events with
    the GIL released (a polling ``processEvents`` loop holds it and slows the worker's Python
    down). ``until`` is checked after every canvas paint and every POLL_MS by a timer.
    """
    from qtpy.QtCore import QEventLoop, QTimer

    del app  # the running QApplication's loop is used
    loop = QEventLoop()
    done: list[float] = []
    deadline = time.perf_counter() + timeout

    def check() -> None:
        if done:
            return
        if until():
            done.append(time.perf_counter())
            loop.quit()
        elif time.perf_counter() > deadline:
            loop.quit()

    timer = QTimer()
    timer.setInterval(POLL_MS)
    timer.timeout.connect(check)
    _CHECKS.append(check)
    try:
        check()
        if not done:
            timer.start()
            loop.exec()
    finally:
        timer.stop()
        _CHECKS.remove(check)
    if not done:
        raise TimeoutError("no result within the time limit")
    return done[0]


#: pump checks to run after each canvas paint (see PaintClock)
_CHECKS: list[Callable[[], None]] = []


def settle(app: Any, seconds: float = 0.3) -> None:
    """Process events for a while (layers added, textures uploaded, first paints)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(POLL_S)


def renderer_cpu_s() -> float:
    """CPU seconds used so far by this process's software OpenGL threads (Mesa llvmpipe).

    Under Xvfb the canvas is rasterised on the CPU by these threads; on a machine with a GPU
    this work is not on the CPU at all. 0.0 where /proc is not available.
    """
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if not f.read().startswith("llvmpipe"):
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def median_ms(values: Sequence[float]) -> float:
    """Median of seconds, in ms (NaN when empty)."""
    return 1000.0 * statistics.median(values) if values else float("nan")


class PaintClock:
    """Times of the canvas's paints (vispy ``draw`` events, recorded after the scene drew)."""

    def __init__(self, viewer: Any) -> None:
        self.times: list[float] = []
        canvas = viewer.window._qt_viewer.canvas._scene_canvas  # no public handle on the canvas
        canvas.events.draw.connect(self._on_draw, position="last")
        self._canvas = canvas

    def _on_draw(self, _event: Any = None) -> None:
        self.times.append(time.perf_counter())
        for check in list(_CHECKS):
            check()

    def painted_after(self, t: float) -> bool:
        """Whether the canvas painted after time ``t``."""
        return bool(self.times) and self.times[-1] > t

    def first_after(self, t: float) -> float:
        """The first paint time after ``t`` (call only when :meth:`painted_after`)."""
        return next(x for x in self.times if x > t)

    def close(self) -> None:
        """Stop listening."""
        self._canvas.events.draw.disconnect(self._on_draw)


class PreviewClock:
    """Wraps the widget's ``preview.draw``: when it returned and how many pixels it wrote."""

    def __init__(self, widget: Any) -> None:
        self.done_at: float | None = None
        self.written = 0
        self.clicks = -1  # clicks of the result drawn
        preview = widget.preview
        original = preview.draw

        def timed_draw(*args: Any, **kwargs: Any) -> int:
            written = original(*args, **kwargs)
            result = widget.bridge.result
            self.clicks = -1 if result is None else len(result.request.clicks)
            self.written = int(written)
            self.done_at = time.perf_counter()
            return written

        preview.draw = timed_draw  # instance attribute: the widget calls self.preview.draw

    def reset(self) -> None:
        """Forget the previous draw."""
        self.done_at, self.written, self.clicks = None, 0, -1
