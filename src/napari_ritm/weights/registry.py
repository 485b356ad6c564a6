"""The table of weights known by name (official RITM files + shipped ones), look-up and listing.

Two kinds of weights live in :data:`WEIGHTS`:

* **official**: the checkpoints released with the RITM paper (ritm-reference §1.2), downloaded on
  first use into the cache folder. Their release publishes no checksums, so they are verified by
  a strict load (every key and shape) after download and on every load, plus their exact size
  where one is recorded.
* **shipped**: checkpoints trained by this project, inside the installed package
  (``napari_ritm/weights/checkpoints/``). Each has a record beside it (``<stem>.json``, written by
  ``scripts/ship_default_model.py`` from the checkpoint's own metadata) with its sha256, checked
  on every load, and the description shown by ``napari-ritm weights list``.

A third kind, **imported** weights (``napari-ritm weights import``), lives in the cache and is
listed by :func:`list_weights`. Reading this table loads neither torch nor pooch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .cache import get_cache_dir, imported_dir, read_record

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "URL_ENV",
    "WEIGHTS",
    "WeightsInfo",
    "WeightsSpec",
    "list_weights",
    "lookup_weights",
    "spec_path",
]

#: Environment variable that overrides the base URL the official files are downloaded from.
URL_ENV = "NAPARI_RITM_WEIGHTS_URL"
#: Release folder of the official checkpoints (ritm-reference §1.2).
DEFAULT_BASE_URL = (
    "https://github.com/saic-vul/ritm_interactive_segmentation/releases/download/v1.0/"
)
#: Name of the model used when none is given (a shipped checkpoint).
DEFAULT_MODEL = "napari-ritm.cells"

#: What the official RITM models are for (they were trained on photographs).
NATURAL_IMAGES = "photographs and everyday objects (the RITM paper's models)"

#: Folder inside the package that holds shipped checkpoints and their records.
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
#: Names users may give imported weights (also keeps them inside the imported folder).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")

#: How each kind of check is named in listings.
VERIFIED_SHA256 = "sha256"
VERIFIED_SIZE_LOAD = "size + strict load"
VERIFIED_LOAD = "strict load"


@dataclass(frozen=True)
class WeightsSpec:
    """One row of the weights registry (metadata only; the model code knows nothing of it).

    Attributes:
        name: canonical ``"<variant>.<tag>"`` name, e.g. ``"hrnet18s.cocolvis_itermask"``.
        file_name: file name of the checkpoint (in the release folder or the package).
        variant: model variant, a key of ``napari_ritm.model.VARIANTS``.
        with_prev_mask: whether the model takes the previous mask as a 4th input channel (ITER-M).
        train_data: data set the weights were trained on.
        description: one line for listings (what the weights are).
        use_for: one line on what they are for (the images they suit), shown in the dock.
        kind: ``"official"`` (downloaded) or ``"shipped"`` (inside the package).
        sha256: hex digest of the file, or None when no hash is known (official files).
        size: approximate file size as published (for listings only).
        size_bytes: exact file size in bytes, checked after download when recorded.
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
    use_for: str = ""
    kind: Literal["official", "shipped"] = "official"
    sha256: str | None = None
    size: str | None = None
    size_bytes: int | None = None
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

    @property
    def verified_by(self) -> str:
        """How the file is checked: ``"sha256"``, ``"size + strict load"`` or ``"strict load"``."""
        if self.sha256:
            return VERIFIED_SHA256
        return VERIFIED_SIZE_LOAD if self.size_bytes else VERIFIED_LOAD


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
    use_for: str = NATURAL_IMAGES,
) -> WeightsSpec:
    return WeightsSpec(
        name=name,
        file_name=file_name,
        variant=variant,
        with_prev_mask=with_prev_mask,
        train_data=train_data,
        description=description,
        use_for=use_for,
        size=size,
        # The release assets publish no checksums nor exact sizes (ritm-reference §1.2 gives
        # "16.5 MB"...): these files are verified by a strict load of the right architecture.
        sha256=None,
        size_bytes=None,
        # Code and released weights of saic-vul/ritm_interactive_segmentation are MIT-licensed.
        license="MIT",
        aliases=(file_name.removesuffix(".pth"), *aliases),
    )


def shipped_record_path(file_name: str) -> Path:
    """Path of the record (sha256, description) of a shipped checkpoint: ``<stem>.json``."""
    return CHECKPOINT_DIR / (Path(file_name).stem + ".json")


