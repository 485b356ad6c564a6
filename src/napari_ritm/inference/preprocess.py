"""Any image (2D gray, RGB, multichannel; uint8/uint16/float) -> float32 RGB in [0, 1].

The RITM network expects 8-bit-like RGB scaled to [0, 1] (ritm-reference §2.1, §8.7). uint8 RGB is
divided by 255 exactly like the reference. Everything else is mapped through a recorded
:class:`Normalization` (a linear stretch between ``low`` and ``high``, clipped to [0, 1]), so the
same numbers can be applied again to another crop, slice or session.

Channel handling for an (H, W, C) image:

* ``channel`` given: that channel is used as a gray image.
* C == 1: the single channel is used as a gray image.
* C == 3 (RGB) or C == 4 (RGBA, alpha dropped), unless ``rgb=False``: used as RGB.
* any other C (2, or more than 4), or C in (3, 4) with ``rgb=False``: the **mean of the channels**
  is used as a gray image (pass ``channel`` to pick one instead).

Gray images are replicated to three identical channels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_ritm.errors import ImageFormatError

__all__ = [
    "DEFAULT_PERCENTILES",
    "Normalization",
    "apply_normalization",
    "check_image",
    "compute_normalization",
    "normalize_crop",
    "normalize_planes",
    "percentile_limits",
    "percentiles_from_metadata",
    "prepare_image",
    "resolve_normalization",
]

logger = logging.getLogger(__name__)

_METHODS = ("u8", "contrast_limits", "percentile")
_LAYOUTS = ("gray", "rgb", "channel", "mean")
# Above this many values the percentiles are estimated on a regular subsample; the numbers are
# recorded in the Normalization, so results stay reproducible.
_PERCENTILE_MAX_VALUES = 1 << 22
#: Percentiles of uint16/float images when neither the caller nor the model says otherwise.
DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.8)
# A last axis longer than this is not taken for channels (most likely a channel-first stack).
_MAX_CHANNELS = 16


@dataclass(frozen=True)
class Normalization:
    """How an image was mapped to float32 RGB in [0, 1]; enough to do it again.

    Output = clip((value - low) / (high - low), 0, 1), on the selected channel(s), as float32.
    For ``method == "u8"`` the output is exactly ``value / 255`` (low 0, high 255, no clipping
    needed), as in the reference. When ``high == low`` (a constant image) the output is 0.

    Attributes:
        low: Input value mapped to 0.
        high: Input value mapped to 1.
        method: "u8" (uint8 / 255), "contrast_limits" (given limits) or "percentile"
            (limits from the image's percentiles).
        channel: Index of the channel used for an (H, W, C) image with layout "channel".
        layout: "gray" (2D image), "rgb" (first 3 channels of (H, W, 3|4)), "channel" (one
            channel of (H, W, C)) or "mean" (mean over the channels of (H, W, C)).
        percentiles: The (low, high) percentiles used when method is "percentile", else None.
    """

    low: float
    high: float
    method: str
    channel: int | None = None
    layout: str = "gray"
    percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ImageFormatError(f"unknown normalization method {self.method!r}; use {_METHODS}")
        if self.layout not in _LAYOUTS:
            raise ImageFormatError(f"unknown channel layout {self.layout!r}; use {_LAYOUTS}")
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high < self.low:
            raise ImageFormatError(
                f"normalization needs finite low <= high, got low={self.low}, high={self.high}"
            )
        if self.layout == "channel" and self.channel is None:
            raise ImageFormatError("layout 'channel' needs a channel index")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (round-trips through :meth:`from_dict`)."""
        out = asdict(self)
        if self.percentiles is not None:
            out["percentiles"] = [float(p) for p in self.percentiles]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Rebuild a Normalization from :meth:`to_dict` output."""
        data = dict(data)
        if data.get("percentiles") is not None:
            data["percentiles"] = tuple(float(p) for p in data["percentiles"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ImageFormatError(f"not a normalization record: {exc}") from exc


def _check_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool or np.iscomplexobj(image) or image.dtype.kind not in "uif":
        raise ImageFormatError(
            f"image dtype {image.dtype} is not supported; pass an integer or float image "
            "(convert a boolean mask with .astype(np.uint8) * 255)"
        )
    if image.ndim not in (2, 3):
        raise ImageFormatError(
            f"image must be 2D (H, W) or 2D with channels (H, W, C), got shape {image.shape}; "
            "for a stack or volume pass one 2D slice"
        )
    if image.ndim == 3 and image.shape[-1] > _MAX_CHANNELS:
        raise ImageFormatError(
            f"image shape {image.shape} has {image.shape[-1]} entries in the last (channel) axis; "
            "channels must be last, e.g. np.moveaxis(image, 0, -1) for a channel-first image, "
            "or pass a single 2D slice"
        )
    if image.ndim == 3 and image.shape[-1] == 0:
        raise ImageFormatError(f"image shape {image.shape} has no channels")
    h, w = image.shape[:2]
    if h < 2 or w < 2:
        raise ImageFormatError(
            f"image of size {h}x{w} is too small; both sides need at least 2 pixels"
        )
    return image


def _resolve_layout(
    image: np.ndarray, channel: int | None, rgb: bool | None
) -> tuple[str, int | None]:
    if image.ndim == 2:
        if channel not in (None, 0):
            raise ImageFormatError(f"channel={channel} given for a 2D image, which has no channels")
        if rgb:
            raise ImageFormatError("rgb=True given for a 2D image; pass an (H, W, 3) array")
        return "gray", None
    n = image.shape[-1]
    if channel is not None:
        if not -n <= channel < n:
            raise ImageFormatError(
                f"channel {channel} does not exist; the image has {n} channels (0..{n - 1})"
            )
        return "channel", int(channel) % n
    if n == 1:
        return "channel", 0
    if rgb is None:
        rgb = n in (3, 4)
    if rgb:
        if n not in (3, 4):
            raise ImageFormatError(
                f"rgb=True needs 3 (RGB) or 4 (RGBA) channels, the image has {n}; "
                "pass channel=... to use one channel"
            )
        return "rgb", None
    return "mean", None


def _select(image: np.ndarray, layout: str, channel: int | None) -> np.ndarray:
    """The values the normalization applies to: (H, W) for gray layouts, (H, W, 3) for rgb."""
    if layout == "gray":
        return image
    if layout == "channel":
        return image[..., channel]
    if layout == "rgb":
        return image[..., :3]
    return image.mean(axis=-1, dtype=np.float64)


def _check_finite(values: np.ndarray) -> None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ImageFormatError(
            "image contains NaN or infinite values; replace them first, e.g. np.nan_to_num(image)"
        )


def percentile_limits(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The (low, high) percentiles of ``values``, on a regular subsample of very large arrays."""
    flat = values.reshape(-1)
    if flat.size > _PERCENTILE_MAX_VALUES:
        step = int(np.ceil(flat.size / _PERCENTILE_MAX_VALUES))
        flat = flat[::step]
    low, high = np.percentile(flat, percentiles)
    return float(low), float(high)


def _make_normalization(
    image: np.ndarray,
    contrast_limits: tuple[float, float] | None,
    channel: int | None,
    rgb: bool | None,
    percentiles: tuple[float, float],
) -> Normalization:
    layout, channel = _resolve_layout(image, channel, rgb)
    values = _select(image, layout, channel)
    _check_finite(values)
    if contrast_limits is not None:
        if len(contrast_limits) != 2:
            raise ImageFormatError(f"contrast_limits must be (low, high), got {contrast_limits!r}")
        low, high = (float(v) for v in contrast_limits)
        if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
            raise ImageFormatError(
                f"contrast_limits must be finite with low < high, got ({low}, {high})"
            )
    if image.dtype == np.uint8 and (contrast_limits is None or (low, high) == (0.0, 255.0)):
        return Normalization(0.0, 255.0, "u8", channel=channel, layout=layout)
    if contrast_limits is not None:
        return Normalization(low, high, "contrast_limits", channel=channel, layout=layout)
    if layout == "rgb" and image.dtype.kind == "f":
        vmin, vmax = float(values.min()), float(values.max())
        if vmin >= 0.0 and vmax <= 1.0:
            # float RGB already in [0, 1] (napari's convention): keep it as it is
            return Normalization(0.0, 1.0, "contrast_limits", layout=layout)
    p_low, p_high = (float(p) for p in percentiles)
    if not 0.0 <= p_low < p_high <= 100.0:
        raise ImageFormatError(
            f"percentiles must satisfy 0 <= low < high <= 100, got ({p_low}, {p_high})"
        )
    low, high = percentile_limits(values, (p_low, p_high))
    return Normalization(
        low, high, "percentile", channel=channel, layout=layout, percentiles=(p_low, p_high)
    )


def normalize_planes(
    image: np.ndarray,
    normalization: Normalization,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray:
    """Apply a recorded normalization to a crop, channel-first and without replicating gray.

    The compact form the session feeds to the network: one plane for gray layouts (to be
    broadcast to R, G and B), three for RGB.

    Args:
        image: The raw (H, W) or (H, W, C) image the normalization was made for.
        normalization: From :func:`prepare_image` (or rebuilt with ``Normalization.from_dict``).
        rows: Row slice of the crop (step 1).
        cols: Column slice of the crop (step 1).

    Returns:
        (K, h, w) float32 array in [0, 1], K = 3 for layout "rgb" and 1 otherwise.

    Raises:
        ImageFormatError: if the normalization does not fit the image's channels.
    """
    image = np.asarray(image)
    n = normalization
    if n.layout == "gray" and image.ndim != 2:
        raise ImageFormatError(f"normalization is for a 2D image, got shape {image.shape}")
    if n.layout != "gray" and image.ndim != 3:
        raise ImageFormatError(f"normalization is for an (H, W, C) image, got shape {image.shape}")
    if n.layout == "channel" and not n.channel < image.shape[-1]:
        raise ImageFormatError(f"normalization uses channel {n.channel}, image shape {image.shape}")
    if n.layout == "rgb" and image.shape[-1] not in (3, 4):
        raise ImageFormatError(f"normalization is for RGB(A), got shape {image.shape}")
    crop = _select(image[rows, cols], n.layout, n.channel)
    crop = crop.transpose(2, 0, 1) if crop.ndim == 3 else crop[None]
    if n.method == "u8":
        # exactly ToTensor: float32(uint8) / 255
        out = np.array(crop, dtype=np.float32, order="C")  # always a copy: edited in place
        out /= np.float32(255.0)
    elif n.high > n.low:
        # float32 is exact for 8/16-bit values; wider types keep float64 for the subtraction
        span = float(n.high) - float(n.low)
        wide = (
            crop.dtype.itemsize > 4
            or crop.dtype in (np.int32, np.uint32)
            or not span < float(np.finfo(np.float32).max)  # value - low could overflow float32
        )
        out = np.array(crop, dtype=np.float64 if wide else np.float32, order="C")
        if math.isfinite(span):
            out -= out.dtype.type(n.low)
            out *= out.dtype.type(1.0 / span)
        else:  # limits near +-1.8e308: halving first is exact and keeps everything finite
            out *= 0.5
            out -= 0.5 * float(n.low)
            out *= 1.0 / (0.5 * float(n.high) - 0.5 * float(n.low))
        np.clip(out, 0.0, 1.0, out=out)
        out = out.astype(np.float32, copy=False)
    else:
        out = np.zeros(crop.shape, dtype=np.float32)
    return out


def normalize_crop(
    image: np.ndarray,
    normalization: Normalization,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray:
    """Apply a recorded normalization to a rectangular crop of the raw image.

    Only the crop is read and converted, so a session can normalize just the region it feeds
    to the network.

    Args:
        image: The raw (H, W) or (H, W, C) image the normalization was made for.
        normalization: From :func:`prepare_image` (or rebuilt with ``Normalization.from_dict``).
        rows: Row slice of the crop (step 1).
        cols: Column slice of the crop (step 1).

    Returns:
        (h, w, 3) float32 array in [0, 1], C-contiguous.

    Raises:
        ImageFormatError: if the normalization does not fit the image's channels.
    """
    planes = normalize_planes(image, normalization, rows, cols)
    if planes.shape[0] == 1:
        return np.repeat(planes[0][..., None], 3, axis=-1)
    return np.ascontiguousarray(planes.transpose(1, 2, 0))


def apply_normalization(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Apply a recorded normalization to a whole image; (H, W, 3) float32 in [0, 1]."""
    return normalize_crop(image, normalization)


def prepare_image(
    image: np.ndarray,
    *,
    contrast_limits: tuple[float, float] | None = None,
    channel: int | None = None,
    rgb: bool | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
    normalization: Normalization | None = None,
) -> tuple[np.ndarray, Normalization]:
    """Convert any supported image to the network's float32 RGB in [0, 1].

    * uint8: divided by 255 exactly as the reference (also for gray, which is replicated), unless
      ``contrast_limits`` other than (0, 255) are given.
    * other integer or float images: stretched linearly from ``contrast_limits`` if given, else
      from the ``percentiles`` of the selected values, then clipped to [0, 1]. A float RGB image
      already in [0, 1] is kept as it is. RGB channels share one (low, high).
    * channels: see the module docstring (``channel`` picks one; C not 3/4 -> channel mean).

    Args:
        image: (H, W) or (H, W, C) array of any integer or float dtype, channels last.
        contrast_limits: (low, high) input values mapped to 0 and 1 (napari's contrast limits).
        channel: Channel index to use from an (H, W, C) image.
        rgb: Force (True) or refuse (False) RGB(A) interpretation of a 3/4-channel image; None
            guesses RGB(A) from C in (3, 4), as napari does.
        percentiles: (low, high) percentiles, in [0, 100], used when no contrast limits are given.
        normalization: A recorded Normalization to apply instead of computing a new one; the
            other options are then ignored.

    Returns:
        ``(rgb01, normalization)``: rgb01 is an (H, W, 3) float32 array in [0, 1]; normalization
        records how it was made.

    Raises:
        ImageFormatError: empty or too small (< 2 px a side) images, ndim not 2/3, bool or
            complex dtype, NaN/inf values, bad channel index or contrast limits.
    """
    image = np.asarray(image)
    normalization = resolve_normalization(
        image,
        normalization,
        contrast_limits=contrast_limits,
        channel=channel,
        rgb=rgb,
        percentiles=percentiles,
    )
    return normalize_crop(image, normalization), normalization


def resolve_normalization(
    image: np.ndarray,
    normalization: Normalization | None = None,
    *,
    contrast_limits: tuple[float, float] | None = None,
    channel: int | None = None,
    rgb: bool | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> Normalization:
    """The normalization to use for an image: a recorded one (checked to fit) or a new one.

    Args:
        image: (H, W) or (H, W, C) integer or float array, channels last.
        normalization: A recorded Normalization to reuse; when given, the other options are
            ignored and the image is only checked against it.
        contrast_limits, channel, rgb, percentiles: As in :func:`prepare_image`, used to compute
            a new Normalization when ``normalization`` is None.

    Returns:
        ``normalization`` itself when given, else the result of :func:`compute_normalization`.

    Raises:
        ImageFormatError: as :func:`prepare_image`, or a normalization that does not fit.
    """
    if normalization is None:
        return compute_normalization(
            image,
            contrast_limits=contrast_limits,
            channel=channel,
            rgb=rgb,
            percentiles=percentiles,
        )
    check_image(image, normalization)
    return normalization


def check_image(image: np.ndarray, normalization: Normalization | None = None) -> np.ndarray:
    """Validate an image (and that a recorded normalization fits it) without converting it.

    Args:
        image: (H, W) or (H, W, C) integer or float array, channels last.
        normalization: Optional Normalization that will be applied to the image.

    Returns:
        ``np.asarray(image)`` (not copied).

    Raises:
        ImageFormatError: empty or too small images, ndim not 2/3, bool or complex dtype,
            NaN/inf values, or a normalization made for another channel layout.
    """
    image = _check_image(image)
    _check_finite(image)
    if normalization is not None:
        normalize_crop(image, normalization, slice(0, 1), slice(0, 1))
    return image


def compute_normalization(
    image: np.ndarray,
    *,
    contrast_limits: tuple[float, float] | None = None,
    channel: int | None = None,
    rgb: bool | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> Normalization:
    """Validate an image and decide its normalization without converting it.

    Same rules and arguments as :func:`prepare_image`; use :func:`normalize_crop` afterwards to
    convert only the part that is needed.

    Returns:
        The Normalization for this image.

    Raises:
        ImageFormatError: as :func:`prepare_image`.
    """
    image = _check_image(image)
    normalization = _make_normalization(image, contrast_limits, channel, rgb, percentiles)
    logger.debug("normalization for image %s %s: %s", image.shape, image.dtype, normalization)
    return normalization


def percentiles_from_metadata(metadata: Any) -> tuple[float, float]:
    """The (low, high) percentiles a model was trained with, from its checkpoint metadata.

    Fine-tuned checkpoints record ``metadata["normalization"]["percentiles"]`` (see
    ``napari_ritm_training.trainer``); applying the same numbers at inference keeps the
    network's input statistics as in training.

    Args:
        metadata: ``model.metadata`` (a dict, possibly empty) or None.

    Returns:
        The recorded percentiles, or :data:`DEFAULT_PERCENTILES` when the metadata records
        none or something unusable (logged).
    """
    norm = metadata.get("normalization") if isinstance(metadata, dict) else None
    values = norm.get("percentiles") if isinstance(norm, dict) else None
    if values is None:
        return DEFAULT_PERCENTILES
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        logger.warning("ignoring unusable percentiles %r in the model metadata", values)
        return DEFAULT_PERCENTILES
    if not 0.0 <= low < high <= 100.0:
        logger.warning("ignoring out-of-range percentiles %r in the model metadata", values)
        return DEFAULT_PERCENTILES
    return low, high
