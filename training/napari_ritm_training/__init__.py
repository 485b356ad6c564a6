"""napari-ritm training package: fine-tune or train RITM models with the reference recipe.

Nothing here imports napari or Qt; the "Fine-tune" widget lives in
napari_ritm.napari.finetune_widget.
Importing the package is cheap: public names are resolved lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "napari_ritm_training.config",
    "Trainer": "napari_ritm_training.trainer",
    "TrainingInterrupted": "napari_ritm_training.trainer",
    "run_finetune": "napari_ritm_training.trainer",
    "from_arrays": "napari_ritm_training.data",
    "load_folder": "napari_ritm_training.data",
    "NormalizedFocalLoss": "napari_ritm_training.losses",
    "SigmoidBinaryCrossEntropy": "napari_ritm_training.losses",
    "MultiPointSampler": "napari_ritm_training.sampler",
    "next_points": "napari_ritm_training.sampler",
    "synthetic_cells": "napari_ritm_training.synthetic",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_ritm_training' has no attribute {name!r}")
