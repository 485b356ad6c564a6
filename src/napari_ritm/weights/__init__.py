"""Registry of official + shipped weights, pooch download/cache, load_model(name_or_path).

Three kinds of weights are known by name:

* **official**: the checkpoints released with the RITM paper (ritm-reference §1.2), downloaded on
  first use into the cache folder and reused afterwards.
* **shipped**: checkpoints trained by this project that live inside the installed package
  (``napari_ritm/weights/checkpoints/``). ``DEFAULT_MODEL`` is one of them.
* **imported**: any checkpoint the user validated and copied into the cache with
  :func:`import_weights` (``napari-ritm weights import PATH --name NAME``).

The cache folder is ``$NAPARI_RITM_CACHE`` when set, else ``pooch.os_cache("napari-ritm")``
(``~/.cache/napari-ritm`` on Linux). Downloads go to ``<cache>/<file>.part`` first and are resumed
with HTTP ``Range`` requests after an interruption; the finished file is moved into place only
after its size (and its sha256, where one is known) has been checked, so an interrupted or corrupt
download never sits where a good file is expected.

This module imports neither torch nor pooch at import time; listing weights stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from napari_ritm.errors import CheckpointError, RitmError, WeightsNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_ritm.model import ISModel

__all__ = [
    "CACHE_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "URL_ENV",
    "WEIGHTS",
    "InvalidWeightsNameError",
    "WeightsInfo",
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

logger = logging.getLogger(__name__)

#: Environment variable that overrides the cache folder.
CACHE_ENV = "NAPARI_RITM_CACHE"
#: Environment variable that overrides the base URL the official files are downloaded from.
URL_ENV = "NAPARI_RITM_WEIGHTS_URL"
#: Release folder of the official checkpoints (ritm-reference §1.2).
DEFAULT_BASE_URL = (
    "https://github.com/saic-vul/ritm_interactive_segmentation/releases/download/v1.0/"
)
#: Name of the model used when none is given (a shipped checkpoint).
DEFAULT_MODEL = "napari-ritm.nuclei"

#: Folder inside the package that holds shipped checkpoints.
_CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
_IMPORTED_SUBDIR = "imported"
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CHUNK = 1 << 16
_RETRY_WAIT_S = 0.5

ProgressArg = bool | Callable[[int, int, str], None]


class InvalidWeightsNameError(RitmError):
    """A name given to imported weights is malformed or already used by the registry."""


@dataclass(frozen=True)
class WeightsSpec:
    """One row of the weights registry (metadata only; the model code knows nothing of it).

    Attributes:
        name: canonical ``"<variant>.<tag>"`` name, e.g. ``"hrnet18s.cocolvis_itermask"``.
        file_name: file name of the checkpoint (in the release folder or the package).
        variant: model variant, a key of ``napari_ritm.model.VARIANTS``.
        with_prev_mask: whether the model takes the previous mask as a 4th input channel (ITER-M).
        train_data: data set the weights were trained on.
        description: one line for listings.
        kind: ``"official"`` (downloaded) or ``"shipped"`` (inside the package).
        sha256: hex digest of the file, or None when no hash is published.
        size: approximate file size as published (for listings only).
        license: licence of the weights.
        aliases: other names accepted for this entry.
        url: full download URL overriding ``base_url + file_name`` (rarely needed).
    """

    name: str
    file_name: str
    variant: str
    with_prev_mask: bool
    train_data: str
    description: str
    kind: Literal["official", "shipped"] = "official"
    sha256: str | None = None
    size: str | None = None
    license: str = "MIT"
    aliases: tuple[str, ...] = ()
    url: str | None = None

    def download_url(self, base_url: str | None = None) -> str | None:
        """URL of the file: ``url`` if set, else ``base_url`` (or the env/default) + file name.

        Returns None for shipped entries, which are never downloaded.
        """
        if self.kind != "official":
            return None
        if self.url is not None:
            return self.url
        base = base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL
        return base.rstrip("/") + "/" + self.file_name


def _official(
    name: str,
    file_name: str,
    variant: str,
    train_data: str,
    description: str,
    size: str,
    *,
    with_prev_mask: bool = True,
    aliases: tuple[str, ...] = (),
) -> WeightsSpec:
    return WeightsSpec(
        name=name,
        file_name=file_name,
        variant=variant,
        with_prev_mask=with_prev_mask,
        train_data=train_data,
        description=description,
        size=size,
        # The release assets publish no checksums, so none is known (size is checked instead).
        sha256=None,
        # Code and released weights of saic-vul/ritm_interactive_segmentation are MIT-licensed.
        license="MIT",
        aliases=(file_name.removesuffix(".pth"), *aliases),
    )


#: The registry: canonical name -> spec. The five official files are those of ritm-reference §1.2.
WEIGHTS: dict[str, WeightsSpec] = {
    s.name: s
    for s in (
        _official(
            "hrnet18s.cocolvis_itermask",
            "coco_lvis_h18s_itermask.pth",
            "hrnet18s",
            "COCO+LVIS",
            "HRNet18s+OCR, iterative training with mask guidance (ITER-M)",
            "16.5 MB",
            aliases=("hrnet18s",),
        ),
        _official(
            "hrnet18.cocolvis_itermask",
            "coco_lvis_h18_itermask.pth",
            "hrnet18",
            "COCO+LVIS",
            "HRNet18+OCR, iterative training with mask guidance (ITER-M)",
            "38.8 MB",
            aliases=("hrnet18",),
        ),
        _official(
            "hrnet32.cocolvis_itermask",
            "coco_lvis_h32_itermask.pth",
            "hrnet32",
            "COCO+LVIS",
            "HRNet32+OCR, iterative training with mask guidance (ITER-M)",
            "119 MB",
            aliases=("hrnet32",),
        ),
        _official(
            "hrnet18.sbd_itermask",
            "sbd_h18_itermask.pth",
            "hrnet18",
            "SBD",
            "HRNet18+OCR, ITER-M, trained on SBD only",
            "38.8 MB",
        ),
        _official(
            "hrnet18.cocolvis_baseline",
            "coco_lvis_h18_baseline.pth",
            "hrnet18",
            "COCO+LVIS",
            "HRNet18+OCR, non-iterative baseline (no previous-mask input)",
            "38.8 MB",
            with_prev_mask=False,
        ),
        WeightsSpec(
            name=DEFAULT_MODEL,
            file_name="nuclei_hrnet18s.pth",
            variant="hrnet18s",
            with_prev_mask=True,
            train_data="COCO+LVIS weights fine-tuned on microscopy",
            description="napari-ritm default model for cells and nuclei (ships with the package)",
            kind="shipped",
            license="MIT",
            aliases=("default", "nuclei"),
        ),
    )
}


@dataclass(frozen=True)
class WeightsInfo:
    """What :func:`list_weights` reports about one set of weights.

    Attributes:
        name: canonical name (pass it to :func:`load_model`).
        kind: ``"official"``, ``"shipped"`` or ``"imported"``.
        variant: model variant (``"hrnet18s"`` ...), ``"unknown"`` if not recorded.
        cached: True when the file is on this machine (downloaded, shipped or imported).
        status: human-readable state: ``"cached"``, ``"not downloaded"``, ``"shipped"``,
            ``"not shipped yet"`` or ``"imported"``.
        path: where the file is (or will be, once downloaded).
        url: download URL for official weights, else None.
        aliases: other accepted names.
        description: one line for listings.
    """

    name: str
    kind: str
    variant: str
    cached: bool
    status: str
    path: Path
    url: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------------------------
# Locations and look-up


def get_cache_dir() -> Path:
    """Folder holding downloaded and imported weights (not created here).

    Returns:
        ``$NAPARI_RITM_CACHE`` (``~`` expanded) when set and non-empty, else
        ``pooch.os_cache("napari-ritm")``.
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import pooch  # deferred: keeps `import napari_ritm.weights` cheap

    return Path(pooch.os_cache("napari-ritm")).expanduser()


