"""Training to a time budget: parse "15m", measure, then fix a plan of epochs and steps.

A budgeted run (``TrainConfig.time_budget_s``) first validates the starting weights (which
measures the validation time), then runs a few warm-up steps (which measures the seconds per
step), then calls :func:`make_plan`. The plan fixes the number of epochs (one validation after
each), the steps per epoch and the step at which the learning rate drops (~85% of the steps).
While training, :meth:`BudgetPlan.time_left_for_step` keeps the run within the budget even when
the machine gets slower than measured: the epoch then ends early and is still validated.

Torch-free (the CLI imports :func:`parse_duration` for ``--time-budget``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from napari_ritm.errors import RitmError

__all__ = [
    "DROP_AT",
    "WARMUP_STEPS",
    "BudgetPlan",
    "format_duration",
    "make_plan",
    "parse_duration",
]

#: Optimiser steps timed before the plan is fixed (the first one, slower, is not counted).
WARMUP_STEPS = 4
#: Where the learning rate drops, as a share of the planned steps.
DROP_AT = 0.85
#: Share of the remaining time at most spent on validation (more epochs = more validations).
VALIDATION_SHARE = 0.25
#: Most validations a plan makes (one per epoch).
MAX_EPOCHS = 10

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|hr|min|m|sec|s)?", re.IGNORECASE)


def parse_duration(text: str | float) -> float:
    """Seconds in a duration such as ``"15m"``, ``"90s"``, ``"1h"``, ``"1h30m"`` or ``"600"``.

    A bare number is seconds.

    Raises:
        RitmError: the text is not a positive duration.
    """
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        while pos < len(s):
            m = _PART.match(s, pos)
            if m is None or m.end() == pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2) or "s"]
            pos = m.end()
        if not s or pos != len(s):
            raise RitmError(f"cannot read the duration {text!r}; write e.g. 90s, 15m, 1h or 1h30m")
    if not math.isfinite(seconds) or seconds <= 0:
        raise RitmError(f"the time budget must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``"15m"``, ``"1h30m"``, ``"90s"`` style text (rounded to seconds)."""
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s else ""]
    return "".join(parts) or "0s"


@dataclass
class BudgetPlan:
    """The schedule a time budget gave, and what it was derived from.

    Attributes:
        budget_s: the whole budget (setup, validations and saving included).
        spent_before_plan_s: time used before planning (setup, first validation, warm-up).
        warmup_steps: steps run before planning (they belong to the first epoch).
        seconds_per_step: measured mean time of a training step (warm-up, first step excluded).
        validation_s: measured time of one validation (0 without validation objects).
        overhead_s: measured time of the per-epoch writes (logs, checkpoints).
        epochs: planned epochs (one validation after each).
        iters_per_epoch: planned steps per epoch.
        total_steps: ``epochs * iters_per_epoch``.
        drop_step: global step from which the learning rate is multiplied by ``lr_gamma``
            (None: no drop, fewer than 2 steps).
        planned_s: what the plan is expected to take in all (``<= budget_s`` when it fits).
        used_s: wall time used so far (updated while training; kept across resumes).
        steps_done: steps run so far.
        ended_by_budget: the budget ended the run before its planned steps.
    """

    budget_s: float
    spent_before_plan_s: float
    warmup_steps: int
    seconds_per_step: float
    validation_s: float
    overhead_s: float
    epochs: int
    iters_per_epoch: int
    total_steps: int
    drop_step: int | None
    planned_s: float
    used_s: float = 0.0
    steps_done: int = 0
    ended_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded in config.json, the checkpoints and resume.pth)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetPlan:
        """Rebuild from :meth:`to_dict` (unknown keys ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        """One line for the log."""
        drop = f", lr x0.1 from step {self.drop_step}" if self.drop_step is not None else ""
        return (
            f"time budget {format_duration(self.budget_s)}: {self.epochs} epoch(s) x "
            f"{self.iters_per_epoch} steps = {self.total_steps} steps at "
            f"{self.seconds_per_step:.2f} s/step, {self.epochs} validation(s) of "
            f"{self.validation_s:.1f} s{drop}; planned {self.planned_s:.0f} s"
        )

    def time_left_for_step(self, elapsed_s: float, seconds_per_step: float, epoch: int) -> bool:
        """Whether one more step fits before the budget in epoch ``epoch`` (0-based).

        Reserves the validations and writes of this epoch and the ones after it.

        Args:
            elapsed_s: time used so far.
            seconds_per_step: the current estimate of a step's time.
            epoch: the epoch the step belongs to.
        """
        ends = max(1, self.epochs - epoch)
        reserve = ends * (self.validation_s + self.overhead_s)
        return elapsed_s + seconds_per_step + reserve <= self.budget_s


def make_plan(
    *,
    budget_s: float,
    elapsed_s: float,
    seconds_per_step: float,
    validation_s: float,
    overhead_s: float,
    warmup_steps: int,
    drop_at: float = DROP_AT,
    max_epochs: int = MAX_EPOCHS,
    validation_share: float = VALIDATION_SHARE,
) -> BudgetPlan:
    """The schedule that fills what is left of the budget.

    Each epoch ends with a validation and the writes (``validation_s + overhead_s``); as many
    epochs are planned as fit in ``validation_share`` of the remaining time (at least 1, at most
    ``max_epochs``); the rest is training steps, split evenly over the epochs (the first epoch
    holds the warm-up steps). The learning rate drops at ``drop_at`` of the steps.

    Args:
        budget_s: the whole budget.
        elapsed_s: time used so far (setup, first validation, warm-up).
        seconds_per_step: measured time of one training step.
        validation_s: measured time of one validation (0 when there is none).
        overhead_s: measured time of one epoch's writes.
        warmup_steps: steps already run (they count towards the first epoch).

    Returns:
        The plan; with no time left it has one epoch of just the warm-up steps.
    """
    step = max(float(seconds_per_step), 1e-6)
    per_epoch = float(validation_s) + float(overhead_s)
    remaining = float(budget_s) - float(elapsed_s)
    epochs = 1
    if per_epoch > 0:
        epochs = int(validation_share * remaining // per_epoch)
    else:  # no validation: a few epochs still give checkpoints and log rows
        epochs = 5
    epochs = max(1, min(max_epochs, epochs))
    while True:
        new_steps = max(0, int((remaining - epochs * per_epoch) // step))
        total = warmup_steps + new_steps
        ipe = total // epochs
        if epochs == 1 or ipe >= max(1, warmup_steps):
            break
        epochs -= 1
    ipe = max(ipe, warmup_steps, 1)
    total = epochs * ipe
    drop = round(drop_at * total) if total >= 2 else None
    if drop is not None:
        drop = min(total - 1, max(1, drop))
    planned = elapsed_s + (total - warmup_steps) * step + epochs * per_epoch
    return BudgetPlan(
        budget_s=float(budget_s),
        spent_before_plan_s=float(elapsed_s),
        warmup_steps=int(warmup_steps),
        seconds_per_step=step,
        validation_s=float(validation_s),
        overhead_s=float(overhead_s),
        epochs=epochs,
        iters_per_epoch=ipe,
        total_steps=total,
        drop_step=drop,
        planned_s=planned,
        used_s=float(elapsed_s),
        steps_done=int(warmup_steps),
    )
