"""Augmentations of (image, instance labels) training crops.

Images arrive already normalised to float32 in [0, 1] by
:func:`napari_ritm.inference.preprocess.prepare_image` (done once per image in
:mod:`napari_ritm_training.data`), so training sees exactly what the plugin feeds the network at
inference. Grey images are kept with one channel until the end of the pipeline and replicated to
RGB last, so every intensity augmentation keeps them grey.

Order per crop: scale + pad + random crop in one resampling step (reference: UniformRandomResize,
PadIfNeeded, RandomCrop), flips and 90° rotations, then intensity changes (brightness/contrast,
gamma, RGB shift for colour images, blur, noise). Scale is either the reference's uniform factor or
"object size aware": the factor is chosen so that an object's equivalent diameter becomes
log-uniform in a range of pixels (useful because nuclei differ a lot in size between data sets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["AugmentConfig", "ImageStats", "augment_crop", "choose_window", "crop_resize"]


@dataclass
class AugmentConfig:
    """Augmentation settings (defaults: the training notes' microscopy recipe).

    Attributes:
        crop: output (h, w) in pixels.
        scale_mode: "object" (diameter log-uniform in ``diameter_range``), "uniform" (factor
            uniform in ``scale_range``, the reference) or "none".
        scale_range: (low, high) factor for "uniform" mode.
        diameter_range: (low, high) target equivalent diameter in pixels for "object" mode.
        center_on_object_prob: probability of placing the crop so that a random object's
            centroid falls inside it (otherwise the crop position is uniform).
        flip: random horizontal and vertical flips.
        rot90: random 90° rotations.
        brightness: additive brightness range ± (in [0, 1] units).
        contrast: multiplicative contrast range (low, high).
        brightness_contrast_prob: probability of applying brightness/contrast.
        gamma: (low, high) gamma exponent range.
        gamma_prob: probability of applying gamma.
        rgb_shift: ± per-channel shift (colour images only).
        rgb_shift_prob: probability of the RGB shift.
        blur_prob: probability of a Gaussian blur with sigma in ``blur_sigma``.
        blur_sigma: (low, high) sigma in pixels.
        noise_prob: probability of additive Gaussian noise with std in ``noise_std``.
        noise_std: (low, high) std in [0, 1] units.
        invert_prob: probability of inverting intensities (1 - x), so that a model trained on
            fluorescence (bright objects on dark) also sees dark objects on a bright
            background, as in brightfield and histology.
    """

    crop: tuple[int, int] = (192, 192)
    scale_mode: str = "object"
    scale_range: tuple[float, float] = (0.75, 1.40)
    diameter_range: tuple[float, float] = (14.0, 90.0)
    center_on_object_prob: float = 0.5
    flip: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness_contrast_prob: float = 0.75
    gamma: tuple[float, float] = (0.6, 1.6)
    gamma_prob: float = 0.5
    rgb_shift: float = 10.0 / 255.0
    rgb_shift_prob: float = 0.75
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    noise_prob: float = 0.3
    noise_std: tuple[float, float] = (0.005, 0.05)
    invert_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.scale_mode not in ("object", "uniform", "none"):
            raise ValueError(f"scale_mode must be object/uniform/none, got {self.scale_mode!r}")


@dataclass
class ImageStats:
    """Per-image object statistics used to place and scale crops.

    Attributes:
        centroids: float64 (K, 2) object centroids (row, col).
        diameters: float64 (K,) equivalent diameters sqrt(4 * area / pi) in pixels.
    """

    centroids: np.ndarray
    diameters: np.ndarray

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> ImageStats:
        """Compute centroids and diameters of every positive id of ``labels`` (H, W)."""
        ids, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(labels.shape)
        keep = ids > 0
        areas = np.bincount(inverse.ravel(), minlength=len(ids)).astype(np.float64)
        rows, cols = np.indices(labels.shape)
        sum_r = np.bincount(inverse.ravel(), weights=rows.ravel(), minlength=len(ids))
        sum_c = np.bincount(inverse.ravel(), weights=cols.ravel(), minlength=len(ids))
        areas_k = np.maximum(areas[keep], 1.0)
        centroids = np.stack([sum_r[keep] / areas_k, sum_c[keep] / areas_k], axis=1)
        return cls(centroids.reshape(-1, 2), np.sqrt(4.0 * areas[keep] / math.pi))


def choose_window(
    image_hw: tuple[int, int],
    stats: ImageStats | None,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """Pick the scale factor and source window of one crop.

    Args:
        image_hw: (H, W) of the source image.
        stats: object statistics of the image (None or empty: no objects).
        cfg: augmentation settings.
        rng: random generator.

    Returns:
        (scale, row0, col0): output pixels per source pixel, and the top-left corner of the
        source window (may be negative or beyond the image: the outside is zero padding).
    """
    h, w = cfg.crop
    H, W = image_hw
    has_objects = stats is not None and len(stats.diameters) > 0
    centre_idx = None
    if has_objects and rng.random() < cfg.center_on_object_prob:
        centre_idx = int(rng.integers(len(stats.diameters)))

    if cfg.scale_mode == "uniform":
        scale = float(rng.uniform(*cfg.scale_range))
    elif cfg.scale_mode == "object" and has_objects:
        ref = stats.diameters[centre_idx] if centre_idx is not None else np.median(stats.diameters)
        lo, hi = cfg.diameter_range
        target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        scale = float(np.clip(target / max(float(ref), 1.0), 0.1, 8.0))
    else:
        scale = 1.0

    wh, ww = h / scale, w / scale
    if centre_idx is not None:
        cr, cc = stats.centroids[centre_idx]
        row0 = cr - rng.uniform(0.1, 0.9) * wh
        col0 = cc - rng.uniform(0.1, 0.9) * ww
    else:
        row0 = rng.uniform(min(0.0, H - wh), max(0.0, H - wh))
        col0 = rng.uniform(min(0.0, W - ww), max(0.0, W - ww))
    return scale, float(row0), float(col0)


def crop_resize(
    image: np.ndarray,
    labels: np.ndarray,
    out_hw: tuple[int, int],
    scale: float,
    row0: float,
    col0: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a source window (zero padded outside the image) and resample it to ``out_hw``.

    Args:
        image: float32 (H, W, C) in [0, 1].
        labels: int (H, W).
        out_hw: (h, w) of the output.
        scale: output pixels per source pixel.
        row0, col0: top-left corner of the source window.

    Returns:
        (image float32 (h, w, C), labels int32 (h, w)); image bilinear (area when shrinking),
        labels nearest.
    """
    h, w = out_hw
    H, W = labels.shape
    r0, c0 = math.floor(row0), math.floor(col0)
    sh, sw = max(1, round(h / scale)), max(1, round(w / scale))
    # Integer source window [r0, r0+sh) x [c0, c0+sw), intersected with the image.
    ir0, ir1 = max(r0, 0), min(r0 + sh, H)
    ic0, ic1 = max(c0, 0), min(c0 + sw, W)
    channels = image.shape[2]
    patch = np.zeros((sh, sw, channels), np.float32)
    patch_labels = np.zeros((sh, sw), np.int32)
    if ir1 > ir0 and ic1 > ic0:
        patch[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0] = image[ir0:ir1, ic0:ic1]
        patch_labels[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0] = labels[ir0:ir1, ic0:ic1]
    if (sh, sw) == (h, w):
        return patch, patch_labels
    interp = cv2.INTER_AREA if sh > h or sw > w else cv2.INTER_LINEAR
    out = cv2.resize(patch, (w, h), interpolation=interp)
    if out.ndim == 2:
        out = out[:, :, None]
    rows = np.minimum(((np.arange(h) + 0.5) * sh / h).astype(np.int64), sh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * sw / w).astype(np.int64), sw - 1)
    return out.astype(np.float32, copy=False), patch_labels[rows[:, None], cols[None, :]]