def _imported_dir() -> Path:
    return get_cache_dir() / _IMPORTED_SUBDIR


def _spec_path(spec: WeightsSpec) -> Path:
    if spec.kind == "shipped":
        return _CHECKPOINT_DIR / spec.file_name
    return get_cache_dir() / spec.file_name


def lookup_weights(name: str) -> WeightsSpec | None:
    """Find a registry entry by canonical name, alias or file name (case-insensitive).

    Args:
        name: e.g. ``"hrnet18s.cocolvis_itermask"``, ``"hrnet18s"``, ``"coco_lvis_h18s_itermask"``
            or ``"coco_lvis_h18s_itermask.pth"``.

    Returns:
        The spec, or None when the registry has no such name.
    """
    key = name.strip().lower()
    for spec in WEIGHTS.values():
        names = {spec.name, spec.file_name, *spec.aliases}
        if key in {n.lower() for n in names}:
            return spec
    return None


def _known_names() -> str:
    return ", ".join(sorted(WEIGHTS))


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.lower().endswith(_CHECKPOINT_SUFFIXES)
        or text.startswith("~")
    )


def _not_shipped_error(spec: WeightsSpec) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"the model '{spec.name}' is not shipped with this installation of napari-ritm yet "
        f"(expected the file {_spec_path(spec)}). Choose another model, e.g. 'hrnet18s' (the "
        "official COCO+LVIS HRNet18s ITER-M weights, downloaded on first use), or pass the path "
        "of a .pth checkpoint; `napari-ritm weights list` shows what is available."
    )


