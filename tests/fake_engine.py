"""A deterministic, slightly slow stand-in for the model behind the RITM dock (tests only).

Its "model" is a pure function of the request: a disk of ``RADIUS`` pixels around each positive
click, minus disks around negative clicks, plus the prior mask. Tests can recompute exactly
what any commit must contain.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from napari_ritm.napari.engine import PredictionEngine, Request, Result

RADIUS = 6.0


def fake_mask(request: Request, hw: tuple[int, int]) -> np.ndarray:
    """The fake model's mask for a request (what the committed object must equal)."""
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    mask = np.zeros(hw, dtype=bool)
    if request.prior_mask is not None:
        mask |= np.asarray(request.prior_mask, dtype=bool)
    for click in request.clicks:
        disk = (yy - click.row) ** 2 + (xx - click.col) ** 2 <= RADIUS**2
        mask = mask | disk if click.positive else mask & ~disk
    return mask


class FakeEngine(PredictionEngine):
    """A PredictionEngine whose model is :func:`fake_mask` (deterministic, a little slow)."""

    def __init__(self, delay: float = 0.004) -> None:
        super().__init__(loader=lambda name, device, progress: object())
        self.delay = delay
        self.calls = 0
        self.lock = threading.Lock()
        self.closed_at: int | None = None

    def run(self, request: Request) -> Result:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        result = Result(request)
        if request.image is None:
            return result
        hw = tuple(int(n) for n in np.asarray(request.image).shape[:2])
        probs = fake_mask(request, hw).astype(np.float32)
        result.roi, result.crop, result.hw = (0, hw[0] - 1, 0, hw[1] - 1), probs, hw
        return result
