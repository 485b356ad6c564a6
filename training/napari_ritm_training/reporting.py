"""What a run tells people: run files, ``log.csv``/``log.json``, ``curves.png``, messages.

Every file is written atomically with :mod:`napari_ritm.fileio`, so a crash or a full disk
never leaves a half-written log next to a valid checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ritm.fileio import atomic_write, to_jsonable, write_text_atomic

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "attach_log_file",
    "epoch_row",
    "format_seconds",
    "machine_info",
    "plot_curves",
    "step_message",
    "write_json",
    "write_logs",
    "write_run_files",
]

#: What to do when the disk fills up while a log is written.
_ADVICE = "free disk space or choose another output folder, then continue with --resume"


def format_seconds(seconds: float) -> str:
    """``mm:ss`` or ``h:mm:ss``; "?" when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def machine_info() -> dict[str, Any]:
    """Host, platform, CPU model, Python/torch versions, cores and threads (and the GPU, if any)."""
    import torch

    from napari_ritm.inference.precision import cpu_model

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: Path, value: Any) -> Path:
    """``value`` as indented plain JSON (NaN -> null), written atomically."""
    return write_text_atomic(path, json.dumps(to_jsonable(value), indent=2) + "\n", advice=_ADVICE)


def write_run_files(trainer: Trainer) -> None:
    """``config.json`` (settings, command, init, processes), ``split.json`` and ``data.json``."""
    run_dir = trainer.run_dir
    write_json(
        run_dir / "config.json",
        {
            "config": trainer.config.to_dict(),
            "command": trainer.command,
            "resumed_with": trainer.resumed_with,
            "precision": trainer.precision,
            "init": trainer.init_source,
            "world_size": trainer.world_size,
            "plan": trainer.plan.to_dict() if trainer.plan is not None else None,
        },
    )
    write_json(run_dir / "split.json", trainer.data.split)
    write_json(run_dir / "data.json", trainer.data.summary)


def attach_log_file(run_dir: Path) -> logging.Handler:
    """Copy the training package's log messages (INFO and up) to ``train.log``.

    Returns:
        The handler; remove and close it when the run ends.
    """
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    pkg = logging.getLogger("napari_ritm_training")
    pkg.addHandler(handler)
    if pkg.level == logging.NOTSET or pkg.level > logging.INFO:
        pkg.setLevel(logging.INFO)
    return handler


def step_message(
    epoch: int, epochs: int, step: int, steps: int, loss: float, per_step: float, eta: float
) -> str:
    """The progress line after a step (1-based ``epoch`` and ``step``)."""
    return (
        f"epoch {epoch}/{epochs} step {step}/{steps} loss {loss:.4f} "
        f"({per_step:.2f} s/step, ETA {format_seconds(eta)})"
    )


def epoch_row(
    *,
    epoch: int,
    iters_per_epoch: int,
    batch_size: int,
    lr: float | None,
    means: dict[str, float],
    seconds: float,
    steps: int,
    val_max_clicks: int,
    metrics: dict[str, Any] | None,
    step: int | None = None,
) -> dict[str, Any]:
    """One ``log.csv`` row: training loss parts and timing, validation NoC/mIoU@k (or None).

    Args:
        epoch: epochs finished (1-based; 0 = the starting point, validated before training).
        means: mean loss parts over the epoch's steps ("loss", "nfl", "bce_aux", "clicks").
        seconds: training time of the epoch (without validation).
        steps: steps run in the epoch.
        metrics: the validation summary (:meth:`Report.summary` + "seconds"), None if none ran;
            its "general" entry (forgetting, ``keep_general``) gives ``general_*`` columns.
        step: optimiser steps done (default ``epoch * iters_per_epoch``; a budgeted run's last
            epoch may be shorter).
    """
    step = epoch * iters_per_epoch if step is None else int(step)
    row: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "samples": step * batch_size,
        "lr": lr,
        "loss": means.get("loss"),
        "nfl": means.get("nfl"),
        "bce_aux": means.get("bce_aux"),
        "mean_sim_clicks": means.get("clicks"),
        "train_seconds": seconds if steps else None,
        "seconds_per_step": seconds / steps if steps else None,
        "val_noc85": None,
        "val_noc90": None,
        "val_failures90": None,
        "val_n": 0,
        "val_seconds": None,
    }
    for k in range(1, val_max_clicks + 1):
        row[f"val_miou@{k}"] = None
    if metrics is not None:
        row.update(
            {
                "val_noc85": metrics["noc85"],
                "val_noc90": metrics["noc90"],
                "val_failures90": metrics["failures90"],
                "val_n": metrics["n_samples"],
                "val_seconds": metrics["seconds"],
            }
        )
        for k, v in enumerate(metrics["miou_at_k"], start=1):
            row[f"val_miou@{k}"] = v
        general = metrics.get("general")
        if general is not None:
            row.update(
                {
                    "general_noc85": general["noc85"],
                    "general_noc90": general["noc90"],
                    "general_n": general["n_samples"],
                }
            )
            for k, v in enumerate(general["miou_at_k"], start=1):
                row[f"general_miou@{k}"] = v
    return to_jsonable(row)


def write_logs(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """(Re)write ``log.csv``, ``log.json`` and ``curves.png`` from all rows so far."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    write_text_atomic(run_dir / "log.csv", text.getvalue(), advice=_ADVICE)
    write_json(run_dir / "log.json", rows)
    plot_curves(rows, run_dir / "curves.png")


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Loss, validation mIoU@k and NoC per epoch as a PNG (matplotlib, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    epochs = [r["epoch"] for r in rows]

    def series(key: str) -> list[float]:
        return [np.nan if r.get(key) is None else float(r[key]) for r in rows]

    axes[0].plot(epochs, series("loss"), "o-", label="total")
    axes[0].plot(epochs, series("nfl"), ".--", label="NFL")
    axes[0].plot(epochs, series("bce_aux"), ".--", label="aux BCE")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[0].legend()
    ks = sorted(
        int(k.split("@")[1]) for k in (rows[-1] if rows else {}) if k.startswith("val_miou@")
    )
    for k in [k for k in ks if k in (1, 2, 3, 5, 10, 20)]:
        axes[1].plot(epochs, series(f"val_miou@{k}"), "o-", label=f"mIoU@{k}")
    axes[1].set(title="validation mIoU@k", xlabel="epoch", ylim=(0, 1))
    if ks:
        axes[1].legend()
    axes[2].plot(epochs, series("val_noc85"), "o-", label="NoC@85")
    axes[2].plot(epochs, series("val_noc90"), "o-", label="NoC@90")
    axes[2].set(title="validation NoC (lower is better)", xlabel="epoch")
    axes[2].legend()
    fig.tight_layout()
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=80), advice=_ADVICE)
