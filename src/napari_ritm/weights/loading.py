"""Turn a model name or path into a verified local file (:func:`resolve_weights`) and a model
(:func:`load_model`).

Names resolve in this order: a registry name or alias (shipped, or official: downloaded on first
use), a path to an existing file, then the name of imported weights. Files known by name are
checked before use (see ``verify``): recorded sizes and hashes here, the strict load as the
promised architecture in :func:`load_model`. A path given by the user is loaded as it is (still
strictly, by ``load_checkpoint``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from napari_ritm.errors import WeightsNotFoundError

from .cache import imported_dir
from .download import ProgressArg, fetch_weights, missing_shipped_error
from .registry import (
    DEFAULT_MODEL,
    WEIGHTS,
    WeightsSpec,
    imported_path,
    known_names,
    looks_like_path,
    lookup_weights,
    spec_path,
)
from .verify import load_verified, same_file, verify_file, verify_imported

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_ritm.model import ISModel

__all__ = ["load_model", "resolve_weights"]


def _existing_file(path: Path) -> Path:
    path = path.expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        raise WeightsNotFoundError(f"{path} is a folder; pass the path of a .pth checkpoint file")
    raise WeightsNotFoundError(
        f"no checkpoint file at {path}; check the path, or pass a model name "
        "(`napari-ritm weights list` shows them)"
    )


def _registry_spec(name_or_path: str | os.PathLike[str] | None) -> WeightsSpec | None:
    """The registry entry a model argument names, or None for paths and imported names."""
    if name_or_path is None:
        return WEIGHTS[DEFAULT_MODEL]
    if not isinstance(name_or_path, str):
        return None
    text = name_or_path.strip()
    spec = lookup_weights(text)
    if spec is None or (looks_like_path(text) and Path(text).expanduser().is_file()):
        return None  # an existing file wins over a registry file name
    return spec


def resolve_weights(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: ProgressArg = True,
    base_url: str | None = None,
    verify: bool = True,
) -> Path:
    """Turn a model name or a checkpoint path into the path of an existing local file.

    Args:
        name_or_path: a path to an existing checkpoint file; a registry name or alias
            (official weights are downloaded into the cache when missing and ``download``
            is True); or the name of weights imported with ``import_weights``.
            None means ``DEFAULT_MODEL``.
        download: allow downloading official weights that are not cached yet.
        progress: download progress (see ``fetch_weights``).
        base_url: download base URL override (see ``fetch_weights``).
        verify: check recorded sizes and sha256 of files known by name (shipped, imported,
            hashed registry entries); never loads a checkpoint.

    Returns:
        Absolute path of the checkpoint file.

    Raises:
        WeightsNotFoundError: the file does not exist, the name is unknown, a shipped model is
            missing from this installation, or the download failed (the message says what to do).
        CorruptWeightsError: a file known by name failed its check (a cached download is
            quarantined first; the message says how to get a good one).
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    if isinstance(name_or_path, os.PathLike):
        return _existing_file(Path(name_or_path))
    if not isinstance(name_or_path, str):
        raise WeightsNotFoundError(
            f"expected a model name or a checkpoint path, got {type(name_or_path).__name__}"
        )
    text = name_or_path.strip()
    spec = _registry_spec(text)
    if spec is not None:
        path = spec_path(spec)
        if path.is_file():
            if verify:
                verify_file(spec, path)
            return path
        if spec.kind == "shipped":
            raise missing_shipped_error(spec)
        if not download:
            raise WeightsNotFoundError(
                f"weights '{spec.name}' are not in the cache ({path}); run "
                f"`napari-ritm weights fetch {spec.name}` to download them."
            )
        return fetch_weights(spec.name, progress=progress, base_url=base_url)
    if looks_like_path(text):
        return _existing_file(Path(text))
    imported = imported_path(text)
    if imported is not None and imported.is_file():
        if verify:
            verify_imported(text, imported)
        return imported
    raise WeightsNotFoundError(
        f"unknown model '{text}': not a file, not a registry name ({known_names()}) and not "
        f"imported into the cache ({imported_dir()}). Run `napari-ritm weights list` to see the "
        "available names, or pass the path of a .pth checkpoint."
    )


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    progress: ProgressArg = True,
) -> ISModel:
    """Load a model by name or path, downloading official weights on first use.

    Args:
        name_or_path: see :func:`resolve_weights`; None means ``DEFAULT_MODEL``.
        device: ``"cuda"``, ``"mps"``, ``"cpu"``, a torch.device, or None for the best
            available (``napari_ritm.model.select_device``).
        progress: download progress (see ``fetch_weights``).

    Returns:
        The ISModel in eval mode on ``device``, with ``metadata`` attached.

    Raises:
        WeightsNotFoundError: see :func:`resolve_weights`.
        CheckpointError: the file is not a valid checkpoint. For a registry file this is a
            ``CorruptWeightsError``: a cached download that is damaged or not the architecture
            its entry promises is quarantined, and the message says to fetch it again.
        RitmError: torch is older than napari-ritm needs.
    """
    from napari_ritm.model import load_checkpoint, select_device

    path = resolve_weights(name_or_path, progress=progress)
    target = select_device(device)
    spec = _registry_spec(name_or_path)
    if spec is not None and same_file(path, spec_path(spec)):
        return load_verified(spec, path, device=target)
    return load_checkpoint(path, device=target)