def augment_crop(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    stats: ImageStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented training crop.

    Args:
        image: float32 (H, W, C) in [0, 1], C = 1 (grey) or 3 (RGB).
        labels: int (H, W) instance ids (0 background, < 0 ignore).
        rng: random generator (the only source of randomness).
        cfg: augmentation settings.
        stats: object statistics of this image (for object-size scaling and object-centred crops).

    Returns:
        (image float32 (h, w, 3) in [0, 1], labels int32 (h, w)).
    """
    scale, row0, col0 = choose_window(labels.shape, stats, cfg, rng)
    img, lab = crop_resize(image, labels, cfg.crop, scale, row0, col0)

    if cfg.flip:
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if rng.random() < 0.5:
            img, lab = img[::-1], lab[::-1]
    if cfg.rot90 and cfg.crop[0] == cfg.crop[1]:
        k = int(rng.integers(4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
    img = np.ascontiguousarray(img, np.float32)
    lab = np.ascontiguousarray(lab, np.int32)

    img = _intensity(img, rng, cfg)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img, lab


def _intensity(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    if cfg.invert_prob > 0 and rng.random() < cfg.invert_prob:
        img = 1.0 - img
    if rng.random() < cfg.brightness_contrast_prob:
        alpha = rng.uniform(*cfg.contrast)
        beta = rng.uniform(-cfg.brightness, cfg.brightness)
        img = np.clip(img * alpha + beta, 0.0, 1.0)
    if rng.random() < cfg.gamma_prob:
        img = np.power(np.clip(img, 0.0, 1.0), rng.uniform(*cfg.gamma))
    if img.shape[2] == 3 and rng.random() < cfg.rgb_shift_prob:
        shift = rng.uniform(-cfg.rgb_shift, cfg.rgb_shift, size=3).astype(np.float32)
        img = np.clip(img + shift, 0.0, 1.0)
    if rng.random() < cfg.blur_prob:
        sigma = rng.uniform(*cfg.blur_sigma)
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
        if img.ndim == 2:
            img = img[:, :, None]
    if rng.random() < cfg.noise_prob:
        std = rng.uniform(*cfg.noise_std)
        noise = rng.normal(0.0, std, size=(*img.shape[:2], 1)).astype(np.float32)
        if img.shape[2] == 3:  # colour: independent noise per channel
            noise = rng.normal(0.0, std, size=img.shape).astype(np.float32)
        img = np.clip(img + noise, 0.0, 1.0)
    return img.astype(np.float32, copy=False)
