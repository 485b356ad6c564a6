"""Checks of weights files, and what happens to one that fails: quarantine and one clear message.

What is checked depends on what is known about a file:

* a recorded **sha256** (shipped checkpoints, imported files, registry entries with a hash) is
  compared on every load;
* a recorded **exact size** is compared before loading;
* every file is **loaded strictly** (every key and shape) and must be the architecture its
  registry entry promises; for official RITM files, which have no published hash, this is the
  whole check.

A downloaded file in the cache that fails is moved to ``<cache>/quarantine/`` (so the next fetch
downloads it again) and the error names the file, what is wrong and what to do. A shipped file
that fails is left alone (it is part of the installation: reinstall). An imported file that
changed since its import is refused (import it again).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from napari_ritm.errors import CheckpointError, WeightsNotFoundError

from .cache import CACHE_ENV, quarantine, read_record, sha256_file
from .registry import URL_ENV, WeightsSpec, spec_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_ritm.model import ISModel

__all__ = ["CorruptWeightsError", "load_verified", "verify_file", "verify_imported"]


class CorruptWeightsError(CheckpointError, WeightsNotFoundError):
    """A weights file failed its check (hash, size, or strict load as the promised model).

    It is both a :class:`CheckpointError` (the file is bad) and a :class:`WeightsNotFoundError`
    (no good file is available), so callers catching either see it.
    """


def manual_hint(spec: WeightsSpec, dest: Path, base_url: str | None = None) -> str:
    """How to put an official file in place by hand (offline machines, broken mirrors)."""
    url = spec.download_url(base_url)
    return (
        f"To install the file by hand, download {url} with a browser and save it as {dest}; "
        f"set {CACHE_ENV} to use another cache folder, or {URL_ENV} to download from a mirror. "
        "Any .pth checkpoint can also be passed as a path."
    )


def refuse_cached(
    spec: WeightsSpec, path: Path, problem: str, *, downloaded_from: str = ""
) -> CorruptWeightsError:
    """Quarantine a bad file of a registry entry and build the error that explains it.

    Args:
        spec: the registry entry the file belongs to.
        path: the bad file (in the cache, or a staging file next to it).
        problem: what is wrong, as a predicate ("is truncated: ...", "has sha256 ...").
        downloaded_from: the URL when the file was just downloaded.

    Returns:
        The error to raise (the caller raises it ``from`` the original exception).
    """
    dest = spec_path(spec)
    moved = quarantine(path, spec.file_name)
    where = f"it was moved to {moved}" if moved else "it was deleted"
    subject = f"the file downloaded from {downloaded_from}" if downloaded_from else str(path)
    return CorruptWeightsError(
        f"{subject} {problem}; {where}. Run `napari-ritm weights fetch {spec.name}` to download "
        f"it again. " + manual_hint(spec, dest)
    )


def _size_problem(path: Path, expected: int | None) -> str | None:
    if expected is None:
        return None
    size = path.stat().st_size
    if size == expected:
        return None
    return f"has {size:,} bytes, expected {expected:,} (truncated or another file)"


def _hash_problem(path: Path, expected: str | None) -> str | None:
    if not expected:
        return None
    actual = sha256_file(path)
    if actual == expected.lower():
        return None
    return f"has sha256 {actual}, expected {expected.lower()}"


def verify_file(spec: WeightsSpec, path: Path) -> None:
    """Check a registry file's recorded size and sha256 (no load); quarantine a bad cached one.

    Raises:
        CorruptWeightsError: the file differs from its record. A shipped file is left in place
            and the message says to reinstall; a cached one is quarantined first.
    """
    if spec.kind == "shipped" and not spec.sha256:
        raise CorruptWeightsError(
            f"{path} has no hash record ({Path(path).with_suffix('.json').name}), so it cannot be "
            "verified; the installation is damaged: reinstall napari-ritm "
            "(`pip install --force-reinstall napari-ritm`)"
        )
    problem = _size_problem(path, spec.size_bytes) or _hash_problem(path, spec.sha256)
    if problem is None:
        return
    if spec.kind == "shipped":
        raise CorruptWeightsError(
            f"{path} {problem}: the file shipped with napari-ritm is damaged; reinstall "
            "napari-ritm (`pip install --force-reinstall napari-ritm`)"
        )
    raise refuse_cached(spec, path, problem)


def verify_imported(name: str, path: Path) -> None:
    """Check an imported file against the sha256 recorded when it was imported.

    Raises:
        CorruptWeightsError: no record, or the file changed since the import (it is left in
            place: the message says how to import it again).
    """
    record = read_record(path.with_suffix(".json")) or {}
    expected = record.get("sha256")
    again = (
        f"import it again: `napari-ritm weights import {record.get('source', 'FILE')} "
        f"--name {name} --force`"
    )
    if not expected:
        raise CorruptWeightsError(
            f"the imported weights '{name}' ({path}) have no record of their sha256 "
            f"({path.with_suffix('.json')}), so they cannot be verified; {again}"
        )
    problem = _hash_problem(path, str(expected))
    if problem is not None:
        raise CorruptWeightsError(
            f"the imported weights '{name}' changed since they were imported: {path} {problem}; "
            f"{again}"
        )


def check_architecture(spec: WeightsSpec, model: ISModel, path: Path) -> str | None:
    """Why ``model`` is not what ``spec`` promises, or None when it is."""
    got = (getattr(model, "variant", None), getattr(model, "with_prev_mask", None))
    if got == (spec.variant, spec.with_prev_mask):
        return None
    return (
        f"holds a {got[0]} model (prev-mask input: {got[1]}), but '{spec.name}' is a "
        f"{spec.variant} model (prev-mask input: {spec.with_prev_mask})"
    )


def load_verified(
    spec: WeightsSpec,
    path: Path,
    *,
    device: str | torch.device = "cpu",
    downloaded_from: str = "",
) -> ISModel:
    """Load a registry file strictly and check it is the promised architecture.

    A file of an official entry that fails (not a checkpoint, truncated, unsafe, wrong
    architecture) is quarantined; a too-old torch is reported as such and the file kept.

    Args:
        spec: the registry entry.
        path: its file (the cache file, or a freshly downloaded staging file).
        device: where to put the model.
        downloaded_from: the URL, when the file was just downloaded (for the message).

    Returns:
        The model, in eval mode, with ``metadata`` attached.

    Raises:
        CorruptWeightsError: the file failed (and was quarantined when it is a cache file).
        RitmError: torch is too old to read checkpoints (the file is kept).
    """
    from napari_ritm.model import load_checkpoint

    try:
        model = load_checkpoint(path, device=device)
    except CheckpointError as exc:
        problem = getattr(exc, "problem", None) or f"cannot be loaded ({exc})"
        if spec.kind == "shipped":
            raise CorruptWeightsError(
                f"{path} {problem}: the file shipped with napari-ritm is damaged; reinstall "
                "napari-ritm (`pip install --force-reinstall napari-ritm`)"
            ) from exc
        raise refuse_cached(spec, path, problem, downloaded_from=downloaded_from) from exc
    problem = check_architecture(spec, model, path)
    if problem is not None:
        if spec.kind == "shipped":
            raise CorruptWeightsError(f"{path} {problem}; reinstall napari-ritm")
        raise refuse_cached(spec, path, problem, downloaded_from=downloaded_from)
    return model


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (False when either is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