def resolve_weights(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: ProgressArg = True,
    base_url: str | None = None,
) -> Path:
    """Turn a model name or a checkpoint path into the path of an existing local file.

    Args:
        name_or_path: a path to an existing checkpoint file; a registry name or alias
            (official weights are downloaded into the cache when missing and ``download``
            is True); or the name of weights imported with :func:`import_weights`.
            None means ``DEFAULT_MODEL``.
        download: allow downloading official weights that are not cached yet.
        progress: download progress (see :func:`fetch_weights`).
        base_url: download base URL override (see :func:`fetch_weights`).

    Returns:
        Absolute path of the checkpoint file.

    Raises:
        WeightsNotFoundError: the file does not exist, the name is unknown, a shipped model is
            not part of this installation, or the download failed (the message says what to do).
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
    spec = lookup_weights(text)
    if spec is not None and not (_looks_like_path(text) and Path(text).expanduser().is_file()):
        path = _spec_path(spec)
        if path.is_file():
            return path
        if spec.kind == "shipped":
            raise _not_shipped_error(spec)
        if not download:
            raise WeightsNotFoundError(
                f"weights '{spec.name}' are not in the cache ({path}); run "
                f"`napari-ritm weights fetch {spec.name}` to download them."
            )
        return fetch_weights(spec.name, progress=progress, base_url=base_url)
    if _looks_like_path(text):
        return _existing_file(Path(text))
    imported = _imported_path(text)
    if imported is not None and imported.is_file():
        return imported
    raise WeightsNotFoundError(
        f"unknown model '{text}': not a file, not a registry name ({_known_names()}) and not "
        f"imported into the cache ({_imported_dir()}). Run `napari-ritm weights list` to see the "
        "available names, or pass the path of a .pth checkpoint."
    )


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


def _imported_path(name: str) -> Path | None:
    if not _NAME_RE.match(name):
        return None
    return _imported_dir() / f"{name}.pth"


# --------------------------------------------------------------------------------------------
# Downloading


class _DownloadInterrupted(OSError):
    """The connection ended before the whole file arrived (the .part file keeps what came)."""


def _make_reporter(
    progress: ProgressArg, label: str
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """Adapt ``progress`` into (update(done, total), close()) callables."""
    if callable(progress):

        def update(done: int, total: int) -> None:
            progress(done, total, f"downloading {label}")

        return update, lambda: None
    if not progress:
        return (lambda done, total: None), (lambda: None)

    from tqdm.auto import tqdm

    bar: list[Any] = []

    def update_bar(done: int, total: int) -> None:
        if not bar:
            bar.append(
                tqdm(
                    total=total or None,
                    initial=done,
                    unit="B",
                    unit_scale=True,
                    desc=label,
                    file=sys.stderr,
                    leave=True,
                )
            )
        else:
            bar[0].update(done - bar[0].n)

    def close() -> None:
        if bar:
            bar[0].close()

    return update_bar, close


class _ResumableDownloader:
    """pooch downloader that streams into a stable ``.part`` file and resumes it with ``Range``.

    pooch's own HTTPDownloader writes to a fresh temporary file each time, so an interrupted
    download starts again from zero; this one keeps the bytes in ``part_path`` and asks the
    server for the rest. When the file is complete it is moved onto pooch's temporary file,
    after which pooch checks the hash and moves it into place.
    """

    def __init__(self, part_path: Path, progress: ProgressArg, label: str, timeout: float):
        self.part_path = part_path
        self.progress = progress
        self.label = label
        self.timeout = timeout

    def __call__(self, url: str, output_file: Any, pooch: Any, check_only: bool = False) -> Any:
        if check_only:  # pooch's availability probe: never used by fetch_weights
            try:
                head = self._request(url, method="HEAD")
                with urllib.request.urlopen(head, timeout=self.timeout):
                    return True
            except (OSError, http.client.HTTPException):
                return False
        self._download(url)
        os.replace(self.part_path, os.fspath(output_file))
        return None

    @staticmethod
    def _request(url: str, offset: int = 0, method: str = "GET") -> urllib.request.Request:
        from napari_ritm import __version__

        headers = {"User-Agent": f"napari-ritm/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        return urllib.request.Request(url, headers=headers, method=method)

    def _download(self, url: str) -> None:
        offset = self.part_path.stat().st_size if self.part_path.is_file() else 0
        try:
            response = urllib.request.urlopen(self._request(url, offset), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # Range not satisfiable: either the .part file is already complete, or it is not
                # a prefix of the remote file (then start again).
                size = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") or "")
                if size and int(size.group(1)) == offset:
                    return
                logger.info("server refused to resume %s; starting again", self.label)
                self.part_path.unlink()
                self._download(url)
                return
            raise
        if response.status == 206 and self._total_if_resumed(response, offset) is None:
            response.close()
            logger.info("server resumed %s at the wrong offset; starting again", self.label)
            self.part_path.unlink()
            self._download(url)
            return
        update, close = _make_reporter(self.progress, self.label)
        try:
            with response:
                total = int(response.headers.get("Content-Length") or 0)
                if response.status == 206:
                    total = self._total_if_resumed(response, offset) or 0
                else:
                    offset = 0  # the server ignored Range and sends the whole file
                done = offset
                update(done, total)
                with open(self.part_path, "ab" if offset else "wb") as out:
                    while True:
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        done += len(chunk)
                        update(done, total)
        finally:
            close()
        if total and done != total:
            # http.client returns short reads silently when the server closes early.
            raise _DownloadInterrupted(
                f"connection closed after {done} of {total} bytes (kept in {self.part_path})"
            )

    @staticmethod
    def _total_if_resumed(response: Any, offset: int) -> int | None:
        """Size of the whole remote file from a 206 answer (0 if unknown), or None when the
        answer does not continue at ``offset``."""
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            return None
        if match.group(3) != "*":
            return int(match.group(3))
        return offset + int(response.headers.get("Content-Length") or 0)


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch logs every download at INFO to stderr; library code should not print."""
    import pooch

    pooch_logger = pooch.get_logger()
    old = pooch_logger.level
    pooch_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        pooch_logger.setLevel(old)


