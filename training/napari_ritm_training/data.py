"""Training data: images with instance labels, the train/validation split, and batch making.

Sources (each becomes an :class:`InstanceDataset` of 2D :class:`TrainImage` planes):

* folders read with :mod:`napari_ritm.evaluation.datasets` layouts: ``pairs.csv`` (``image,label``
  or
  ``image,mask``), ``images/`` + ``labels/`` matched by name, and the benchmark layout
  ``images/`` + ``masks/`` (one object per mask, however many pieces it has, as evaluation
  reads it; GrabCut's 128 band stays "ignore");
* TIFF stacks (Z, Y, X) with label stacks of the same shape: every slice with objects is an image;
* arrays passed in directly (napari Image + Labels layers) with :func:`from_arrays`;
* procedurally generated cells (:mod:`napari_ritm_training.synthetic`).

Every image is normalised once with :func:`napari_ritm.inference.preprocess.prepare_image` (uint8 /
255,
other dtypes by their 1st / 99.8th percentiles), exactly as the plugin does at inference; the
numbers are kept with the image. Grey images are stored with one channel to save memory.

The train/validation split is made **by group** (a source file, a stack or a layer), so the same
image or stack is never on both sides; a data set that is one stack is split by slice. Objects of
one slice are never on both sides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_ritm.errors import DatasetError

from .augment import AugmentConfig, ImageStats, augment_crop
from .sampler import MultiPointSampler

__all__ = [
    "InstanceDataset",
    "TrainImage",
    "TrainingBatcher",
    "check_pair",
    "from_arrays",
    "load_data",
    "load_folder",
    "make_validation_samples",
    "object_diameter_range",
    "split_by_group",
]

log = logging.getLogger(__name__)


@dataclass
class TrainImage:
    """One 2D training image with its instance labels.

    Attributes:
        image: float32 (H, W, C) in [0, 1], C = 1 (grey) or 3 (RGB).
        labels: int32 (H, W): 0 background, > 0 instance ids, -1 ignore.
        name: readable id, e.g. ``"stardist_3d/img3d:z12"``.
        group: split unit (the source file or layer): images of one group stay together.
        normalization: :meth:`napari_ritm.inference.preprocess.Normalization.to_dict` of the image.
        stats: object centroids and diameters (for crop placement and object-size scaling).
    """

    image: np.ndarray
    labels: np.ndarray
    name: str
    group: str
    normalization: dict[str, Any]
    stats: ImageStats = field(repr=False)

    @property
    def n_objects(self) -> int:
        """Number of instances (above the load-time minimum area)."""
        return len(self.stats.diameters)


@dataclass
class InstanceDataset:
    """A named list of training images (one data source).

    Attributes:
        name: source name (folder name, "layers" or "synthetic").
        images: the 2D images.
        source: where it came from (a path or a description).
    """

    name: str
    images: list[TrainImage]
    source: str = ""

    @property
    def groups(self) -> list[str]:
        """Distinct split groups, in first-seen order."""
        return list(dict.fromkeys(im.group for im in self.images))

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts: images, groups, objects, median object diameter."""
        diam = [d for im in self.images for d in im.stats.diameters]
        return {
            "name": self.name,
            "source": self.source,
            "n_images": len(self.images),
            "n_groups": len(self.groups),
            "n_objects": int(sum(im.n_objects for im in self.images)),
            "median_diameter_px": float(np.median(diam)) if diam else None,
        }


# ---------------------------------------------------------------------------------------------
# validation of user arrays


