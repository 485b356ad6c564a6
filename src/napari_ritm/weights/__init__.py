"""Weights known by name, their cache, downloads, imports and checks; ``load_model(name_or_path)``.

Three kinds of weights are known by name:

* **official**: the checkpoints released with the RITM paper (ritm-reference §1.2), downloaded on
  first use into the cache folder with pooch and reused afterwards. No hash is published for
  them: they are verified by a strict load as the architecture their entry promises.
* **shipped**: checkpoints trained by this project inside the installed package
  (``napari_ritm/weights/checkpoints/``), each with a record of its sha256 and of what it was
  trained on (generated from the checkpoint's metadata). ``DEFAULT_MODEL`` is one of them.
* **imported**: any checkpoint the user validated and copied into the cache with
  :func:`import_weights` (``napari-ritm weights import PATH --name NAME``); its sha256 is recorded
  at import and checked on every load.

A cached download that fails its check is moved to ``<cache>/quarantine/`` with one message that
names the file, what is wrong and what to do; the next fetch downloads it again.

Modules, one job each: ``registry`` (the table, look-up, listing), ``cache`` (folders, sha256,
quarantine), ``verify`` (checks and their messages), ``download`` (pooch), ``importing``,
``loading`` (resolve_weights, load_model), ``shipping`` (records of shipped checkpoints) and
``cli``. Environment: ``NAPARI_RITM_CACHE`` (cache folder), ``NAPARI_RITM_WEIGHTS_URL`` (mirror
base URL). Importing this package loads neither torch nor pooch.
"""

from __future__ import annotations

from napari_ritm.errors import CheckpointError, RitmError, WeightsNotFoundError

from .cache import CACHE_ENV, get_cache_dir
from .cli import register_cli
from .download import ProgressArg, fetch_weights
from .importing import InvalidWeightsNameError, import_weights
from .loading import load_model, resolve_weights
from .registry import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    URL_ENV,
    WEIGHTS,
    WeightsInfo,
    WeightsSpec,
    list_weights,
    lookup_weights,
)
from .verify import CorruptWeightsError

__all__ = [
    "CACHE_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "URL_ENV",
    "WEIGHTS",
    "CheckpointError",
    "CorruptWeightsError",
    "InvalidWeightsNameError",
    "ProgressArg",
    "RitmError",
    "WeightsInfo",
    "WeightsNotFoundError",
    "WeightsSpec",
    "fetch_weights",
    "get_cache_dir",
    "import_weights",
    "list_weights",
    "load_model",
    "lookup_weights",
    "register_cli",
    "resolve_weights",
]