def _manual_hint(spec: WeightsSpec, url: str, dest: Path) -> str:
    return (
        f"To install the file by hand, download {url} with a browser and save it as {dest}; "
        f"set {CACHE_ENV} to use another cache folder, or {URL_ENV} to download from a mirror. "
        "Any .pth checkpoint can also be passed as a path."
    )


def fetch_weights(
    name: str,
    *,
    progress: ProgressArg = True,
    base_url: str | None = None,
    retries: int = 2,
    timeout: float = 60.0,
) -> Path:
    """Download registry weights into the cache (no-op when already there) and return the path.

    The file streams into ``<cache>/<file>.part``. An interrupted download is resumed (HTTP
    ``Range``) on the next attempt, within this call (``retries``) or a later one. The
    complete file is size-checked, sha256-checked where the registry knows the hash, and only
    then moved to ``<cache>/<file>``; a file with a wrong hash is deleted.

    Args:
        name: registry name or alias (see :data:`WEIGHTS`). Shipped and imported names are
            accepted and returned without download.
        progress: True for a tqdm bar on stderr, False for none, or a callable
            ``progress(done_bytes, total_bytes, message)`` (total 0 when unknown).
        base_url: folder URL to download from instead of ``$NAPARI_RITM_WEIGHTS_URL`` or the
            official release folder.
        retries: extra attempts after a network failure (each resumes the partial file).
        timeout: socket timeout in seconds.

    Returns:
        Path of the cached file.

    Raises:
        WeightsNotFoundError: unknown name, or the download failed or had the wrong hash; the
            message names the URL, the exact cache path to place the file at by hand, and the
            environment variables.
    """
    spec = lookup_weights(name)
    if spec is None:
        imported = _imported_path(name.strip())
        if imported is not None and imported.is_file():
            return imported
        raise WeightsNotFoundError(
            f"unknown weights '{name}'; known names: {_known_names()} "
            "(`napari-ritm weights list` shows all, with aliases)"
        )
    dest = _spec_path(spec)
    if spec.kind == "shipped":
        if dest.is_file():
            return dest
        raise _not_shipped_error(spec)
    url = spec.download_url(base_url)
    assert url is not None  # official entries always have one
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsNotFoundError(
            f"cannot create the weights cache folder {dest.parent} ({exc}); set {CACHE_ENV} to a "
            "writable folder"
        ) from exc

    import pooch

    known_hash = f"sha256:{spec.sha256.lower()}" if spec.sha256 else None
    downloader = _ResumableDownloader(part, progress, spec.file_name, timeout)
    attempts = 1 + max(0, retries)
    for attempt in range(attempts):
        try:
            with _quiet_pooch():
                path = pooch.retrieve(
                    url,
                    known_hash=known_hash,
                    fname=dest.name,
                    path=dest.parent,
                    downloader=downloader,
                )
            logger.info("weights %s ready at %s", spec.name, path)
            return Path(path)
        except ValueError as exc:  # pooch: hash mismatch; the bad file is already deleted
            part.unlink(missing_ok=True)
            raise WeightsNotFoundError(
                f"the file downloaded from {url} is corrupt or not the expected release "
                f"(sha256 does not match {spec.sha256}); it was deleted. Try again later. "
                + _manual_hint(spec, url, dest)
            ) from exc
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts - 1:
                reason = f"HTTP {exc.code} {exc.reason}"
                raise _download_error(spec, url, dest, part, reason) from exc
            logger.warning("download of %s failed (HTTP %s); retrying", url, exc.code)
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            if attempt == attempts - 1:
                raise _download_error(spec, url, dest, part, str(reason)) from exc
            logger.warning(
                "download of %s failed (%s); attempt %d of %d next",
                url,
                reason,
                attempt + 2,
                attempts,
            )
        time.sleep(_RETRY_WAIT_S * (attempt + 1))  # short back-off before resuming
    raise AssertionError("unreachable")  # pragma: no cover


