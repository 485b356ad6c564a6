"""Progress reporting: the one callback type of long operations and its terminal (tqdm) view.

Long operations (evaluation, training, downloads) take a plain ``progress(done, total, message)``
callable, the way micro-sam passes ``pbar_update``: the library never knows who listens. The CLIs
show it with :class:`TqdmProgress`; the napari widgets turn it into Qt signals.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any, Literal

__all__ = ["ProgressCallback", "TqdmProgress"]

#: ``progress(done, total, message)``: ``done`` of ``total`` units are finished (``total`` 0 =
#: unknown); ``message`` is one line for people (e.g. "epoch 2/10 step 40/200 loss 0.31").
ProgressCallback = Callable[[int, int, str], None]


class TqdmProgress:
    """A :data:`ProgressCallback` that drives a tqdm bar; use it as a context manager.

    The bar is created at the first call, so log lines printed while data loads stay above it,
    and closed when the ``with`` block ends (also on errors).

    Example::

        with TqdmProgress(unit="obj", desc="model on GOWT1") as progress:
            evaluate_dataset(session, dataset, progress=progress)

    Args:
        unit: what one step counts ("step", "obj", ...).
        desc: fixed text before the bar; with ``message_as="description"`` the messages
            replace it.
        initial: position the bar starts from. None = one before the first reported
            position, so after ``--resume`` the rate and ETA count only this session's steps.
        message_as: where each message goes: "postfix" (after the bar) or "description"
            (before it; the text from the first " (" on is dropped, because it holds the
            caller's own timing, which tqdm already shows).
        leave: keep the finished bar on screen.
        file: the stream (default stderr, so stdout stays for results).
    """

    def __init__(
        self,
        *,
        unit: str = "step",
        desc: str | None = None,
        initial: int | None = 0,
        message_as: Literal["postfix", "description"] = "postfix",
        leave: bool = True,
        file: IO[str] | None = None,
    ) -> None:
        self.unit = unit
        self.desc = desc
        self.initial = initial
        self.message_as = message_as
        self.leave = leave
        self.file = file
        self.bar: Any = None

    def __call__(self, done: int, total: int, message: str) -> None:
        """Move the bar to ``done`` of ``total`` and show ``message``."""
        if self.bar is None:
            from tqdm import tqdm

            initial = max(done - 1, 0) if self.initial is None else self.initial
            self.bar = tqdm(
                total=total or None,
                initial=initial,
                desc=self.desc,
                unit=self.unit,
                leave=self.leave,
                file=self.file if self.file is not None else sys.stderr,
                dynamic_ncols=True,
            )
        bar = self.bar
        if (total or None) != bar.total:
            bar.total = total or None
        bar.n = done
        if self.message_as == "description":
            bar.set_description_str(message.split(" (")[0], refresh=False)
        else:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    def close(self) -> None:
        """Close the bar (if one was shown); safe to call twice."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
