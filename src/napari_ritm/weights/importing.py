"""Import a user's checkpoint under a name: validate it, copy it into the cache, record its hash.

``napari-ritm weights import my_cells.pth --name my-cells`` strictly loads the file (so a
damaged, unsafe or foreign file is refused before anything is copied), copies it to
``<cache>/imported/my-cells.pth`` and writes ``my-cells.json`` beside it with the file's sha256,
architecture and source. Every later load by name checks the sha256 against that record.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from pathlib import Path

from napari_ritm.errors import CheckpointError, RitmError
from napari_ritm.fileio import atomic_write

from .cache import imported_dir, sha256_file, write_record
from .registry import NAME_RE, lookup_weights

__all__ = ["InvalidWeightsNameError", "import_weights"]

logger = logging.getLogger(__name__)


class InvalidWeightsNameError(RitmError):
    """A name given to imported weights is malformed or already used by the registry."""


def _check_name(name: str, overwrite: bool) -> Path:
    """The target path of imported weights called ``name``; raises when the name is unusable."""
    if not NAME_RE.match(name):
        raise InvalidWeightsNameError(
            f"invalid weights name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (pass --name)"
        )
    taken = lookup_weights(name)
    if taken is not None:
        raise InvalidWeightsNameError(
            f"the name '{name}' belongs to the registry entry '{taken.name}'; "
            "choose another one with --name"
        )
    target = imported_dir() / f"{name}.pth"
    if target.exists() and not overwrite:
        raise InvalidWeightsNameError(
            f"weights named '{name}' are already imported ({target}); choose another --name or "
            "overwrite them (--force)"
        )
    return target


def import_weights(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    overwrite: bool = False,
    description: str | None = None,
) -> Path:
    """Validate a checkpoint and copy it into the cache so it can be loaded by name.

    The file is strictly loaded with ``napari_ritm.model.load_checkpoint`` first (every
    state-dict key must match a known variant); a file that fails is refused and nothing is
    copied. The copy's sha256 is recorded and checked on every later load.

    Args:
        path: checkpoint file (official RITM format or one written by ``save_checkpoint``).
        name: name to give it (letters, digits, ``.``, ``_``, ``-``; default: the file stem).
            Must not clash with a registry name or alias.
        overwrite: replace existing imported weights of the same name.
        description: one line that ``weights list`` and the widgets show for it (e.g. what it
            was fine-tuned from and on); default "imported from <path>".

    Returns:
        Path of the copy in the cache (``<cache>/imported/<name>.pth``); its record is
        ``<cache>/imported/<name>.json``.

    Raises:
        CheckpointError: the file is missing or is not a loadable RITM checkpoint (one line:
            what the file is and why it is refused).
        InvalidWeightsNameError: the name is malformed, taken by the registry, or already
            imported (without ``overwrite``).
        RitmError: torch is too old, or the cache folder cannot be written.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise CheckpointError(f"no checkpoint file at {source}; check the path")
    name = (name or source.stem).strip()
    target = _check_name(name, overwrite)

    from napari_ritm.model import load_checkpoint

    try:
        model = load_checkpoint(source, device="cpu")
    except CheckpointError as exc:
        problem = getattr(exc, "problem", None)
        reason = f"the file {problem}" if problem else str(exc)
        raise CheckpointError(f"refusing to import {source}: {reason}") from exc

    digest = sha256_file(source)
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    copied = sha256_file(target)
    if copied != digest:  # the source changed while it was read: keep nothing half-true
        target.unlink(missing_ok=True)
        raise CheckpointError(
            f"{source} changed while it was imported (sha256 {digest} before, {copied} after "
            "the copy); import it again once it is complete"
        )
    record = {
        "name": name,
        "variant": getattr(model, "variant", "unknown"),
        "with_prev_mask": bool(getattr(model, "with_prev_mask", True)),
        "source": str(source.resolve()),
        "sha256": digest,
        "size_bytes": target.stat().st_size,
        "imported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if description:
        record["description"] = " ".join(str(description).split())
    write_record(target.with_suffix(".json"), record)
    logger.info("imported %s as '%s' (%s)", source, name, target)
    return target