def _shipped(
    name: str,
    file_name: str,
    variant: str,
    *,
    with_prev_mask: bool,
    aliases: tuple[str, ...],
    use_for: str,
) -> WeightsSpec:
    """A shipped entry; hash, size and texts come from the record written at ship time."""
    record = read_record(shipped_record_path(file_name)) or {}
    missing = f"(no record {shipped_record_path(file_name).name}: the installation is damaged)"
    return WeightsSpec(
        name=name,
        file_name=file_name,
        variant=variant,
        with_prev_mask=with_prev_mask,
        train_data=str(record.get("train_data", missing)),
        description=str(record.get("description", missing)),
        use_for=use_for,
        kind="shipped",
        sha256=record.get("sha256"),
        size_bytes=record.get("size_bytes"),
        license="MIT",
        aliases=aliases,
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
        _shipped(
            "napari-ritm.nuclei",
            "nuclei_hrnet18s.pth",
            "hrnet18s",
            with_prev_mask=True,
            aliases=("nuclei",),
            use_for="fluorescence nuclei, 2D images and 3D stacks",
        ),
        # The default: better than the nuclei model on the mixed held-out set (docs/accuracy.md).
        _shipped(
            DEFAULT_MODEL,
            "cells_hrnet18s.pth",
            "hrnet18s",
            with_prev_mask=True,
            aliases=("default", "cells"),
            use_for="mixed microscopy: fluorescence and H&E nuclei, EM, whole cells",
        ),
    )
}


def spec_path(spec: WeightsSpec) -> Path:
    """Where the file of a registry entry is: in the package (shipped) or the cache."""
    if spec.kind == "shipped":
        return CHECKPOINT_DIR / spec.file_name
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


def known_names() -> str:
    """The canonical registry names, comma-separated (for messages)."""
    return ", ".join(sorted(WEIGHTS))


def looks_like_path(text: str) -> bool:
    """Whether a model argument is meant as a file path rather than a name."""
    return (
        "/" in text
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.lower().endswith(CHECKPOINT_SUFFIXES)
        or text.startswith("~")
    )


def imported_path(name: str) -> Path | None:
    """``<cache>/imported/<name>.pth`` for a well-formed name, else None."""
    if not NAME_RE.match(name):
        return None
    return imported_dir() / f"{name}.pth"


@dataclass(frozen=True)
class WeightsInfo:
    """What :func:`list_weights` reports about one set of weights.

    Attributes:
        name: canonical name (pass it to ``load_model``).
        kind: ``"official"``, ``"shipped"`` or ``"imported"``.
        variant: model variant (``"hrnet18s"`` ...), ``"unknown"`` if not recorded.
        cached: True when the file is on this machine (downloaded, shipped or imported).
        status: human-readable state: ``"cached"``, ``"not downloaded"``, ``"shipped"``,
            ``"missing"`` (a shipped file absent from the installation) or ``"imported"``.
        path: where the file is (or will be, once downloaded).
        url: download URL for official weights, else None.
        aliases: other accepted names.
        description: one line for listings (what the weights are).
        use_for: one line on what they are for ("" when unknown).
        verified_by: how the file is checked: ``"sha256"`` (a recorded hash, checked on every
            load), ``"size + strict load"``, ``"strict load"`` (no published hash: the file
            must load strictly as the promised architecture), or ``"no record"`` (an imported
            file without its record: refused until imported again).
        extra: further facts (train data, sizes, licence, the import record...).
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
    use_for: str = ""
    verified_by: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def _registry_info(spec: WeightsSpec) -> WeightsInfo:
    path = spec_path(spec)
    cached = path.is_file()
    if spec.kind == "shipped":
        status = "shipped" if cached else "missing"
    else:
        status = "cached" if cached else "not downloaded"
    return WeightsInfo(
        name=spec.name,
        kind=spec.kind,
        variant=spec.variant,
        cached=cached,
        status=status,
        path=path,
        url=spec.download_url(),
        aliases=spec.aliases,
        description=spec.description,
        use_for=spec.use_for,
        verified_by=spec.verified_by,
        extra={
            "train_data": spec.train_data,
            "size": spec.size,
            "size_bytes": spec.size_bytes,
            "license": spec.license,
            "sha256": spec.sha256,
        },
    )


def _imported_infos() -> list[WeightsInfo]:
    folder = imported_dir()
    if not folder.is_dir():
        return []
    infos = []
    for path in sorted(folder.glob("*.pth")):
        record = read_record(path.with_suffix(".json"))
        has_hash = bool(record and record.get("sha256"))
        record = record or {}
        infos.append(
            WeightsInfo(
                name=path.stem,
                kind="imported",
                variant=str(record.get("variant", "unknown")),
                cached=True,
                status="imported",
                path=path,
                description=str(
                    record.get("description") or f"imported from {record.get('source', '?')}"
                ),
                use_for="your own weights (imported)",
                verified_by=VERIFIED_SHA256 if has_hash else "no record",
                extra=record,
            )
        )
    return infos


def list_weights() -> list[WeightsInfo]:
    """All weights known by name: the registry (official, shipped) then imported ones.

    Cheap: reads folder listings and small JSON records, never hashes nor loads a checkpoint.

    Returns:
        One :class:`WeightsInfo` per entry; ``cached`` tells whether the file is on disk.
    """
    return [_registry_info(spec) for spec in WEIGHTS.values()] + _imported_infos()
