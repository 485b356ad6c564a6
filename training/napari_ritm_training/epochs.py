"""What happens at the edges of epochs: the starting point's validation and each epoch's end.

Both write a ``log.csv`` row; the end of an epoch also steps the schedule, saves ``last.pth``
(and ``best.pth`` when the validation improved) and ``resume.pth``, and sends a report.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch

from . import checkpointing, reporting, validation

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["end_epoch", "validate_start"]

log = logging.getLogger("napari_ritm_training.trainer")


def validate_start(trainer: Trainer) -> None:
    """Validate the starting weights: the epoch-0 row of the log (not a best.pth candidate)."""
    if not trainer.data.val_samples:
        return
    metrics = trainer.validate(0)
    trainer.barrier()
    if not trainer.is_main or metrics is None:
        return
    cfg = trainer.config
    row = reporting.epoch_row(
        epoch=0,
        iters_per_epoch=cfg.iters_per_epoch,
        batch_size=cfg.batch_size,
        lr=None,
        means={},
        seconds=0.0,
        steps=0,
        val_max_clicks=cfg.val_max_clicks,
        metrics=metrics,
    )
    trainer.history.append(row)
    reporting.write_logs(trainer.run_dir, trainer.history)
    log.info(
        "epoch 0 (start): val NoC@85 %.2f NoC@90 %.2f mIoU@1 %.3f",
        metrics["noc85"],
        metrics["noc90"],
        metrics["miou_at_k"][0],
    )
    trainer.emit_report("before")


def end_epoch(
    trainer: Trainer, epoch: int, sums: dict[str, float], steps: int, seconds: float
) -> None:
    """Close epoch ``epoch`` (0-based): schedule, validation, log row, last/best.pth, resume."""
    cfg = trainer.config
    epoch_lr = trainer.optimizer.param_groups[0]["lr"]  # the rate this epoch trained at
    trainer.scheduler.step()
    trainer.sync_buffers()
    means = {k: v / max(steps, 1) for k, v in sums.items()}
    # Average the training loss over ranks so the log describes the whole batch.
    if trainer.world_size > 1:
        import torch.distributed as dist

        keys = sorted(means)
        t = torch.tensor([means[k] for k in keys], device=trainer.device, dtype=torch.float64)
        dist.all_reduce(t)
        means = dict(zip(keys, (t / trainer.world_size).tolist(), strict=True))
    metrics = None
    if cfg.val_every and (epoch + 1) % cfg.val_every == 0:
        metrics = trainer.validate(epoch + 1)
    trainer.barrier()
    if not trainer.is_main:
        return
    row = reporting.epoch_row(
        step=trainer._done,
        epoch=epoch + 1,
        iters_per_epoch=cfg.iters_per_epoch,
        batch_size=cfg.batch_size,
        lr=epoch_lr,
        means=means,
        seconds=seconds,
        steps=steps,
        val_max_clicks=cfg.val_max_clicks,
        metrics=metrics,
    )
    trainer.history.append(row)
    key = validation.best_key(metrics, float(means.get("loss", math.inf)), cfg.best_metric)
    improved = trainer.best_key is None or key < trainer.best_key
    last_metrics = {"train_loss": means.get("loss"), "validation": metrics}
    last, iteration = checkpointing.LAST_FILE, trainer._done
    checkpointing.save_weights(trainer, last, epoch + 1, iteration, last_metrics)
    if improved:
        trainer.best_key = key
        trainer.best_metrics = last_metrics
        trainer.best_epoch = epoch + 1
        checkpointing.copy_last(trainer.run_dir, checkpointing.BEST_FILE)
    if cfg.keep_epoch_checkpoints and (epoch + 1) % cfg.keep_epoch_checkpoints == 0:
        checkpointing.copy_last(trainer.run_dir, f"epoch_{epoch + 1:03d}.pth")
    reporting.write_logs(trainer.run_dir, trainer.history)
    checkpointing.save_resume(trainer, epoch + 1, 0)
    val_txt = (
        f", val NoC@85 {metrics['noc85']:.2f} NoC@90 {metrics['noc90']:.2f} "
        f"mIoU@1 {metrics['miou_at_k'][0]:.3f}"
        if metrics
        else ""
    )
    log.info(
        "epoch %d/%d: loss %.4f, %.2f s/step%s%s",
        epoch + 1,
        cfg.epochs,
        means.get("loss", math.nan),
        seconds / max(steps, 1),
        val_txt,
        " (best)" if improved else "",
    )
    trainer.emit_report("epoch")
