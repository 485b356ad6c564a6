"""napari-ritm: click-based interactive segmentation (RITM) for napari.

Importing this package is cheap: it loads neither torch, napari nor Qt. Public names are
resolved lazily from their modules.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ClickSession": "napari_ritm.inference.session",
    "Click": "napari_ritm.inference.clicks",
    "build_model": "napari_ritm.model",
    "load_checkpoint": "napari_ritm.model",
    "save_checkpoint": "napari_ritm.model",
    "load_model": "napari_ritm.weights",
    "RitmError": "napari_ritm.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_ritm' has no attribute {name!r}")
