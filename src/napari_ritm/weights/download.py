"""Fetch registry weights into the cache with pooch, verified before they take the final name.

``pooch.retrieve`` with its ``HTTPDownloader`` streams the file into a temporary file in the
cache folder and, where the registry knows the sha256, checks it (``known_hash``) before the
file gets a name; a mismatch deletes it. The result lands under a staging name
(``.<file>.<random>.download``) and is moved to ``<cache>/<file>`` only after it passed its
checks: for files without a hash (the official RITM release publishes none) its exact size
where recorded and a strict load as the promised architecture; a file that fails is
quarantined. So a file at the final name has always been verified, and a failed download
leaves nothing behind.

Interrupted downloads start again from zero (the files are 16-120 MB; resuming is not worth
its code). Nothing here is imported before a download starts: pooch, requests and tqdm load
lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from napari_ritm.errors import WeightsNotFoundError

from .cache import CACHE_ENV
from .registry import WeightsSpec, imported_path, known_names, lookup_weights, spec_path
from .verify import CorruptWeightsError, load_verified, manual_hint, refuse_cached, verify_file

__all__ = ["ProgressArg", "fetch_weights", "missing_shipped_error"]

logger = logging.getLogger(__name__)

#: ``True`` for a tqdm bar on stderr, ``False`` for none, or ``progress(done, total, message)``.
ProgressArg = bool | Callable[[int, int, str], None]

_CHUNK = 1 << 16
_RETRY_WAIT_S = 0.5


class _CallbackBar:
    """The progress-bar object pooch's HTTPDownloader drives (``total``, ``update``, ``reset``,
    ``close``), forwarded to a ``progress(done, total, message)`` callable.

    pooch tests the bar's truth before using it, which a tqdm bar of unknown total fails, so a
    tqdm bar is driven through this object too (see :func:`_progress_bar`).
    """

    def __init__(
        self,
        callback: Callable[[int, int, str], None],
        label: str,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.callback = callback
        self.message = f"downloading {label}"
        self.on_close = on_close
        self.total = 0
        self.done = 0

    def update(self, n: int) -> None:
        # pooch counts whole chunks, so the last one overshoots: clamp to the known total.
        self.done += n
        done = min(self.done, self.total) if self.total else self.done
        self.callback(done, self.total, self.message)

    def reset(self) -> None:
        self.done = 0

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()


def _progress_bar(progress: ProgressArg, label: str) -> _CallbackBar | bool:
    """What to pass as pooch's ``progressbar``: False, or an adapter to the callable or to a
    tqdm bar on stderr (made at the first report, so it knows the size)."""
    if callable(progress):
        return _CallbackBar(progress, label)
    if not progress:
        return False
    bars: list[Any] = []

    def show(done: int, total: int, message: str) -> None:
        if not bars:
            from tqdm.auto import tqdm

            bars.append(
                tqdm(total=total or None, desc=label, unit="B", unit_scale=True, file=sys.stderr)
            )
        bars[0].update(done - bars[0].n)

    def close() -> None:
        if bars:
            bars[0].close()

    return _CallbackBar(show, label, on_close=close)


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


def missing_shipped_error(spec: WeightsSpec) -> WeightsNotFoundError:
    """The error for a shipped model whose file is absent from the installation."""
    return WeightsNotFoundError(
        f"the model '{spec.name}' is missing from this installation of napari-ritm (expected the "
        f"file {spec_path(spec)}); reinstall napari-ritm, or choose another model, e.g. "
        "'hrnet18s' (the official COCO+LVIS HRNet18s ITER-M weights, downloaded on first use), "
        "or pass the path of a .pth checkpoint; `napari-ritm weights list` shows what is there."
    )


def _reason(exc: BaseException) -> str:
    """A short reason for a failed request (requests' messages run to several hundred chars)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}"
    if isinstance(exc, requests.Timeout):
        return "the server did not answer in time"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection broke off before the whole file arrived"
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    if match is not None:
        return f"connection failed: {match.group(1).strip()}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


def _retryable(exc: BaseException) -> bool:
    """Trouble worth another attempt: a server error (5xx), a timeout, a transfer that broke
    off. A 4xx answer or a refused/unresolvable connection (offline) will not change."""
    import requests

    if isinstance(exc, requests.HTTPError):
        return exc.response is None or exc.response.status_code >= 500
    return isinstance(exc, (requests.Timeout, requests.exceptions.ChunkedEncodingError))


def _download(
    spec: WeightsSpec,
    url: str,
    staging: Path,
    *,
    progress: ProgressArg,
    retries: int,
    timeout: float,
    base_url: str | None,
) -> None:
    """Download ``url`` to ``staging`` with pooch (hash-checked when known), retrying network
    failures; every failure leaves no file behind."""
    import pooch

    dest = spec_path(spec)
    known_hash = f"sha256:{spec.sha256.lower()}" if spec.sha256 else None
    attempts = 1 + max(0, retries)
    for attempt in range(attempts):
        bar = _progress_bar(progress, spec.file_name)
        downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK, timeout=timeout)
        try:
            with _quiet_pooch():
                pooch.retrieve(
                    url,
                    known_hash=known_hash,
                    fname=staging.name,
                    path=staging.parent,
                    downloader=downloader,
                )
            return
        except ValueError as exc:  # pooch: hash mismatch; it already deleted the download
            got = re.search(r"but got ([0-9a-fA-F]{64})", str(exc))
            actual = f"has sha256 {got.group(1)}" if got else "has another sha256"
            raise CorruptWeightsError(
                f"the file downloaded from {url} is not the expected file: it {actual}, expected "
                f"{spec.sha256}; it was deleted. Run `napari-ritm weights fetch {spec.name}` "
                "again; if this repeats, the server (or a proxy) sends another file. "
                + manual_hint(spec, dest, base_url)
            ) from exc
        except OSError as exc:  # requests' errors are OSErrors
            if not _retryable(exc) or attempt == attempts - 1:
                raise WeightsNotFoundError(
                    f"could not download weights '{spec.name}' from {url} ({_reason(exc)}); are "
                    "you offline? " + manual_hint(spec, dest, base_url)
                ) from exc
            logger.warning("download of %s failed (%s); trying again", url, _reason(exc))
        finally:
            if bar:
                bar.close()
        time.sleep(_RETRY_WAIT_S * (attempt + 1))