def _download_error(
    spec: WeightsSpec, url: str, dest: Path, part: Path, reason: str
) -> WeightsNotFoundError:
    kept = (
        f" The {part.stat().st_size} bytes received are kept in {part} and the download resumes "
        "from there next time."
        if part.is_file() and part.stat().st_size
        else ""
    )
    return WeightsNotFoundError(
        f"could not download weights '{spec.name}' from {url} ({reason}); are you offline?"
        f"{kept} " + _manual_hint(spec, url, dest)
    )


# --------------------------------------------------------------------------------------------
# Importing, listing, loading


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_weights(
    path: str | os.PathLike[str], name: str | None = None, *, overwrite: bool = False
) -> Path:
    """Validate a checkpoint and copy it into the cache so it can be loaded by name.

    The file is strictly loaded with ``napari_ritm.model.load_checkpoint`` first (every
    state-dict key must match a known variant); a file that fails is refused and nothing is
    copied.

    Args:
        path: checkpoint file (official RITM format or one written by ``save_checkpoint``).
        name: name to give it (letters, digits, ``.``, ``_``, ``-``; default: the file stem).
            Must not clash with a registry name or alias.
        overwrite: replace existing imported weights of the same name.

    Returns:
        Path of the copy in the cache (``<cache>/imported/<name>.pth``).

    Raises:
        CheckpointError: the file is missing or is not a loadable RITM checkpoint.
        InvalidWeightsNameError: the name is malformed, taken by the registry, or already
            imported (without ``overwrite``).
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise CheckpointError(f"no checkpoint file at {source}; check the path")
    name = (name or source.stem).strip()
    if not _NAME_RE.match(name):
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
    target = _imported_dir() / f"{name}.pth"
    if target.exists() and not overwrite:
        raise InvalidWeightsNameError(
            f"weights named '{name}' are already imported ({target}); choose another --name or "
            "overwrite them (--force)"
        )

    from napari_ritm.model import load_checkpoint

    try:
        model = load_checkpoint(source, device="cpu")
    except CheckpointError as exc:
        raise CheckpointError(f"refusing to import {source}: {exc}") from exc

    target.parent.mkdir(parents=True, exist_ok=True)
    # Copy to a temporary name in the same folder, then rename: no half-copied file is left.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    record = {
        "name": name,
        "variant": getattr(model, "variant", "unknown"),
        "with_prev_mask": bool(getattr(model, "with_prev_mask", True)),
        "source": str(source.resolve()),
        "sha256": _sha256(target),
        "imported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    target.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("imported %s as '%s' (%s)", source, name, target)
    return target


def list_weights() -> list[WeightsInfo]:
    """All weights known by name: the registry (official, shipped) then imported ones.

    Returns:
        One :class:`WeightsInfo` per entry; ``cached`` tells whether the file is on disk.
    """
    infos: list[WeightsInfo] = []
    for spec in WEIGHTS.values():
        path = _spec_path(spec)
        cached = path.is_file()
        if spec.kind == "shipped":
            status = "shipped" if cached else "not shipped yet"
        else:
            status = "cached" if cached else "not downloaded"
        infos.append(
            WeightsInfo(
                name=spec.name,
                kind=spec.kind,
                variant=spec.variant,
                cached=cached,
                status=status,
                path=path,
                url=spec.download_url(),
                aliases=spec.aliases,
                description=spec.description,
                extra={
                    "train_data": spec.train_data,
                    "size": spec.size,
                    "license": spec.license,
                    "sha256": spec.sha256,
                },
            )
        )
    folder = _imported_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.pth")):
            record: dict[str, Any] = {}
            sidecar = path.with_suffix(".json")
            if sidecar.is_file():
                try:
                    record = json.loads(sidecar.read_text())
                except (OSError, ValueError):
                    logger.warning("ignoring unreadable %s", sidecar)
            infos.append(
                WeightsInfo(
                    name=path.stem,
                    kind="imported",
                    variant=str(record.get("variant", "unknown")),
                    cached=True,
                    status="imported",
                    path=path,
                    description=f"imported from {record.get('source', '?')}",
                    extra=record,
                )
            )
    return infos


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
        progress: download progress (see :func:`fetch_weights`).

    Returns:
        The ISModel in eval mode on ``device``, with ``metadata`` attached.

    Raises:
        WeightsNotFoundError: see :func:`resolve_weights`.
        CheckpointError: the file is not a valid checkpoint, or a registry file is not the
            architecture its entry promises (e.g. a wrong file placed in the cache by hand).
    """
    from napari_ritm.model import load_checkpoint, select_device

    path = resolve_weights(name_or_path, progress=progress)
    model = load_checkpoint(path, device=select_device(device))
    spec = lookup_weights(name_or_path) if isinstance(name_or_path, str) else None
    if name_or_path is None:
        spec = WEIGHTS[DEFAULT_MODEL]
    if spec is not None and path == _spec_path(spec):
        got = (getattr(model, "variant", None), getattr(model, "with_prev_mask", None))
        if got != (spec.variant, spec.with_prev_mask):
            raise CheckpointError(
                f"{path} holds a {got[0]} model (prev-mask input: {got[1]}), but '{spec.name}' "
                f"is a {spec.variant} model (prev-mask input: {spec.with_prev_mask}); delete the "
                "file and fetch it again (`napari-ritm weights fetch "
                f"{spec.name}`)"
            )
    return model


