"""What a run tells its caller while it goes: :class:`TrainingReport` ("before -> now").

:func:`napari_ritm_training.run_finetune` calls ``on_report(report)`` when the split is known,
after the starting weights are validated ("before"), every few steps (loss trace), after each
epoch's validation and at the end. Everything is plain data built from the log rows, so the
napari dock (or any caller) can show it without touching the trainer.

Scores are those of the reference clicker on the held-back objects: NoC@85, NoC@90 and
mIoU@1/3/5 (None when the click budget is smaller than k).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["REPORT_KS", "Scores", "SplitInfo", "TrainingReport", "make_report", "scores_of_row"]

#: The mIoU@k a report shows.
REPORT_KS = (1, 3, 5)


@dataclass(frozen=True)
class Scores:
    """Validation scores of one model on one set of held-back objects.

    Attributes:
        noc85, noc90: mean number of clicks to reach IoU 0.85 / 0.90 (capped at the budget).
        miou: ``{k: mIoU@k}`` for k in :data:`REPORT_KS` within the click budget.
        n_objects: objects evaluated.
    """

    noc85: float
    noc90: float
    miou: dict[int, float]
    n_objects: int

    def as_rows(self) -> dict[str, float]:
        """``{"NoC@85": .., "NoC@90": .., "mIoU@1": .., ...}`` in display order."""
        rows = {"NoC@85": self.noc85, "NoC@90": self.noc90}
        rows.update({f"mIoU@{k}": v for k, v in sorted(self.miou.items())})
        return rows


def scores_of_row(row: dict[str, Any], prefix: str = "val_") -> Scores | None:
    """The :class:`Scores` in a log row (``val_`` or ``general_`` columns); None: not validated."""
    if row.get(f"{prefix}noc85") is None:
        return None
    miou = {
        k: float(row[f"{prefix}miou@{k}"])
        for k in REPORT_KS
        if row.get(f"{prefix}miou@{k}") is not None
    }
    return Scores(
        noc85=float(row[f"{prefix}noc85"]),
        noc90=float(row[f"{prefix}noc90"]),
        miou=miou,
        n_objects=int(row.get(f"{prefix}n") or 0),
    )


@dataclass(frozen=True)
class SplitInfo:
    """What was trained on and what was held back (by image, stack or slice).

    Attributes:
        train_images, train_objects: 2D images (planes) and objects trained on.
        val_images, val_objects: held-back images and all their objects.
        val_evaluated: held-back objects the validation evaluates (at most ``val_max_objects``).
        unit: what was split: "image" (files, layers, stacks) or "slice" (a single stack).
        general_objects: held-out general objects that measure forgetting (0: none).
    """

    train_images: int
    train_objects: int
    val_images: int
    val_objects: int
    val_evaluated: int
    unit: str
    general_objects: int = 0

    def describe(self) -> str:
        """e.g. "train 3 images / 41 objects; held back 1 image / 12 objects (by slice)"."""
        return (
            f"train {self.train_images} image(s) / {self.train_objects} objects; held back "
            f"{self.val_images} image(s) / {self.val_objects} objects (by {self.unit})"
        )


@dataclass(frozen=True)
class TrainingReport:
    """The state of a run for display: split, before -> now, curves, time.

    Attributes:
        stage: "split", "before", "step", "epoch" or "end".
        epoch, epochs: epochs done and planned.
        step, total_steps: optimiser steps done and planned.
        split: the train / held-back split.
        before, now: scores of the starting weights and of the latest validation.
        best: scores of the best model so far (the one kept).
        best_epoch: its epoch (None: none validated yet).
        general_before, general_now: the same on general held-out objects (forgetting).
        losses: ``(step, mean loss)`` points (per epoch, plus recent steps).
        val_miou: ``(epoch, mean mIoU@1..k)`` points, epoch 0 = before.
        elapsed_s: wall time since the run started (this session, plus earlier ones).
        remaining_s: estimated time left (None: unknown).
        budget_s: the time budget (None: epochs were given).
        plan: the budget plan (:meth:`BudgetPlan.to_dict`) once it is fixed.
        checkpoint: the model kept (best.pth, else last.pth) once the run has ended.
        registered: the name the model was registered under, if any.
    """

    stage: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    split: SplitInfo | None
    before: Scores | None = None
    now: Scores | None = None
    best: Scores | None = None
    best_epoch: int | None = None
    general_before: Scores | None = None
    general_now: Scores | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_miou: list[tuple[int, float]] = field(default_factory=list)
    elapsed_s: float = 0.0
    remaining_s: float | None = None
    budget_s: float | None = None
    plan: dict[str, Any] | None = None
    checkpoint: str | None = None
    registered: str | None = None

    def table(self) -> list[tuple[str, float | None, float | None]]:
        """``(metric, before, now)`` rows: NoC@85, NoC@90, mIoU@1/3/5."""
        before = self.before.as_rows() if self.before else {}
        now = self.now.as_rows() if self.now else {}
        names = list(dict.fromkeys([*before, *now]))
        return [(n, before.get(n), now.get(n)) for n in names]


def _mean_miou(row: dict[str, Any]) -> float | None:
    values = [v for k, v in row.items() if k.startswith("val_miou@") and v is not None]
    return sum(values) / len(values) if values else None


def make_report(
    trainer: Trainer,
    stage: str,
    *,
    elapsed_s: float,
    remaining_s: float | None,
    recent_losses: list[tuple[int, float]] | None = None,
    checkpoint: str | None = None,
    registered: str | None = None,
) -> TrainingReport:
    """The report of ``trainer`` now, built from its log rows (``trainer.history``)."""
    history = trainer.history
    validated = [r for r in history if r.get("val_noc85") is not None]
    start = next((r for r in validated if r["epoch"] == 0), None)
    latest = validated[-1] if validated else None
    best_epoch = trainer.best_epoch
    best_row = next((r for r in validated if r["epoch"] == best_epoch), None)
    losses = [(int(r["step"]), float(r["loss"])) for r in history if r.get("loss") is not None]
    losses = sorted({**dict(losses), **dict(recent_losses or [])}.items())
    val_miou = [(int(r["epoch"]), m) for r in validated if (m := _mean_miou(r)) is not None]
    plan = trainer.plan.to_dict() if trainer.plan is not None else None
    return TrainingReport(
        stage=stage,
        epoch=max((int(r["epoch"]) for r in history), default=0),
        epochs=trainer.config.epochs,
        step=trainer.steps_done,
        total_steps=trainer.steps_total,
        split=trainer.data.split_info if hasattr(trainer, "data") else None,
        before=scores_of_row(start) if start else None,
        now=scores_of_row(latest) if latest else None,
        best=scores_of_row(best_row) if best_row else None,
        best_epoch=best_epoch,
        general_before=scores_of_row(start, "general_") if start else None,
        general_now=scores_of_row(latest, "general_") if latest else None,
        losses=losses,
        val_miou=val_miou,
        elapsed_s=elapsed_s,
        remaining_s=remaining_s,
        budget_s=trainer.config.time_budget_s,
        plan=plan,
        checkpoint=checkpoint,
        registered=registered,
    )
