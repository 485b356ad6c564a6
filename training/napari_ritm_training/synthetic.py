"""Procedurally generated cell/nuclei-like images with instance labels, for pre-training.

Each image is built in four steps (all randomness from one NumPy generator):

1. **Objects**: ``n`` star-convex blobs, i.e. ellipses (random axes, aspect ratio and angle)
   whose radius is modulated by a few low-order Fourier terms. Blobs are placed at random; a
   new blob may overlap earlier ones by up to ``max_overlap`` of its area and then takes the
   overlapping pixels, which produces touching and partly occluded objects, as in dense nuclei.
2. **Texture**: each object gets its own brightness, a smooth multiplicative texture (blurred
   noise), an optional darker or brighter rim and a few nucleolus-like spots.
3. **Background**: an offset plus a random linear gradient and a faint low-frequency haze;
   with probability ``dark_objects_prob`` the contrast is inverted (dark cells on a bright
   background, as in transmitted light).
4. **Optics and sensor**: Gaussian blur (the PSF), Poisson-like shot noise plus Gaussian read
   noise, then quantisation to 8 or 16 bits (16-bit images use a random offset and a small part
   of the range, like real camera data, so the percentile normalisation is exercised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .augment import ImageStats
from .data import InstanceDataset, TrainImage

__all__ = ["SyntheticConfig", "make_synthetic_dataset", "synthetic_cells"]


@dataclass
class SyntheticConfig:
    """Settings of the generator.

    Attributes:
        shape: (H, W) of each image.
        n_objects: (low, high) number of objects to try to place (inclusive).
        radius: (low, high) mean object radius in pixels.
        aspect: (low, high) ratio of the long to the short axis.
        irregularity: amplitude of the Fourier radius modulation (fraction of the radius).
        max_overlap: largest fraction of a new object that may cover earlier ones.
        blur_sigma: (low, high) PSF sigma in pixels.
        snr: (low, high) peak signal in photon-like units (lower = noisier).
        bit_depths: choices of output bit depth (8 and/or 16).
        dark_objects_prob: probability of dark objects on a bright background.
    """

    shape: tuple[int, int] = (256, 256)
    n_objects: tuple[int, int] = (3, 40)
    radius: tuple[float, float] = (6.0, 40.0)
    aspect: tuple[float, float] = (1.0, 1.8)
    irregularity: float = 0.12
    max_overlap: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    snr: tuple[float, float] = (20.0, 400.0)
    bit_depths: tuple[int, ...] = (8, 16)
    dark_objects_prob: float = 0.15


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-blurred noise, float32 (H, W)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma, sigmaY=sigma)
    std = float(noise.std())
    return noise / std if std > 0 else noise


def _blob(rng: np.random.Generator, cfg: SyntheticConfig, shape: tuple[int, int]):
    """One star-convex blob: (bool mask of its bounding box, top-left (row, col))."""
    h, w = shape
    radius = rng.uniform(*cfg.radius)
    aspect = rng.uniform(*cfg.aspect)
    a, b = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
    angle = rng.uniform(0, math.pi)
    cr, cc = rng.uniform(0, h), rng.uniform(0, w)
    half = math.ceil(max(a, b) * (1 + 3 * cfg.irregularity)) + 1
    r0, c0 = int(cr) - half, int(cc) - half
    rr, cc_ = np.mgrid[r0 : r0 + 2 * half + 1, c0 : c0 + 2 * half + 1].astype(np.float32)
    dy, dx = rr - cr, cc_ - cc
    # Rotate into the ellipse frame, then compare the radius with a modulated boundary.
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    theta = np.arctan2(v, u)
    mod = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        mod += (
            cfg.irregularity
            / (k - 1)
            * rng.standard_normal()
            * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        )
    inside = (u / a) ** 2 + (v / b) ** 2 <= mod**2
    return inside, (r0, c0)


def synthetic_cells(
    rng: np.random.Generator, cfg: SyntheticConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one image with instance labels.

    Args:
        rng: random generator.
        cfg: generator settings (default :class:`SyntheticConfig`).

    Returns:
        (image uint8 or uint16 (H, W), labels int32 (H, W) with 0 background and ids 1..K).
    """
    cfg = cfg or SyntheticConfig()
    h, w = cfg.shape
    labels = np.zeros((h, w), np.int32)
    n_try = int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))
    next_id = 1
    for _ in range(n_try):
        inside, (r0, c0) = _blob(rng, cfg, (h, w))
        # Clip the blob's box to the image.
        br0, bc0 = max(r0, 0), max(c0, 0)
        br1, bc1 = min(r0 + inside.shape[0], h), min(c0 + inside.shape[1], w)
        if br1 <= br0 or bc1 <= bc0:
            continue
        part = inside[br0 - r0 : br1 - r0, bc0 - c0 : bc1 - c0]
        area = int(part.sum())
        if area < 20:
            continue
        region = labels[br0:br1, bc0:bc1]
        if (region[part] > 0).sum() > cfg.max_overlap * area:
            continue
        region[part] = next_id
        next_id += 1
    # Objects that lost most of their area to later ones, or got split, would be confusing.
    labels = _clean_labels(labels)

    # Per-object intensity with texture, rim and spots.
    signal = np.zeros((h, w), np.float32)
    texture = 1.0 + 0.25 * rng.uniform(0, 1) * _smooth_noise(rng, (h, w), rng.uniform(1.0, 4.0))
    ids = np.unique(labels[labels > 0])
    level = np.zeros(int(labels.max()) + 1, np.float32)
    level[ids] = rng.uniform(0.35, 1.0, size=ids.size)
    signal = level[labels] * texture
    if rng.random() < 0.5 and ids.size:
        inner = cv2.erode((labels > 0).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2)
        rim = (labels > 0) & (inner == 0)
        signal[rim] *= rng.uniform(0.5, 1.5)
    for obj in ids:
        if rng.random() < 0.4:
            rows, cols = np.nonzero(labels == obj)
            for _ in range(int(rng.integers(1, 4))):
                k = int(rng.integers(rows.size))
                rad = max(1, int(rng.uniform(1, 3)))
                cv2.circle(
                    signal,
                    (int(cols[k]), int(rows[k])),
                    rad,
                    float(level[obj] * rng.uniform(0.4, 1.6)),
                    -1,
                )
    signal = np.where(labels > 0, signal, 0.0).astype(np.float32)

    # Background: offset, gradient, haze.
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    gradient = (rng.uniform(-1, 1) * rr / h + rng.uniform(-1, 1) * cc / w) * rng.uniform(0, 0.15)
    haze = 0.05 * rng.uniform(0, 1) * _smooth_noise(rng, (h, w), max(h, w) / 8)
    background = rng.uniform(0.02, 0.2) + gradient + haze
    image = np.clip(background + signal, 0.0, None)
    if rng.random() < cfg.dark_objects_prob:
        image = np.clip(1.2 - image, 0.0, None)

    # Optics and sensor.
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(*cfg.blur_sigma))
    photons = rng.uniform(*cfg.snr)
    image = rng.poisson(np.clip(image, 0, None) * photons).astype(np.float32) / photons
    image += rng.normal(0.0, rng.uniform(0.002, 0.02), size=image.shape).astype(np.float32)
    image = np.clip(image, 0.0, None)
    bits = int(rng.choice(cfg.bit_depths))
    if bits == 8:
        scale = 255.0 / max(float(np.percentile(image, 99.9)), 1e-6) * rng.uniform(0.6, 1.0)
        out = np.clip(np.round(image * scale), 0, 255).astype(np.uint8)
    else:
        offset = rng.uniform(50, 500)
        gain = rng.uniform(500, 20000)
        out = np.clip(np.round(offset + image * gain), 0, 65535).astype(np.uint16)
    return out, labels


