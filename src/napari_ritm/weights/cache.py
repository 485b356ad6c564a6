"""The weights cache folder: where files live, their sha256, and the quarantine for bad files.

Layout of the cache (``$NAPARI_RITM_CACHE``, else ``pooch.os_cache("napari-ritm")``)::

    <cache>/<file>.pth                 downloaded registry weights (official files)
    <cache>/imported/<name>.pth        weights imported with ``napari-ritm weights import``
    <cache>/imported/<name>.json       their record (sha256 at import, variant, source)
    <cache>/quarantine/<file>          the last file of that name that failed its check

Nothing here imports torch; pooch only when the environment variable is unset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from napari_ritm.fileio import write_text_atomic

__all__ = [
    "CACHE_ENV",
    "get_cache_dir",
    "imported_dir",
    "quarantine",
    "quarantine_dir",
    "read_record",
    "sha256_file",
    "write_record",
]

logger = logging.getLogger(__name__)

#: Environment variable that overrides the cache folder.
CACHE_ENV = "NAPARI_RITM_CACHE"

_IMPORTED_SUBDIR = "imported"
_QUARANTINE_SUBDIR = "quarantine"


def get_cache_dir() -> Path:
    """Folder holding downloaded and imported weights (not created here).

    Returns:
        ``$NAPARI_RITM_CACHE`` (``~`` expanded) when set and non-empty, else
        ``pooch.os_cache("napari-ritm")`` (``~/.cache/napari-ritm`` on Linux).
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import pooch  # deferred: keeps `import napari_ritm.weights` cheap

    return Path(pooch.os_cache("napari-ritm")).expanduser()


def imported_dir() -> Path:
    """Folder of imported weights inside the cache."""
    return get_cache_dir() / _IMPORTED_SUBDIR


def quarantine_dir() -> Path:
    """Folder inside the cache where files that failed their check are moved."""
    return get_cache_dir() / _QUARANTINE_SUBDIR


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quarantine(path: Path, name: str | None = None) -> Path | None:
    """Move a bad file out of the way, to ``<cache>/quarantine/<name>``, keeping it for a look.

    Only the latest bad file of each name is kept (an older one is replaced), so the
    quarantine cannot grow without bound. If the move fails, the file is deleted instead.

    Args:
        path: the file (usually in the cache folder).
        name: its name in the quarantine (default: ``path.name``).

    Returns:
        The new location, or None when the file was deleted (or already gone).
    """
    if not path.exists():
        return None
    target = quarantine_dir() / (name or path.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except OSError as exc:  # another file system, read-only quarantine...: delete instead
        logger.warning("could not move %s to %s (%s); deleting it", path, target, exc)
        path.unlink(missing_ok=True)
        return None
    logger.info("moved %s to %s", path, target)
    return target


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is missing or not a JSON object."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable record %s (%s)", path, exc)
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as indented JSON, atomically (no half-written record is ever read)."""
    return write_text_atomic(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
