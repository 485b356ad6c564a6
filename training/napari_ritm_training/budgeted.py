"""The trainer's side of a time budget: measure, plan, keep to it, drop the learning rate.

:func:`start` runs before the loop of a new budgeted run: it validates the starting weights
(timing the validation and the log writes), runs :data:`~.budget.WARMUP_STEPS` training steps
(timing them and a checkpoint write) and fixes the :class:`~.budget.BudgetPlan`, which then
replaces the run's ``epochs``, ``iters_per_epoch`` and ``milestones``. During the loop,
:func:`step_fits` says whether one more step fits, :func:`extends` lets the last epoch use
time the plan left over, and :func:`after_step` keeps the timing and drops the learning rate at
the plan's step. The plan is stored in ``resume.pth``; a resumed run
keeps it and the time already used.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import checkpointing, epochs, reporting
from .budget import WARMUP_STEPS, BudgetPlan, make_plan

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["after_step", "apply_drop", "elapsed", "extends", "start", "step_fits"]

log = logging.getLogger(__name__)


def elapsed(trainer: Trainer) -> float:
    """Wall time used by the run: this session's plus earlier sessions' (resumed runs)."""
    return trainer.time_offset + time.perf_counter() - trainer.run_start


def start(trainer: Trainer) -> BudgetPlan:
    """Measure, plan and apply the plan to ``trainer.config`` (a new budgeted run)."""
    cfg = trainer.config
    t0 = time.perf_counter()
    epochs.validate_start(trainer)
    validation_s = time.perf_counter() - t0 if trainer.data.val_samples else 0.0
    t0 = time.perf_counter()
    reporting.write_logs(trainer.run_dir, trainer.history)
    logs_s = time.perf_counter() - t0

    sums: dict[str, float] = {}
    durations = []
    for step in range(WARMUP_STEPS):
        t0 = time.perf_counter()
        parts = trainer.train_step(step)
        durations.append(time.perf_counter() - t0)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        trainer.steps_done = step + 1
        trainer.note_loss(step + 1, parts["loss"])
        trainer.progress_message(f"warm-up step {step + 1}/{WARMUP_STEPS}: timing the steps")
    timed = durations[1:] or durations
    seconds_per_step = sum(timed) / len(timed)
    t0 = time.perf_counter()
    checkpointing.save_weights(trainer, checkpointing.LAST_FILE, 0, WARMUP_STEPS, None)
    weights_s = time.perf_counter() - t0
    # per epoch: last.pth, maybe best.pth (a copy), resume.pth (~3x the weights), the logs
    overhead_s = logs_s + 5.0 * weights_s
    plan = make_plan(
        budget_s=float(cfg.time_budget_s or 0.0),
        elapsed_s=elapsed(trainer),
        seconds_per_step=seconds_per_step,
        validation_s=validation_s,
        overhead_s=overhead_s,
        warmup_steps=WARMUP_STEPS,
    )
    trainer.plan = plan
    if plan.drop_step is not None and plan.drop_step <= WARMUP_STEPS:
        apply_drop(trainer)  # a plan this short drops the rate right after the warm-up
    trainer.step_seconds = seconds_per_step
    cfg.epochs, cfg.iters_per_epoch, cfg.milestones = plan.epochs, plan.iters_per_epoch, []
    trainer.start_epoch, trainer.start_iter = 0, WARMUP_STEPS
    trainer.epoch_sums = sums
    trainer.epoch_seconds = sum(durations)
    reporting.write_run_files(trainer)
    log.info("plan: %s", plan.describe())
    return plan


def step_fits(trainer: Trainer, epoch: int) -> bool:
    """Whether one more step fits in the budget.

    False before the plan's last step marks the run as ended by the budget.
    """
    plan = trainer.plan
    assert plan is not None
    fits = plan.time_left_for_step(elapsed(trainer), trainer.step_seconds, epoch)
    if fits:
        return True
    if trainer.steps_done < plan.total_steps:
        plan.ended_by_budget = True
        log.info("time budget reached after %d of %d steps", trainer.steps_done, plan.total_steps)
    else:
        log.info(
            "time budget used: %d steps (%d planned, %d more in the time left)",
            trainer.steps_done, plan.total_steps, trainer.steps_done - plan.total_steps,
        )  # fmt: skip
    return False


def extends(trainer: Trainer, epoch: int, iteration: int) -> bool:
    """Whether the last epoch of a budgeted run goes on past its planned steps.

    The plan fixes the steps from the warm-up's step time; when the later steps are faster
    (the warm-up pays first-call costs, or the machine got quieter), time would be left at the
    end. The last epoch then keeps taking steps, at the dropped learning rate, until
    :func:`step_fits` says no more fit before its validation: the budget buys every step it
    can. Single-process runs only (the ranks of a distributed run would have to agree).
    """
    cfg = trainer.config
    return (
        trainer.plan is not None
        and trainer.world_size == 1
        and epoch == cfg.epochs - 1
        and iteration >= cfg.iters_per_epoch
    )


def after_step(trainer: Trainer, seconds: float) -> None:
    """Update the step-time estimate and the plan's counters; drop the lr at the plan's step."""
    plan = trainer.plan
    assert plan is not None
    # a slowly moving mean follows a machine that gets busier without reacting to one step
    trainer.step_seconds = 0.8 * trainer.step_seconds + 0.2 * seconds
    plan.steps_done = trainer.steps_done
    plan.used_s = elapsed(trainer)
    if plan.drop_step is not None and trainer.steps_done == plan.drop_step:
        apply_drop(trainer)
        log.info("step %d: learning rate x%g", plan.drop_step, trainer.config.lr_gamma)


def apply_drop(trainer: Trainer) -> None:
    """Multiply every parameter group's learning rate by ``lr_gamma`` (the plan's drop)."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * trainer.config.lr_gamma