def fetch_weights(
    name: str,
    *,
    progress: ProgressArg = True,
    base_url: str | None = None,
    retries: int = 2,
    timeout: float = 60.0,
) -> Path:
    """Download registry weights into the cache (no-op when already there) and return the path.

    The file is verified before it takes its final name ``<cache>/<file>``: by its sha256 where
    the registry knows one, else by its exact size (where recorded) and a strict load as the
    architecture the entry promises. A file that fails is quarantined (``<cache>/quarantine/``)
    and the error says what was wrong; the next call downloads again. An interrupted download
    starts again from zero.

    Args:
        name: registry name or alias (see ``WEIGHTS``). Shipped and imported names are
            accepted and returned without download.
        progress: True for a tqdm bar on stderr, False for none, or a callable
            ``progress(done_bytes, total_bytes, message)`` (total 0 when unknown).
        base_url: folder URL to download from instead of ``$NAPARI_RITM_WEIGHTS_URL`` or the
            official release folder.
        retries: extra attempts after a server error (5xx), a timeout or a transfer that broke
            off (each starts again from zero); an offline machine fails at once.
        timeout: seconds to wait for the server.

    Returns:
        Path of the cached file.

    Raises:
        WeightsNotFoundError: unknown name, missing shipped file, or the download failed; the
            message names the URL, the exact cache path to place the file at by hand, and the
            environment variables.
        CorruptWeightsError: the downloaded (or cached) file failed its check (a subclass of
            both WeightsNotFoundError and CheckpointError).
        RitmError: torch is too old to check the file.
    """
    spec = lookup_weights(name)
    if spec is None:
        imported = imported_path(name.strip())
        if imported is not None and imported.is_file():
            return imported
        raise WeightsNotFoundError(
            f"unknown weights '{name}'; known names: {known_names()} "
            "(`napari-ritm weights list` shows all, with aliases)"
        )
    dest = spec_path(spec)
    if spec.kind == "shipped":
        if not dest.is_file():
            raise missing_shipped_error(spec)
        verify_file(spec, dest)
        return dest
    if dest.is_file():
        verify_file(spec, dest)  # size/hash where recorded; a bad file is quarantined
        return dest
    url = spec.download_url(base_url)
    assert url is not None  # official entries always have one
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsNotFoundError(
            f"cannot create the weights cache folder {dest.parent} ({exc}); set {CACHE_ENV} to a "
            "writable folder"
        ) from exc
    # A name of its own per call: two processes fetching the same file cannot mix their bytes.
    staging = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.download")
    try:
        _download(
            spec,
            url,
            staging,
            progress=progress,
            retries=retries,
            timeout=timeout,
            base_url=base_url,
        )
        if not spec.sha256:
            _check_unhashed(spec, staging, url)
        os.replace(staging, dest)
    finally:
        staging.unlink(missing_ok=True)
    logger.info("weights %s ready at %s", spec.name, dest)
    return dest


def _check_unhashed(spec: WeightsSpec, staging: Path, url: str) -> None:
    """Size (where recorded) and strict load of a download without a known hash; a file that
    fails is quarantined under its final name."""
    size = staging.stat().st_size
    if spec.size_bytes is not None and size != spec.size_bytes:
        raise refuse_cached(
            spec,
            staging,
            f"has {size:,} bytes, expected {spec.size_bytes:,} (truncated or another file)",
            downloaded_from=url,
        )
    load_verified(spec, staging, device="cpu", downloaded_from=url)