def check_pair(image: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Check an (image, labels) pair and return it with integer labels.

    Accepted layouts: image (H, W) or (H, W, C) with labels (H, W); image (Z, H, W) or
    (Z, H, W, C) with labels (Z, H, W).

    Args:
        image: the image array (any numeric dtype).
        labels: instance ids (integers, or floats holding whole numbers; bool = one object).
        name: used in error messages.

    Returns:
        (image, labels as int32).

    Raises:
        DatasetError: shapes differ, labels are not whole numbers, or hold no object.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise DatasetError(
            f"{name}: labels have shape {labels.shape}; expected (H, W) or a (Z, H, W) stack"
        )
    if image.shape[: labels.ndim] != labels.shape:
        raise DatasetError(
            f"{name}: image shape {image.shape} and labels shape {labels.shape} differ; the "
            "labels must cover the same pixels (channels may only be the last image axis)"
        )
    if image.ndim not in (labels.ndim, labels.ndim + 1):
        raise DatasetError(f"{name}: image shape {image.shape} has too many axes for its labels")
    if labels.dtype == bool:
        labels = labels.astype(np.int32)
    elif not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.array_equal(
            labels, np.round(labels)
        ):
            raise DatasetError(
                f"{name}: labels are {labels.dtype} with non-integer values; a Labels image "
                "must hold whole-number instance ids (0 = background)"
            )
    if labels.size and int(labels.max()) > np.iinfo(np.int32).max:
        raise DatasetError(f"{name}: label ids above 2**31 are not supported; relabel them")
    labels = labels.astype(np.int32, copy=False)
    if not (labels > 0).any():
        raise DatasetError(
            f"{name}: the labels are empty (no pixel > 0); paint at least one object first"
        )
    return image, labels


# ---------------------------------------------------------------------------------------------
# building TrainImages


def _planes(image: np.ndarray, labels: np.ndarray):
    if labels.ndim == 2:
        yield None, image, labels
    else:
        for z in range(labels.shape[0]):
            yield z, image[z], labels[z]


def _make_images(
    image: np.ndarray,
    labels: np.ndarray,
    name: str,
    group: str,
    *,
    min_area: int,
    percentiles: tuple[float, float],
) -> list[TrainImage]:
    """Normalise each plane; drop planes without objects. ``labels`` is int32 (-1 = ignore)."""
    from napari_ritm.inference.preprocess import prepare_image

    out = []
    for z, plane, lab in _planes(image, labels):
        if not (lab > 0).any():
            continue
        rgb01, norm = prepare_image(np.ascontiguousarray(plane), percentiles=percentiles)
        if norm.layout != "rgb":
            rgb01 = rgb01[:, :, :1]  # grey replicated to 3 channels: keep one
        lab = _drop_small(lab, min_area)
        if not (lab > 0).any():
            continue
        out.append(
            TrainImage(
                image=np.ascontiguousarray(rgb01, np.float32),
                labels=np.ascontiguousarray(lab, np.int32),
                name=name if z is None else f"{name}:z{z}",
                group=group,
                normalization=norm.to_dict(),
                stats=ImageStats.from_labels(np.where(lab > 0, lab, 0)),
            )
        )
    return out


def object_diameter_range(
    labels: Sequence[np.ndarray], spread: tuple[float, float] = (0.4, 1.5), floor: float = 8.0
) -> tuple[float, float] | None:
    """A ``diameter_range`` for training on these labels: ``spread`` times their median object.

    Fine-tuning on one's own data should show the network objects at about the size they have
    there (the default 14-90 px range is for nuclei of many data sets; chloroplasts of ~100 px
    would be shrunk). The equivalent diameter of each object (label value > 0, per 2D plane)
    is ``sqrt(4 area / pi)``.

    Returns:
        ``(max(floor, spread[0] * d), max(floor + 1, spread[1] * d))`` for the median diameter
        ``d``, or None when there is no object.
    """
    areas: list[np.ndarray] = []
    for stack in labels:
        stack = np.asarray(stack)
        planes = stack.reshape((-1, *stack.shape[-2:])) if stack.ndim > 2 else stack[None]
        for plane in planes:
            values = plane[plane > 0].astype(np.int64, copy=False)
            if values.size:
                counts = np.bincount(values)
                areas.append(counts[counts > 0])
    if not areas:
        return None
    diameter = float(np.median(np.sqrt(4.0 * np.concatenate(areas) / np.pi)))
    return max(floor, spread[0] * diameter), max(floor + 1.0, spread[1] * diameter)


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Set instances smaller than ``min_area`` pixels to background (specks, stray pixels)."""
    if min_area <= 1:
        return labels
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    small = ids[counts < min_area]
    if small.size == 0:
        return labels
    labels = labels.copy()
    labels[np.isin(labels, small)] = 0
    return labels


def from_arrays(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    dataset_name: str = "layers",
    min_area: int = 10,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> InstanceDataset:
    """Dataset from arrays, e.g. napari Image and Labels layer data.

    Args:
        images: image arrays, (H, W[, C]) or stacks (Z, H, W[, C]).
        labels: label arrays of matching spatial shape ((H, W) or (Z, H, W)), 0 = background.
        names: one name per pair (layer names); default "image0", "image1", ...
        dataset_name: name of the dataset.
        min_area: instances with fewer pixels (per plane) are treated as background.
        percentiles: normalisation percentiles for non-uint8 images.

    Returns:
        The dataset; each pair is its own split group.

    Raises:
        DatasetError: no pairs, counts differ, or a pair fails :func:`check_pair`.
    """
    if len(images) == 0:
        raise DatasetError("no image/labels pairs given; pick at least one Image and Labels layer")
    if len(images) != len(labels):
        raise DatasetError(f"{len(images)} images but {len(labels)} label arrays; pair them 1:1")
    names = list(names) if names is not None else [f"image{i}" for i in range(len(images))]
    out: list[TrainImage] = []
    for image, lab, name in zip(images, labels, names, strict=True):
        image, lab = check_pair(image, lab, name)
        out += _make_images(
            image, lab, name, f"{dataset_name}/{name}", min_area=min_area, percentiles=percentiles
        )
    return InstanceDataset(dataset_name, out, source="arrays")


def load_folder(
    path: str | Path,
    *,
    min_area: int = 10,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> InstanceDataset:
    """Read a data set folder (layouts of :func:`napari_ritm.evaluation.datasets.load_dataset`).

    Binary microscopy masks are split into 8-connected components, each an instance. A
    benchmark mask (``images/`` + ``masks/``) is one object, all its pieces together (a person
    cut in two by a lamp post is one person), as evaluation scores it; GrabCut's 128 band
    becomes ignore (-1). Each file is one split group.

    Args:
        path: the folder.
        min_area: instances with fewer pixels (per plane) are treated as background.
        percentiles: normalisation percentiles for non-uint8 images.

    Raises:
        DatasetError: unknown layout, no pairs, shape mismatch, float or empty labels.
    """
    from napari_ritm.evaluation import datasets as ds

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"training data folder not found: {root}")
    kind, pairs = ds.list_pairs(root)
    if not pairs:
        raise DatasetError(f"no image/label pairs found in {root}")
    images: list[TrainImage] = []
    for image_path, target_path in pairs:
        image, target = ds.read_pair(image_path, target_path, kind)
        if kind == "benchmark":
            target = _benchmark_instances(target)
        name = f"{root.name}/{image_path.stem}"
        image, target = check_pair(image, target, str(target_path))
        images += _make_images(
            image, target, name, name, min_area=min_area, percentiles=percentiles
        )
    if not images:
        raise DatasetError(f"{root}: no image holds an object of at least {min_area} pixels")
    return InstanceDataset(root.name, images, source=str(root))


def _benchmark_instances(mask: np.ndarray) -> np.ndarray:
    """A benchmark mask as labels: the whole object is id 1 (not its connected pieces, which
    taught fragments: DAVIS read that way gave 319 "objects" of median 15 px in 121 images)."""
    from napari_ritm.evaluation.datasets import encode_benchmark_mask

    return encode_benchmark_mask(mask).astype(np.int32)


def load_data(
    paths: Sequence[str | Path],
    *,
    min_area: int = 10,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> list[InstanceDataset]:
    """Read several data set folders (each one dataset).

    Raises:
        DatasetError: ``paths`` is empty, or a folder fails :func:`load_folder`.
    """
    if not paths:
        raise DatasetError("no training data given; pass at least one folder with --data")
    return [load_folder(p, min_area=min_area, percentiles=percentiles) for p in paths]


# ---------------------------------------------------------------------------------------------
# split


def split_by_group(
    datasets: Sequence[InstanceDataset], val_fraction: float, seed: int
) -> tuple[list[InstanceDataset], list[TrainImage], dict[str, Any]]:
    """Split every dataset into train and validation by group (file / stack / layer) or slice.

    Per dataset with at least two groups, ``round(val_fraction * n_groups)`` groups (at least one
    when ``val_fraction > 0``) go to validation, drawn with a seeded generator. A dataset that is
    a single stack with several annotated slices is split by slice instead: its last
    ``round(val_fraction * n_slices)`` slices (at least one) are held back as one block, so
    only the slices at the block's edge have a trained neighbour. A slice (a 2D image) is never
    divided: all objects of one slice are on the same side. A dataset of a single 2D image stays
    entirely in training.

    Returns:
        (training datasets, validation images, a JSON-ready record of the split; each dataset's
        entry says its ``unit``: "group" or "slice").
    """
    rng = np.random.default_rng(seed)
    train_sets: list[InstanceDataset] = []
    val_images: list[TrainImage] = []
    record: dict[str, Any] = {"seed": seed, "val_fraction": val_fraction, "datasets": {}}
    for dset in datasets:
        groups = dset.groups
        unit = "group"
        if val_fraction > 0 and len(groups) >= 2:
            n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
            val_groups = set(rng.choice(groups, size=n_val, replace=False).tolist())
            held = [im.group in val_groups for im in dset.images]
        elif val_fraction > 0 and len(dset.images) >= 2:  # one stack: hold back its last slices
            unit = "slice"
            n_val = min(len(dset.images) - 1, max(1, round(val_fraction * len(dset.images))))
            held = [i >= len(dset.images) - n_val for i in range(len(dset.images))]
        else:
            held = [False] * len(dset.images)
        train = [im for im, h in zip(dset.images, held, strict=True) if not h]
        val = [im for im, h in zip(dset.images, held, strict=True) if h]
        train_sets.append(InstanceDataset(dset.name, train, dset.source))
        val_images += val
        if unit == "slice":
            entry = {
                "train_groups": [im.name for im in train],
                "val_groups": [im.name for im in val],
            }
        else:
            val_set = {im.group for im in val}
            entry = {
                "train_groups": [g for g in groups if g not in val_set],
                "val_groups": [g for g in groups if g in val_set],
            }
        record["datasets"][dset.name] = {**entry, "unit": unit}
        if val_fraction > 0 and not val:
            log.warning("%s has a single image: all of it is used for training", dset.name)
    return train_sets, val_images, record


def make_validation_samples(
    images: Sequence[TrainImage],
    *,
    max_objects: int,
    crop: int,
    seed: int,
) -> list:
    """Evaluation samples (``napari_ritm.evaluation.datasets.Sample``) from held-out images.

    Each sample is a crop around one object (at least ``crop`` pixels a side, larger for big
    objects) holding the *normalised* image as uint8 (so the session's uint8 / 255 reproduces
    the training input to within 1/255) and the object as gt (int8; -1 where ignored).

    Args:
        images: validation images.
        max_objects: at most this many objects in total (seeded random subset).
        crop: minimum crop side in pixels.
        seed: seed of the subset.

    Returns:
        list of Sample(name, image uint8 (h, w) or (h, w, 3), gt int8 (h, w)).
    """
    from napari_ritm.evaluation.datasets import Sample

    candidates = [
        (i, int(obj)) for i, im in enumerate(images) for obj in np.unique(im.labels[im.labels > 0])
    ]
    rng = np.random.default_rng(seed)
    if len(candidates) > max_objects:
        pick = np.sort(rng.choice(len(candidates), size=max_objects, replace=False))
        candidates = [candidates[k] for k in pick]
    samples = []
    for i, obj in candidates:
        im = images[i]
        mask = im.labels == obj
        rows, cols = np.nonzero(mask)
        H, W = mask.shape
        side_r = min(H, max(crop, int(2 * (rows.max() - rows.min() + 1))))
        side_c = min(W, max(crop, int(2 * (cols.max() - cols.min() + 1))))
        r0 = int(np.clip((rows.min() + rows.max()) // 2 - side_r // 2, 0, H - side_r))
        c0 = int(np.clip((cols.min() + cols.max()) // 2 - side_c // 2, 0, W - side_c))
        window = (slice(r0, r0 + side_r), slice(c0, c0 + side_c))
        pixels = np.round(im.image[window] * 255.0).astype(np.uint8)
        pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        gt = mask[window].astype(np.int8)
        gt[im.labels[window] < 0] = -1
        samples.append(Sample(name=f"{im.name}:{obj}", image=np.ascontiguousarray(pixels), gt=gt))
    return samples


# ---------------------------------------------------------------------------------------------
# batches


class TrainingBatcher:
    """Draws augmented crops with sampled targets and clicks.

    Datasets are drawn with the given weights (default: equal), then an image uniformly within
    the dataset; with probability ``synthetic_fraction`` a synthetic image is used instead.

    Args:
        datasets: training datasets (non-empty ones are used).
        augment: augmentation settings (crop size included).
        sampler: click sampler.
        min_object_area: objects smaller than this (in crop pixels, after augmentation) are not
            targets (they still count as "other objects" for negative clicks).
        weights: sampling weight per dataset (same order); None = equal.
        diameter_ranges: per dataset (same order), a ``diameter_range`` that replaces
            ``augment``'s for its crops (None in the list or for all: ``augment``'s), so that
            data sets whose objects differ in scale (small cells, large natural objects) are
            each shown at theirs.
        synthetic: optional synthetic dataset.
        synthetic_fraction: probability of drawing from ``synthetic``.
        max_retries: crops without any target are redrawn this many times, after which an
            empty (all-background) sample is kept.
    """

    def __init__(
        self,
        datasets: Sequence[InstanceDataset],
        augment: AugmentConfig,
        sampler: MultiPointSampler,
        *,
        min_object_area: int = 80,
        weights: Sequence[float] | None = None,
        diameter_ranges: Sequence[tuple[float, float] | None] | None = None,
        synthetic: InstanceDataset | None = None,
        synthetic_fraction: float = 0.0,
        max_retries: int = 10,
    ) -> None:
        n = len(datasets)
        kept = [
            (d, 1.0 if weights is None else float(w), r)
            for d, w, r in zip(
                datasets,
                weights if weights is not None else [1.0] * n,
                diameter_ranges if diameter_ranges is not None else [None] * n,
                strict=True,
            )
            if d.images
        ]
        if not kept and (synthetic is None or synthetic_fraction <= 0):
            raise DatasetError("no training images left after the validation split")
        self.datasets = [d for d, _, _ in kept]
        self.augments = [
            augment if r is None else replace(augment, diameter_range=tuple(r)) for _, _, r in kept
        ]
        w = np.array([w for _, w, _ in kept], np.float64)
        if (len(w) and (w < 0).any()) or (len(w) and w.sum() <= 0):
            raise DatasetError(
                f"dataset weights must be >= 0 with a positive sum, got {w.tolist()}"
            )
        self.weights = w / w.sum() if len(w) else w
        self.augment = augment
        self.sampler = sampler
        self.min_object_area = int(min_object_area)
        self.synthetic = synthetic
        self.synthetic_fraction = float(synthetic_fraction) if synthetic is not None else 0.0
        if not self.datasets:
            self.synthetic_fraction = 1.0
        self.max_retries = int(max_retries)

    def _pick_image(self, rng: np.random.Generator) -> tuple[TrainImage, AugmentConfig]:
        """An image and the augmentation of its data set."""
        if self.synthetic is not None and rng.random() < self.synthetic_fraction:
            dset, augment = self.synthetic, self.augment
        else:
            k = int(rng.choice(len(self.datasets), p=self.weights))
            dset, augment = self.datasets[k], self.augments[k]
        return dset.images[int(rng.integers(len(dset.images)))], augment

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One training sample.

        Returns:
            (image float32 (3, h, w) in [0, 1], points float32 (2N, 3), gt float32 (1, h, w)).
        """
        for _ in range(self.max_retries + 1):
            im, augment = self._pick_image(rng)
            img, lab = augment_crop(im.image, im.labels, rng, augment, im.stats)
            ids, counts = np.unique(lab[lab > 0], return_counts=True)
            targets = ids[counts >= self.min_object_area]
            if targets.size:
                break
        target = self.sampler.sample(lab, rng, targets)
        return (
            np.ascontiguousarray(img.transpose(2, 0, 1)),
            target.points,
            target.gt[None],
        )

    def batch(
        self, rng: np.random.Generator, size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``size`` samples stacked: images (B, 3, h, w), points (B, 2N, 3), gt (B, 1, h, w)."""
        items = [self.sample(rng) for _ in range(size)]
        return tuple(np.stack(parts) for parts in zip(*items, strict=True))  # type: ignore[return-value]
