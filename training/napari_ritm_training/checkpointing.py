"""What a run saves and how it comes back: the run folder, ``resume.pth``, ``last``/``best``.

``last.pth`` / ``best.pth`` are official-format checkpoints with our metadata (loadable by
:func:`napari_ritm.model.load_checkpoint` and by the official code); ``resume.pth`` holds
everything else needed to continue exactly: optimiser, scheduler, position, history, RNG.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from napari_ritm.errors import CheckpointError, RitmError
from napari_ritm.fileio import atomic_write, to_jsonable

from .config import TrainConfig
from .reporting import machine_info

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)

__all__ = [
    "BEST_FILE",
    "LAST_FILE",
    "RESUME_FILE",
    "checkpoint_metadata",
    "find_resumable",
    "load_resume",
    "prepare_new_run",
    "restore",
    "run_finished",
    "save_resume",
    "save_weights",
]

RESUME_FILE = "resume.pth"
LAST_FILE = "last.pth"
BEST_FILE = "best.pth"

#: What to do when the disk fills up during a run.
RESUME_ADVICE = "free disk space or choose another output folder, then continue with --resume"


def prepare_new_run(run_dir: Path) -> None:
    """Create the folder of a new run; refuse one that already holds a run.

    Raises:
        RitmError: the folder holds a run (continue it with ``--resume``) or cannot be made.
    """
    if run_dir.exists() and any(
        (run_dir / n).exists() for n in (RESUME_FILE, LAST_FILE, "log.csv")
    ):
        raise RitmError(
            f"{run_dir} already holds a training run; continue it with --resume, "
            "or choose another --out folder"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from napari_ritm.fileio import disk_error

        raise disk_error(run_dir / "config.json", exc, advice=RESUME_ADVICE) from exc


def load_resume(run_dir: Path, given: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """The stored settings (with what may change on resume taken from ``given``) and state.

    Only the length (``epochs``; 0 keeps the stored count), the learning-rate ``milestones``
    (neither for a time-budgeted run: it keeps its plan and the time already used) and the
    machine (``device``, ``threads``, ``amp``) may change; everything else is the run's.

    Raises:
        RitmError: there is no ``resume.pth`` in ``run_dir``.
        CheckpointError: the state is unreadable, or ``given.variant`` differs from the run's.
    """
    state_path = run_dir / RESUME_FILE
    if not state_path.is_file():
        raise RitmError(
            f"cannot resume: {state_path} does not exist; start a new run in an empty "
            "folder, or point --out at the folder of the stopped run"
        )
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted or foreign file: torch raises many types
        raise CheckpointError(f"cannot read the resume state {state_path}: {exc}") from exc
    saved = TrainConfig.from_dict(state["config"])
    if state.get("plan") is None:  # a budgeted run keeps its plan (and its budget)
        saved.epochs = given.epochs or saved.epochs
        if given.milestones is not None:
            saved.milestones = list(given.milestones)
    saved.device, saved.threads, saved.amp = given.device, given.threads, given.amp
    saved.out, saved.resume = given.out, True
    if given.variant is not None and given.variant != saved.variant:
        raise CheckpointError(
            f"the run in {run_dir} trains {saved.variant}, not {given.variant}; drop "
            "--variant or start a new run"
        )
    return saved, state


def save_resume(trainer: Trainer, epoch: int, iteration: int) -> Path:
    """Write ``resume.pth``: weights, optimiser, scheduler, position, history and RNG state.

    Args:
        trainer: the run (rank 0).
        epoch, iteration: the position to continue from (0-based epoch, steps done in it).
    """
    assert trainer.model is not None
    state_dict = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    state = {
        "state_dict": state_dict,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.use_amp else {},
        "epoch": epoch,
        "iteration": iteration,
        "config": trainer.config.to_dict(),
        "history": to_jsonable(trainer.history),
        "best_key": trainer.best_key,
        "best_metrics": to_jsonable(trainer.best_metrics),
        "init_source": trainer.init_source,
        "command": trainer.command,
        "resumed_with": to_jsonable(trainer.resumed_with),
        "torch_rng": torch.get_rng_state(),
        "world_size": trainer.world_size,
        # Partial sums of an epoch stopped in the middle, so its log row covers all steps.
        "epoch_sums": dict(trainer.epoch_sums) if iteration else {},
        "epoch_seconds": trainer.epoch_seconds if iteration else 0.0,
        "best_epoch": trainer.best_epoch,
        "plan": trainer.plan.to_dict() if trainer.plan is not None else None,
        "precision": trainer.precision,  # a resumed run keeps it (build.precision_of)
    }
    # Weights + two Adam moments, about three times the weights.
    needed = 3 * sum(t.numel() * t.element_size() for t in state_dict.values())
    return atomic_write(
        trainer.run_dir / RESUME_FILE,
        lambda tmp: torch.save(state, tmp),
        needed_bytes=needed,
        advice=RESUME_ADVICE,
    )


def checkpoint_metadata(
    trainer: Trainer, epoch: int, iteration: int, metrics: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``metadata`` entry of ``last.pth`` / ``best.pth`` (plain data only)."""
    cfg = trainer.config
    return to_jsonable(
        {
            "kind": "napari-ritm-finetune",
            "variant": cfg.variant,
            "normalization": {
                "uint8": "value / 255",
                "other": "per-image percentiles, clipped",
                "percentiles": list(cfg.percentiles),
                "grey": "replicated to RGB",
            },
            "data": trainer.data.summary,
            "split": {k: v for k, v in trainer.data.split.items() if k != "val_objects"},
            "metrics": metrics,
            "epoch": epoch,
            "iteration": iteration,
            "command": trainer.command,
            "resumed_with": trainer.resumed_with,
            "precision": trainer.precision,
            "config": cfg.to_dict(),
            "init": trainer.init_source,
            "seed": cfg.seed,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "world_size": trainer.world_size,
            "before": _before(trainer),
            "time_budget": trainer.plan.to_dict() if trainer.plan is not None else None,
        }
    )


