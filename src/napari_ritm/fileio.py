"""Safe file writing shared by the library, the CLIs and training: atomic writes and plain JSON.

Every file napari-ritm writes (checkpoints, run logs, reports) goes through :func:`atomic_write`,
so a crash or a full disk never leaves a half-written file under the final name, and a full disk
becomes one :class:`~napari_ritm.errors.RitmError` that says how much space is free and what to
do. Nothing here imports torch: ``torch.save`` is passed in as the writer.
"""

from __future__ import annotations

import errno
import math
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

from .errors import RitmError

__all__ = ["atomic_write", "disk_error", "to_jsonable", "write_text_atomic"]

#: What a user can do about a full disk (callers may append e.g. "then continue with --resume").
DEFAULT_ADVICE = "free disk space or choose another output folder"

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _free_space_text(path: Path) -> str:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folder may not exist yet: report its nearest parent's disk
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def disk_error(
    path: str | os.PathLike[str],
    exc: OSError,
    *,
    needed_bytes: int | None = None,
    advice: str = DEFAULT_ADVICE,
) -> RitmError:
    """The user-facing error for a failed write of ``path``.

    Args:
        path: the file that could not be written.
        exc: the operating system's error.
        needed_bytes: about how large the file would have been (stated for a full disk).
        advice: what to do about a full disk.

    Returns:
        A :class:`RitmError` to raise ``from exc``: for a full disk (ENOSPC/EDQUOT) it names the
        free and the needed space and the advice; otherwise it quotes the OS error.
    """
    path = Path(path)
    if exc.errno in _NO_SPACE:
        need = f"; it needs about {needed_bytes / 2**20:.0f} MiB" if needed_bytes else ""
        return RitmError(
            f"no space left on the device while writing {path} ({_free_space_text(path)}{need}); "
            f"{advice}"
        )
    return RitmError(f"could not write {path}: {exc.strerror or exc}")


def atomic_write(
    path: str | os.PathLike[str],
    writer: Callable[[Path], None],
    *,
    needed_bytes: int | None = None,
    advice: str = DEFAULT_ADVICE,
) -> Path:
    """Write ``path`` all at once: ``writer`` fills a temporary file that then replaces ``path``.

    The temporary file sits in the same folder (so :func:`os.replace` is atomic) and keeps the
    target's suffix (so writers that pick the format from it, like matplotlib, still work). It is
    removed when anything fails, so readers see either the old file or the complete new one.
    Missing parent folders are created.

    Args:
        path: the final file.
        writer: called with the temporary path; writes the whole content there, e.g.
            ``lambda p: torch.save(obj, p)`` or ``lambda p: fig.savefig(p)``.
        needed_bytes: expected size, stated in the message when the disk is full.
        advice: what the user should do when the disk is full.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        RitmError: when the file cannot be written (full disk, no permission, ...); see
            :func:`disk_error`. Other exceptions from ``writer`` propagate unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(path, exc, needed_bytes=needed_bytes, advice=advice) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, advice: str = DEFAULT_ADVICE
) -> Path:
    """Write ``text`` as UTF-8 to ``path`` with :func:`atomic_write`; returns the path."""
    data = text.encode("utf-8")
    return atomic_write(
        path, lambda tmp: tmp.write_bytes(data), needed_bytes=len(data), advice=advice
    )


def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` made of plain JSON types (and loadable with ``weights_only=True``).

    NaN and infinities become None (JSON has no NaN); numpy scalars and arrays become Python
    numbers and lists; tuples become lists; paths become strings; mapping keys become strings.
    Subclasses of ``str``/``int``/``float`` (e.g. ``torch.__version__``) become the base type,
    because the weights-only unpickler refuses them. Other objects are returned unchanged.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return to_jsonable(value.tolist())  # numpy scalars and arrays, without importing numpy
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        value = float(value)
        return value if math.isfinite(value) else None
    return value