# --------------------------------------------------------------------------------------------
# CLI: napari-ritm weights list|fetch|import


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``weights list|fetch NAME|import PATH [--name N]`` to the ``napari-ritm`` CLI.

    Each leaf parser sets ``func`` (via ``set_defaults``) to a handler ``func(args) -> int``
    returning the exit code; handlers raise RitmError for user errors (the CLI prints those).

    Args:
        subparsers: the object returned by ``parser.add_subparsers()`` of the main parser.

    Returns:
        The ``weights`` parser.
    """
    parser = subparsers.add_parser(
        "weights",
        help="list, download or import model weights",
        description=(
            "Manage model weights. Downloads and imported files live in the cache folder "
            f"(${CACHE_ENV}, else the user cache folder)."
        ),
    )

    def _usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)
    actions = parser.add_subparsers(dest="weights_command", metavar="{list,fetch,import}")

    p_list = actions.add_parser("list", help="show known weights and whether they are cached")
    p_list.set_defaults(func=_cmd_list)

    p_fetch = actions.add_parser("fetch", help="download official weights into the cache")
    p_fetch.add_argument("name", help="registry name or alias, e.g. hrnet18s")
    p_fetch.add_argument(
        "--base-url",
        default=None,
        help=f"download from this folder URL (default: ${URL_ENV} or the release)",
    )
    p_fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    p_fetch.set_defaults(func=_cmd_fetch)

    p_import = actions.add_parser("import", help="validate a checkpoint and copy it into the cache")
    p_import.add_argument("path", help="checkpoint file (.pth)")
    p_import.add_argument("--name", default=None, help="name to load it by (default: file stem)")
    p_import.add_argument("--force", action="store_true", help="replace weights of the same name")
    p_import.set_defaults(func=_cmd_import)
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    infos = list_weights()
    print(f"cache folder: {get_cache_dir()}  (set {CACHE_ENV} to change)")
    rows = [("NAME", "VARIANT", "STATUS", "ALIASES")]
    rows += [(i.name, i.variant, i.status, ", ".join(i.aliases)) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(3)] + [0]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"default model: {DEFAULT_MODEL}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    path = fetch_weights(args.name, progress=not args.quiet, base_url=args.base_url)
    print(path)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    path = import_weights(args.path, args.name, overwrite=args.force)
    print(f"imported as '{path.stem}': {path}")
    return 0
