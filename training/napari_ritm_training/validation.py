"""Validation during training: the reference click loop on held-out objects, and best.pth's key.

The same :func:`napari_ritm.evaluation.evaluator.evaluate_dataset` and
:class:`~napari_ritm.inference.session.ClickSession` as ``napari-ritm evaluate`` run here, so a
run's validation NoC/mIoU@k mean the same as the evaluation tables.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from napari_ritm.progress import ProgressCallback

from .config import TrainConfig

__all__ = ["best_key", "validate"]


def validate(
    model: torch.nn.Module,
    samples: list[Any],
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """NoC@85/90, failures and mIoU@k of ``model`` on ``samples``, plus "seconds".

    Leaves ``model`` in eval mode; the caller puts it back into training mode.

    Args:
        model: the unwrapped network.
        samples: validation objects (:func:`napari_ritm_training.data.make_validation_samples`).
        config: click budget (``val_max_clicks``) and session options (preset, zoom-in, flip).
        device: where the model is.
        epoch: epochs trained so far (0: the starting point), for the report's name.
        progress: called as ``progress(done_objects, n_objects, name)``.
    """
    from napari_ritm.evaluation.evaluator import evaluate_dataset
    from napari_ritm.inference.session import ClickSession

    model.eval()
    session = ClickSession(
        model,
        preset=getattr(config, "val_preset", "interactive"),
        zoom_in=config.val_zoom_in,
        flip=config.val_flip,
        device=device,
    )
    start = time.perf_counter()
    with torch.no_grad():
        report = evaluate_dataset(
            session,
            samples,
            max_clicks=config.val_max_clicks,
            model=f"epoch {epoch}",
            dataset="validation",
            progress=progress,
        )
    summary = report.summary()
    summary["seconds"] = time.perf_counter() - start
    return summary


def best_key(metrics: dict[str, Any] | None, train_loss: float, best_metric: str) -> list[float]:
    """Sort key of an epoch for ``best.pth`` (smaller is better).

    Without validation: the training loss. With ``best_metric`` "noc85"/"noc90": that NoC,
    ties broken by the higher mean mIoU@k. With "miou": the higher mean mIoU@k.
    """
    if metrics is None:
        return [train_loss]
    miou = float(np.mean(metrics["miou_at_k"]))
    if best_metric == "miou":
        return [-miou]
    return [float(metrics[best_metric]), -miou]
