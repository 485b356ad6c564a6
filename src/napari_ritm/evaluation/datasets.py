"""Readers for benchmark folders, microscopy ``pairs.csv`` folders and label stacks.

Every reader yields :class:`Sample` objects: one image plane plus one binary object target
(``gt``: int8, 1 = object, 0 = background, -1 = ignore). Three folder layouts are understood
and told apart by :func:`load_dataset`:

* **benchmark** (GrabCut, Berkeley, DAVIS, ...): ``images/*`` + ``masks/*`` matched by file
  stem; one sample per image. A mask whose values are a subset of {0, 128, 255} containing 255
  uses the GrabCut/Berkeley encoding (128 = ignore band, > 128 = object, ritm-reference §9.3);
  any other mask is read as "non-zero = object" (DAVIS; all its parts merged, no ignore).
* **instance labels**: ``labels/*`` (int ids, 0 = background), paired with ``images/*`` through
  ``pairs.csv`` (header ``image,label``) or by file stem. Every instance whose area is at least
  ``min_area`` is one sample (that instance = 1, everything else = 0).
* **semantic masks** (microscopy): ``pairs.csv`` with header ``image,mask``; the binary mask is
  split into connected components (8-connectivity), each one an instance as above. A "mask"
  holding more than one non-zero value is read as instance labels instead.

3D stacks (Z, Y, X) with labels of the same shape yield every Z plane as a 2D image. Images keep
their dtype (uint16 stays uint16; benchmark photos are RGB uint8). Files are read lazily: the
index is built from the label/mask files only, and iteration reads one file pair at a time.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from napari_ritm.errors import DatasetError
from napari_ritm.evaluation.image_files import (
    IMAGE_EXTENSIONS,
    TIFF_EXTENSIONS,
    check_image_file,
    read_image,
    read_mask,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "DatasetKind",
    "Sample",
    "check_image_file",
    "encode_benchmark_mask",
    "list_pairs",
    "load_dataset",
    "read_image",
    "read_mask",
    "read_pair",
    "read_target",
]

log = logging.getLogger(__name__)

#: Folder pairs (images, masks) recognised as the benchmark layout, in order of preference.
#: ``img``/``gt`` and ``data_GT``/``boundary_GT`` are the official RITM / GrabCut spellings.
_BENCHMARK_LAYOUTS = (("images", "masks"), ("img", "gt"), ("data_GT", "boundary_GT"))

#: Folder layouts: benchmark masks, instance labels, or semantic (binary) masks.
DatasetKind = Literal["benchmark", "labels", "masks"]


@dataclass(frozen=True)
class Sample:
    """One evaluation/training item: an image plane and one binary object.

    Attributes:
        name: Unique, readable id, e.g. ``"106024"``, ``"t01:17"`` (instance 17) or
            ``"nuclei:z12:5"`` (plane 12 of a stack, instance 5).
        image: (H, W) gray or (H, W, C) channels-last array, dtype as stored in the file.
            Samples from the same plane share one array object: do not modify it in place.
        gt: (H, W) int8 target: 1 = object, 0 = background, -1 = ignore (not scored).
    """

    name: str
    image: np.ndarray
    gt: np.ndarray


@dataclass(frozen=True)
class _Entry:
    """Index row: which file pair, which plane, which object of it."""

    image_path: Path
    target_path: Path
    plane: int | None  # Z index for stacks, None for 2D files
    label: int | None  # instance id (or component id); None = the whole benchmark mask
    name: str


class Dataset:
    """A lazily read sequence of :class:`Sample` (iterable, sized, indexable).

    Only the index (file pairs, planes, instance ids) is kept in memory; image and label files
    are read on access, and the most recently read file pair is cached so that iterating over
    the instances of one image reads it once.

    Attributes:
        name: Data set name (the folder name).
        root: The folder the data set was read from.
        kind: ``"benchmark"``, ``"labels"`` or ``"masks"``.
    """

    def __init__(self, name: str, root: Path, kind: DatasetKind, entries: list[_Entry]) -> None:
        self.name = name
        self.root = root
        self.kind = kind
        self._entries = entries
        self._cache_key: tuple[Path, Path] | None = None
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        self._plane_cache: dict[int | None, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> Sample:
        entry = self._entries[index]
        image, target = self._read_pair(entry)
        plane_image = self._plane_image(entry, image)
        plane_target = target if entry.plane is None else target[entry.plane]
        if entry.label is None:
            gt = encode_benchmark_mask(plane_target)
        else:
            gt = (plane_target == entry.label).astype(np.int8)
        return Sample(name=entry.name, image=plane_image, gt=gt)

    @property
    def names(self) -> list[str]:
        """Sample names in iteration order."""
        return [e.name for e in self._entries]

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, kind={self.kind!r}, n_samples={len(self)})"

    def _read_pair(self, entry: _Entry) -> tuple[np.ndarray, np.ndarray]:
        key = (entry.image_path, entry.target_path)
        if self._cache_key != key:
            self._cache = None  # release the previous pair before reading the next one
            self._plane_cache = {}
            self._cache_key = None
            self._cache = read_pair(entry.image_path, entry.target_path, self.kind)
            self._cache_key = key
        assert self._cache is not None
        return self._cache

    def _plane_image(self, entry: _Entry, image: np.ndarray) -> np.ndarray:
        # One array object per plane, so consumers can tell "same image as before" by identity.
        if entry.plane not in self._plane_cache:
            plane = image if entry.plane is None else image[entry.plane]
            self._plane_cache = {entry.plane: np.ascontiguousarray(plane)}
        return self._plane_cache[entry.plane]


def encode_benchmark_mask(mask: np.ndarray) -> np.ndarray:
    """Turn a stored benchmark mask into an int8 target with the ignore value.

    GrabCut/Berkeley encoding (ritm-reference §9.3): values ⊆ {0, 128, 255} with 255 present
    -> 128 is ignore (-1), > 128 is object. Anything else (DAVIS 0/255 masks, palette indices,
    0/1 masks) -> non-zero is object, no ignore. Colour masks are reduced by the maximum over
    channels (equal to channel 0 for gray-as-RGB files, merges coloured parts for DAVIS).

    Args:
        mask: (H, W) or (H, W, C) integer mask as read from disk.

    Returns:
        (H, W) int8 in {-1, 0, 1}.
    """
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    values = np.unique(mask)
    gt = np.zeros(mask.shape, dtype=np.int8)
    if values.size and values.max() == 255 and np.isin(values, (0, 128, 255)).all():
        gt[mask > 128] = 1
        gt[mask == 128] = -1
    else:
        gt[mask > 0] = 1
    return gt


def read_target(path: str | Path, kind: DatasetKind) -> np.ndarray:
    """Read a mask or label file as a data set of layout ``kind`` uses it.

    Args:
        path: Mask/label file.
        kind: ``"benchmark"``: the mask as stored (see :func:`encode_benchmark_mask`);
            ``"labels"``: integer instance ids (colour-saved 2D images reduced by the channel
            maximum, integral floats cast to int64); ``"masks"``: as "labels", then a binary
            mask is split into 8-connected components per plane.

    Returns:
        Benchmark: (H, W) or (H, W, C) integer mask. Otherwise: (H, W) or (Z, Y, X) integer
        labels, 0 = background.

    Raises:
        DatasetError: The file is missing or unreadable, or its labels are fractional floats.
    """
    path = Path(path)
    target = read_mask(path)
    if kind == "benchmark":
        return target
    if (
        target.ndim == 3
        and target.shape[2] in (3, 4)
        and path.suffix.lower() not in TIFF_EXTENSIONS
    ):
        target = target.max(axis=2)  # colour-saved label/mask image
    if not np.issubdtype(target.dtype, np.integer) and not np.issubdtype(target.dtype, np.bool_):
        if not np.array_equal(target, np.round(target)):
            raise DatasetError(f"labels in {path} are {target.dtype} with fractions; expected ids")
        target = target.astype(np.int64)
    if kind == "masks":
        target = _semantic_to_instances(target, path)
    return target


def _semantic_to_instances(mask: np.ndarray, path: Path) -> np.ndarray:
    """Binary semantic mask -> instance labels by 8-connected components (per plane)."""
    from scipy import ndimage

    nonzero = np.unique(mask)
    nonzero = nonzero[nonzero != 0]
    if nonzero.size > 1:
        log.info("%s holds %d distinct values: read as instance labels", path, nonzero.size)
        return mask
    binary = mask != 0
    structure = ndimage.generate_binary_structure(2, 2)
    if binary.ndim == 2:
        return ndimage.label(binary, structure=structure)[0]
    out = np.zeros(binary.shape, dtype=np.int32)
    for z in range(binary.shape[0]):
        out[z] = ndimage.label(binary[z], structure=structure)[0]
    return out


def read_pair(
    image_path: str | Path, target_path: str | Path, kind: DatasetKind
) -> tuple[np.ndarray, np.ndarray]:
    """Read one image and its mask/labels, with the image brought to the target's layout.

    Args:
        image_path: Image file. Benchmark images are read as (H, W, 3) uint8 RGB
            (``read_image(rgb=True)``); others keep their dtype and channels.
        target_path: Mask/label file, read by :func:`read_target`.
        kind: The data set layout (from :func:`list_pairs`).

    Returns:
        ``(image, target)``: image (H, W[, C]) or, for stacks, (Z, Y, X[, C]), channels last
        (channel-first files are moved), covering the same pixels as ``target``.

    Raises:
        DatasetError: A file is missing or unreadable, or the two do not cover the same pixels.
    """
    image_path, target_path = Path(image_path), Path(target_path)
    image = read_image(image_path, rgb=kind == "benchmark")
    target = read_target(target_path, kind)
    image = _match_image_to_target(image, target, kind, image_path, target_path)
    return image, target


def _match_image_to_target(
    image: np.ndarray, target: np.ndarray, kind: DatasetKind, image_path: Path, target_path: Path
) -> np.ndarray:
    """Bring the image to the target's plane layout: (H,W[,C]) or (Z,Y,X[,C]), channels last."""
    # Benchmark masks may be colour images (H, W, C); label TIFFs in 3D are (Z, Y, X) stacks.
    spatial = target.shape[:2] if kind == "benchmark" else target.shape
    if image.shape[: len(spatial)] == spatial:
        return image
    # channels-first: (C, H, W) for 2D or (Z, C, Y, X) for stacks
    if image.ndim == len(spatial) + 1:
        if image.shape[1:] == spatial and image.shape[0] <= 4 and len(spatial) == 2:
            return np.moveaxis(image, 0, -1)
        if len(spatial) == 3 and image.shape[0] == spatial[0] and image.shape[2:] == spatial[1:]:
            return np.moveaxis(image, 1, -1)
    raise DatasetError(
        f"image {image_path.name} has shape {image.shape} but its labels/mask "
        f"{target_path.name} has shape {target.shape}; they must cover the same pixels "
        "(2D (H, W) or 3D (Z, Y, X) with optional trailing channels)."
    )