def _clean_labels(labels: np.ndarray) -> np.ndarray:
    """Keep the largest connected piece of each id, drop tiny ones, renumber 1..K."""
    from scipy import ndimage

    out = np.zeros_like(labels)
    next_id = 1
    objects = ndimage.find_objects(labels)
    for idx, box in enumerate(objects, start=1):
        if box is None:
            continue
        mask = labels[box] == idx
        pieces, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            mask = pieces == (int(np.argmax(sizes)) + 1)
        if mask.sum() < 20:
            continue
        out[box][mask] = next_id
        next_id += 1
    return out


def make_synthetic_dataset(
    n_images: int,
    seed: int,
    cfg: SyntheticConfig | None = None,
    *,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> InstanceDataset:
    """A pool of synthetic images, normalised like real data (uint8 / 255, uint16 percentiles).

    Args:
        n_images: number of images to generate.
        seed: seed of the generator (the pool is reproducible).
        cfg: generator settings.
        percentiles: normalisation percentiles for 16-bit images.

    Returns:
        An :class:`InstanceDataset` named "synthetic" (each image its own group).
    """
    from napari_ritm.inference.preprocess import prepare_image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        image, labels = synthetic_cells(rng, cfg)
        if not (labels > 0).any():
            continue
        rgb01, norm = prepare_image(image, percentiles=percentiles)
        images.append(
            TrainImage(
                image=np.ascontiguousarray(rgb01[:, :, :1]),
                labels=labels,
                name=f"synthetic/{i}",
                group=f"synthetic/{i}",
                normalization=norm.to_dict(),
                stats=ImageStats.from_labels(labels),
            )
        )
    return InstanceDataset("synthetic", images, source=f"generated (seed {seed})")
