"""Register a run's model under a name (``--register NAME``): one click away in the plugin.

:func:`register_model` imports the kept checkpoint (``best.pth``) with
:func:`napari_ritm.weights.import_weights`, which checks it strictly and records its sha256;
``napari-ritm weights list`` and the RITM dock's model list then show it by name. The
checkpoint's own metadata already says what it was trained on, when, and its scores before and
after; ``registered.json`` in the run folder repeats them with the name.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_ritm.errors import RitmError

from . import checkpointing, reporting
from .report import scores_of_row

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["check_name", "improves_on_start", "register_model"]

log = logging.getLogger(__name__)


def check_name(name: str, overwrite: bool) -> None:
    """Refuse, before training, a name that the registry owns or that is imported already.

    Raises:
        RitmError: the name is taken (or malformed); the message says how to fix it.
    """
    from napari_ritm.weights.registry import imported_path, lookup_weights

    taken = lookup_weights(name)
    if taken is not None:
        raise RitmError(
            f"--register {name}: the name belongs to the registry entry '{taken.name}'; "
            "choose another name"
        )
    path = imported_path(name)
    if path is None:
        raise RitmError(f"--register {name}: invalid name (letters, digits, '.', '_', '-')")
    if path.exists() and not overwrite:
        raise RitmError(
            f"--register {name}: weights of that name are already imported ({path}); choose "
            "another name or pass --register-overwrite"
        )


def register_model(trainer: Trainer, checkpoint: Path) -> str | None:
    """Import the run's best model as ``trainer.config.register``; returns the name, or None.

    Only a validated best model (``best.pth``) that beats the starting weights on the held-back
    objects is registered: a run stopped before its first validation has none, and a run that
    did not improve keeps the starting model (the log says so in both cases).
    """
    from napari_ritm.weights import import_weights

    cfg = trainer.config
    name = cfg.register
    if not name:
        return None
    if checkpoint.name != checkpointing.BEST_FILE:
        log.warning("not registering '%s': no validated model yet (%s)", name, checkpoint.name)
        return None
    if not improves_on_start(trainer):
        log.warning(
            "not registering '%s': the best epoch (%s) is not better than the starting model "
            "on the held-back objects (%s); keep using the starting model",
            name,
            trainer.best_epoch,
            cfg.best_metric,
        )
        return None
    path = import_weights(
        checkpoint, name, overwrite=cfg.register_overwrite, description=describe(trainer)
    )
    record = registration_record(trainer, name, path, checkpoint)
    reporting.write_json(trainer.run_dir / "registered.json", record)
    log.info("registered %s as '%s' (%s)", checkpoint, name, path)
    return name


def describe(trainer: Trainer) -> str:
    """One line for ``weights list``: start, data, held-back NoC@85 before -> after, date."""
    origin = trainer.config.from_weights or trainer.init_source or "?"
    start = Path(str(origin)).stem if str(origin).endswith((".pth", ".pt")) else str(origin)
    data = list(trainer.config.data) + [g for d in trainer.extra_datasets for g in d.groups]
    names = ", ".join(Path(str(d)).name for d in data[:3]) + (" ..." if len(data) > 3 else "")
    before, after = _validated_start_and_best(trainer)
    scores = (
        f", held-back NoC@85 {before['val_noc85']:.2f} -> {after['val_noc85']:.2f}"
        if before and after
        else ""
    )
    day = _dt.date.today().isoformat()
    return f"fine-tuned from {start} on {names or 'synthetic data'}{scores} ({day})"


def _validated_start_and_best(
    trainer: Trainer,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The validated log rows of the starting weights (epoch 0) and of the best epoch."""
    rows = {r.get("epoch"): r for r in trainer.history if r.get("val_noc85") is not None}
    return rows.get(0), rows.get(trainer.best_epoch)


def improves_on_start(trainer: Trainer) -> bool:
    """Whether the kept (best) epoch beats the starting weights by ``best_metric``.

    True when there is nothing to compare with (no validation of the start).
    """
    from .validation import best_key

    start, best = _validated_start_and_best(trainer)
    if start is None or best is None:
        return start is None

    def key(row: dict[str, Any]) -> list[float]:
        miou = [v for k, v in row.items() if k.startswith("val_miou@") and v is not None]
        metrics = {"noc85": row["val_noc85"], "noc90": row["val_noc90"], "miou_at_k": miou}
        return best_key(metrics, 0.0, trainer.config.best_metric)

    return key(best) < key(start)


def registration_record(
    trainer: Trainer, name: str, path: Path, checkpoint: Path
) -> dict[str, Any]:
    """What ``registered.json`` holds: name, files, data, time, scores before and after."""
    rows = trainer.history
    start = next((r for r in rows if r.get("epoch") == 0), None)
    best = next((r for r in rows if r.get("epoch") == trainer.best_epoch), None)

    def scores(row: dict[str, Any] | None, prefix: str = "val_") -> dict[str, float] | None:
        found = scores_of_row(row, prefix) if row else None
        return found.as_rows() if found else None

    return {
        "name": name,
        "path": str(path),
        "checkpoint": str(checkpoint),
        "run": str(trainer.run_dir),
        "data": list(trainer.config.data) + [d.source or d.name for d in trainer.extra_datasets],
        "layers": [g for d in trainer.extra_datasets for g in d.groups],
        "registered": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "steps": trainer.steps_done,
        "best_epoch": trainer.best_epoch,
        "time_budget": trainer.plan.to_dict() if trainer.plan is not None else None,
        "before": scores(start),
        "after": scores(best),
        "general_before": scores(start, "general_"),
        "general_after": scores(best, "general_"),
    }