def _before(trainer: Trainer) -> dict[str, Any] | None:
    """Validation scores of the starting weights (the epoch-0 row), if they were measured."""
    from .report import scores_of_row

    start = next((r for r in trainer.history if r.get("epoch") == 0), None)
    scores = scores_of_row(start) if start else None
    return scores.as_rows() | {"n_objects": scores.n_objects} if scores else None


def save_weights(
    trainer: Trainer, name: str, epoch: int, iteration: int, metrics: dict[str, Any] | None
) -> Path:
    """Official-format checkpoint ``name`` with :func:`checkpoint_metadata` in the run folder."""
    from napari_ritm.model import save_checkpoint

    assert trainer.model is not None
    return save_checkpoint(
        trainer.model,
        trainer.run_dir / name,
        metadata=checkpoint_metadata(trainer, epoch, iteration, metrics),
    )


def copy_last(run_dir: Path, name: str) -> Path:
    """Copy ``last.pth`` to ``name`` (``best.pth``, ``epoch_NNN.pth``) atomically."""
    return atomic_write(
        run_dir / name,
        lambda tmp: shutil.copyfile(run_dir / LAST_FILE, tmp),
        needed_bytes=(run_dir / LAST_FILE).stat().st_size,
        advice=RESUME_ADVICE,
    )


def _recorded_command(run_dir: Path) -> str:
    """The command in ``config.json`` (resume states older than the "command" entry)."""
    import json

    try:
        return str(json.loads((run_dir / "config.json").read_text("utf-8")).get("command", ""))
    except (OSError, ValueError):
        return ""


def restore(trainer: Trainer, state: dict[str, Any]) -> None:
    """Continue ``trainer`` from a ``resume.pth`` state: optimiser, schedule, position, RNG.

    The learning rates follow the trainer's (possibly changed) ``milestones``, not the stored
    scheduler's, so a resume may move or add learning-rate drops.
    """
    cfg = trainer.config
    for param_state in state["optimizer"]["state"].values():
        if "exp_avg_sq" in param_state and "exp_avg" not in param_state:
            # a packed run (scripts/pack_run.py) leaves Adam's first moments out: a short running
            # mean that refills within ~20 steps, not worth 40% of a committed file
            param_state["exp_avg"] = torch.zeros_like(param_state["exp_avg_sq"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scheduler.milestones = Counter(cfg.milestones)
    drops = bisect.bisect_right(sorted(cfg.milestones), int(state["epoch"]))
    for group in trainer.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * cfg.lr_gamma**drops
    if trainer.use_amp and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.start_epoch = int(state["epoch"])
    trainer.start_iter = int(state["iteration"])
    trainer.history = list(state.get("history", []))
    trainer.best_key = state.get("best_key")
    trainer.best_metrics = state.get("best_metrics")
    trainer.epoch_sums = dict(state.get("epoch_sums", {}))
    trainer.epoch_seconds = float(state.get("epoch_seconds", 0.0))
    trainer.best_epoch = state.get("best_epoch")
    if state.get("plan") is not None:
        from . import budgeted
        from .budget import BudgetPlan

        trainer.plan = BudgetPlan.from_dict(state["plan"])
        trainer.time_offset = trainer.plan.used_s  # the budget counts earlier sessions
        trainer.step_seconds = trainer.plan.seconds_per_step
        drop = trainer.plan.drop_step
        steps = int(state["epoch"]) * cfg.iters_per_epoch + int(state["iteration"])
        if drop is not None and steps >= drop:
            budgeted.apply_drop(trainer)
    # The run's own command stays the one that started it; resumes are listed apart.
    trainer.command = state.get("command") or _recorded_command(trainer.run_dir)
    trainer.resumed_with = list(state.get("resumed_with", []))
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    log.info(
        "resuming %s at epoch %d, iteration %d",
        trainer.run_dir,
        trainer.start_epoch + 1,
        trainer.start_iter,
    )


def run_finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` has ended (its plan or its epochs done, or the budget)."""
    import json

    try:
        record = json.loads((run_dir / "config.json").read_text("utf-8"))
        rows = json.loads((run_dir / "log.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    plan = record.get("plan")
    if plan:
        return bool(plan.get("ended_by_budget")) or plan["steps_done"] >= plan["total_steps"]
    return bool(rows) and int(rows[-1]["epoch"]) >= int(record["config"]["epochs"])


def find_resumable(base: Path) -> Path | None:
    """The newest run folder directly under ``base`` that has a ``resume.pth`` and has not ended.

    Used to offer "resume" after napari was closed during a run.
    """
    try:
        folders = [p for p in Path(base).iterdir() if (p / RESUME_FILE).is_file()]
    except OSError:
        return None
    folders.sort(key=lambda p: (p / RESUME_FILE).stat().st_mtime, reverse=True)
    return next((p for p in folders if not run_finished(p)), None)