# ---------------------------------------------------------------------------------------------
# folder discovery


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DatasetError(
                f"two files share the name {f.stem!r} in {folder} ({out[f.stem].name}, {f.name}); "
                "rename one so images and masks can be matched by name."
            )
        out[f.stem] = f
    return out


def _pair_by_stem(image_dir: Path, target_dir: Path) -> list[tuple[Path, Path]]:
    images = _by_stem(_list_images(image_dir), image_dir)
    targets = _by_stem(_list_images(target_dir), target_dir)
    if not images:
        raise DatasetError(f"no image files in {image_dir}")
    missing = sorted(set(images) - set(targets))
    extra = sorted(set(targets) - set(images))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} image(s) without a mask/label, e.g. {missing[:3]}")
        if extra:
            parts.append(f"{len(extra)} mask/label file(s) without an image, e.g. {extra[:3]}")
        raise DatasetError(
            f"cannot pair {image_dir} with {target_dir}: {'; '.join(parts)}. Files are matched "
            "by name without extension; add a pairs.csv (header image,label or image,mask) "
            "when the names differ."
        )
    return [(images[s], targets[s]) for s in sorted(images)]


def _read_pairs_csv(root: Path) -> tuple[DatasetKind, list[tuple[Path, Path]]]:
    """Parse ``pairs.csv``: returns ("labels"|"masks", [(image, target), ...])."""
    csv_path = root / "pairs.csv"
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if "image" not in header or not ({"label", "mask"} & set(header)):
            raise DatasetError(
                f"{csv_path} has header {reader.fieldnames}; expected 'image,label' "
                "(instance labels) or 'image,mask' (binary masks)."
            )
        column = "label" if "label" in header else "mask"
        kind: DatasetKind = "labels" if column == "label" else "masks"
        rows = [
            {k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader
        ]
    pairs = []
    for i, row in enumerate(rows, start=2):
        if not row.get("image") and not row.get(column):
            continue  # blank line
        if not row.get("image") or not row.get(column):
            raise DatasetError(f"{csv_path} line {i}: both 'image' and '{column}' are required")
        image, target = root / row["image"], root / row[column]
        for p in (image, target):
            if not p.is_file():
                raise DatasetError(f"{csv_path} line {i}: file not found: {p}")
        pairs.append((image, target))
    if not pairs:
        raise DatasetError(f"{csv_path} lists no image pairs")
    return kind, pairs


def list_pairs(root: str | Path) -> tuple[DatasetKind, list[tuple[Path, Path]]]:
    """Detect a data set folder's layout and list its (image, mask/labels) file pairs.

    Layouts, tried in this order (see the module docstring): ``pairs.csv`` (header
    ``image,label`` -> "labels", ``image,mask`` -> "masks"); ``images/`` + ``labels/`` matched by
    file stem -> "labels"; ``images/`` + ``masks/`` (or ``img/`` + ``gt/``, ``data_GT/`` +
    ``boundary_GT/``) matched by stem -> "benchmark". Only file names are read, no pixels.

    Args:
        root: Data set folder.

    Returns:
        ``(kind, pairs)``: the layout and the (image path, target path) pairs, sorted by image
        stem (or in ``pairs.csv`` order).

    Raises:
        DatasetError: The folder is missing or of no known layout, ``pairs.csv`` is malformed or
            names missing files, or images and masks cannot be matched by name.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data set folder not found: {root}")
    if (root / "pairs.csv").is_file():
        return _read_pairs_csv(root)
    image_dir = root / "images"
    if image_dir.is_dir() and (root / "labels").is_dir():
        return "labels", _pair_by_stem(image_dir, root / "labels")
    for images, masks in _BENCHMARK_LAYOUTS:
        if (root / images).is_dir() and (root / masks).is_dir():
            return "benchmark", _pair_by_stem(root / images, root / masks)
    raise DatasetError(
        f"{root} is not a data set folder: expected images/ with masks/ (benchmark) or "
        "labels/ (instance labels), or a pairs.csv (header image,label or image,mask)."
    )


def _instance_ids(target: np.ndarray, min_area: int) -> list[int]:
    ids, counts = np.unique(target, return_counts=True)
    keep = (ids != 0) & (counts >= min_area)
    return [int(i) for i in ids[keep]]


def _subset(items: list, max_samples: int | None, rng: np.random.Generator) -> list:
    if max_samples is None or len(items) <= max_samples:
        return items
    chosen = np.sort(rng.choice(len(items), size=max_samples, replace=False))
    return [items[i] for i in chosen]


def load_dataset(
    path: str | Path,
    *,
    min_area: int = 50,
    max_samples: int | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Open a data set folder, detecting its layout (see the module docstring).

    Args:
        path: Data set folder (e.g. ``shared/data/benchmarks/GrabCut`` or
            ``shared/data/microscopy/stardist_3d``).
        min_area: Instances (labels or mask components) with fewer pixels in a plane are not
            samples. Not applied to benchmark masks (one object per image by definition).
        max_samples: At most this many instances per image plane, a seeded random subset
            (keeps evaluation on crowded images or stacks short). None = all.
        limit: At most this many samples in total, a seeded random subset of all samples,
            kept in file order. None = all.
        seed: Seed of both subsets.

    Returns:
        A lazy :class:`Dataset`.

    Raises:
        DatasetError: The folder is missing, empty or of no known layout; a pair is missing;
            an image and its labels differ in shape; or no sample is left.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data set folder not found: {root}")
    if min_area < 1:
        raise DatasetError(f"min_area must be >= 1, got {min_area}")
    for arg, value in (("max_samples", max_samples), ("limit", limit)):
        if value is not None and value < 1:
            raise DatasetError(f"{arg} must be >= 1 (or None for all), got {value}")
    kind, pairs = list_pairs(root)
    rng = np.random.default_rng(seed)
    entries: list[_Entry] = []
    for image_path, target_path in pairs:
        stem = image_path.stem
        if kind == "benchmark":
            if (encode_benchmark_mask(read_mask(target_path)) == 1).any():
                entries.append(_Entry(image_path, target_path, None, None, stem))
            else:
                log.warning(
                    "skipping %s: its mask %s has no object pixels", image_path, target_path.name
                )
            continue
        target = read_target(target_path, kind)
        if target.ndim == 2:
            ids = _subset(_instance_ids(target, min_area), max_samples, rng)
            entries += [_Entry(image_path, target_path, None, i, f"{stem}:{i}") for i in ids]
        elif target.ndim == 3:
            for z in range(target.shape[0]):
                ids = _subset(_instance_ids(target[z], min_area), max_samples, rng)
                entries += [_Entry(image_path, target_path, z, i, f"{stem}:z{z}:{i}") for i in ids]
        else:
            raise DatasetError(
                f"labels {target_path} have shape {target.shape}; expected (H, W) or (Z, Y, X)"
            )
        del target
    entries = _subset(entries, limit, rng)
    if not entries:
        raise DatasetError(
            f"no samples in {root}: no instance has at least min_area={min_area} pixels"
        )
    log.info(
        "data set %s (%s): %d samples from %d files", root.name, kind, len(entries), len(pairs)
    )
    return Dataset(root.name, root, kind, entries)
