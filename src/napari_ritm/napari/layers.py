"""napari Points/Labels <-> clicks/masks: which plane is shown, which points are its clicks.

The widget keeps its state in napari layers: two Points layers hold the clicks ("the Points
layers are the truth"), a preview Labels layer shows the current object and the user's Labels
layer gets the committed objects. The functions here translate between those layers and the arrays a
:class:`~napari_ritm.inference.session.ClickSession` understands. They use napari layer objects but
no Qt.

Coordinates: every "spatial" array below is in the image layer's *data* pixels with the RGB axis
and an optional channel axis removed. The 2D plane the user sees is given by two of those axes
(``row_axis < col_axis``); the others sit at fixed integer indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ritm.errors import ImageFormatError
from napari_ritm.inference.clicks import Click

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "NEGATIVE_COLOR",
    "NEGATIVE_NAME",
    "ORDER",
    "POSITIVE_COLOR",
    "POSITIVE_NAME",
    "PREVIEW_NAME",
    "Plane",
    "assign_click_order",
    "centre_pixel",
    "clicks_on_plane",
    "commit_indices",
    "current_plane",
    "image_plane",
    "is_ritm_layer",
    "spatial_shape",
    "world_to_spatial",
]

POSITIVE_NAME = "RITM positive"
NEGATIVE_NAME = "RITM negative"
PREVIEW_NAME = "RITM preview"
POSITIVE_COLOR = "#00ff00"
NEGATIVE_COLOR = "#ff0000"
#: Key in ``layer.metadata`` that marks the layers the RITM widget made for itself.
RITM_ROLE = "napari-ritm role"
#: Points feature holding the global order in which clicks were made (RITM is order sensitive:
#: every click is predicted with the previous click's probabilities as prior).
ORDER = "order"


@dataclass(frozen=True)
class Plane:
    """The 2D plane of a (possibly nD) image that the viewer currently shows.

    Attributes:
        shape: spatial shape of the image (no RGB axis, no channel axis).
        row_axis: spatial axis shown as rows (always ``< col_axis``).
        col_axis: spatial axis shown as columns.
        index: one integer per spatial axis; the entries of ``row_axis``/``col_axis`` are 0 and
            mean nothing.
    """

    shape: tuple[int, ...]
    row_axis: int
    col_axis: int
    index: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def hw(self) -> tuple[int, int]:
        """(h, w) of the plane."""
        return self.shape[self.row_axis], self.shape[self.col_axis]

    @property
    def other_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(self.ndim) if a not in (self.row_axis, self.col_axis))

    @property
    def key(self) -> tuple[int, ...]:
        """Indices along the non-plane axes: identifies the slice (``()`` for a 2D image)."""
        return tuple(self.index[a] for a in self.other_axes)

    def data_index(self) -> tuple[int | slice, ...]:
        """Index into a spatial array that yields the plane as an (h, w) view."""
        return tuple(
            slice(None) if a in (self.row_axis, self.col_axis) else self.index[a]
            for a in range(self.ndim)
        )

    def nd_indices(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """Expand (row, col) pixel indices of the plane into nD indices of the spatial array."""
        out = []
        for a in range(self.ndim):
            if a == self.row_axis:
                out.append(np.asarray(rows, dtype=np.intp))
            elif a == self.col_axis:
                out.append(np.asarray(cols, dtype=np.intp))
            else:
                out.append(np.full(len(rows), self.index[a], dtype=np.intp))
        return tuple(out)

    def with_index(self, axis: int, value: int) -> Plane:
        """The same plane moved to ``value`` along the non-plane spatial ``axis``."""
        index = list(self.index)
        index[axis] = int(value)
        return Plane(self.shape, self.row_axis, self.col_axis, tuple(index))

    def on_plane(self, coords: np.ndarray) -> np.ndarray:
        """Which of ``coords`` (N, ndim) spatial data coordinates lie on this plane -> bool (N,)."""
        coords = np.asarray(coords, dtype=float).reshape(-1, self.ndim)
        keep = np.ones(len(coords), dtype=bool)
        for a in self.other_axes:
            keep &= np.round(coords[:, a]).astype(np.int64) == self.index[a]
        return keep


def is_ritm_layer(layer: Any) -> bool:
    """Whether ``layer`` is one the RITM widget made for itself (clicks, preview).

    Such layers are never offered as images to segment or labels to write or train on.
    """
    metadata = getattr(layer, "metadata", None) or {}
    return RITM_ROLE in metadata or getattr(layer, "name", None) in (
        POSITIVE_NAME,
        NEGATIVE_NAME,
        PREVIEW_NAME,
    )


def spatial_shape(layer: Any, channel_axis: int | None = None) -> tuple[int, ...]:
    """Spatial shape of an Image layer: its data shape without RGB axis and channel axis."""
    shape = tuple(int(s) for s in layer.data.shape)
    if getattr(layer, "rgb", False):
        shape = shape[:-1]
    if channel_axis is not None:
        shape = shape[:channel_axis] + shape[channel_axis + 1 :]
    return shape


def world_to_spatial(
    layer: Any, world: Sequence[float], channel_axis: int | None = None
) -> np.ndarray:
    """Map a viewer world position to spatial data coordinates of an Image layer.

    Args:
        layer: napari Image layer.
        world: world coordinates, one per viewer dimension (the layer may have fewer dims; it is
            aligned to the trailing ones, as napari does).
        channel_axis: data axis of the channels, dropped from the result; ``None`` for none.

    Returns:
        float64 array, one coordinate per spatial axis (sub-pixel, not rounded).
    """
    world = np.asarray(world, dtype=float)
    ndim = layer.ndim  # excludes the RGB axis
    data = np.asarray(layer.world_to_data(world[-ndim:]), dtype=float)
    if channel_axis is not None:
        data = np.delete(data, channel_axis)
    return data


def current_plane(viewer: napari.Viewer, layer: Any, channel_axis: int | None = None) -> Plane:
    """The plane of ``layer`` that ``viewer`` shows now (``dims.point``, ``dims.displayed``).

    Raises:
        ImageFormatError: the viewer is in 3D display, or a displayed axis is the channel axis or
            is not an axis of the layer.
    """
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise ImageFormatError(
            "click segmentation works on 2D slices; switch the viewer to 2D display "
            "(the 2D/3D button at the bottom left, or Ctrl+Y)"
        )
    ndim = layer.ndim
    offset = dims.ndim - ndim
    displayed = [a - offset for a in dims.displayed]
    if any(a < 0 for a in displayed):
        raise ImageFormatError(
            f"layer {layer.name!r} has fewer dimensions than the displayed axes; "
            "choose another image layer"
        )
    if channel_axis is not None and channel_axis in displayed:
        raise ImageFormatError(
            "the channel axis is one of the displayed axes; display two spatial axes "
            "or untick 'first axis is channels'"
        )
    spatial = world_to_spatial(layer, dims.point, channel_axis)
    if channel_axis is not None:
        displayed = [a - 1 if a > channel_axis else a for a in displayed]
    row_axis, col_axis = sorted(displayed)
    shape = spatial_shape(layer, channel_axis)
    index = []
    for a, (s, c) in enumerate(zip(shape, spatial, strict=True)):
        index.append(0 if a in (row_axis, col_axis) else int(np.clip(np.round(c), 0, s - 1)))
    return Plane(shape, row_axis, col_axis, tuple(index))


def image_plane(layer: Any, plane: Plane, channel_axis: int | None = None) -> np.ndarray:
    """The displayed plane of an Image layer as an array view (no copy for NumPy data).

    Returns:
        (h, w) for gray, (h, w, 3|4) for RGB layers, (h, w, C) when ``channel_axis`` is set (the
        channel axis moved last). dtype as stored in the layer.
    """
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    index = list(plane.data_index())
    if channel_axis is not None:
        index.insert(channel_axis, slice(None))
    if getattr(layer, "rgb", False):
        index.append(slice(None))
    view = data[tuple(index)]
    if channel_axis is not None:
        # remaining axes are (rows, cols) plus channels in data order; channels go last
        ch_pos = sum(1 for a in (plane.row_axis, plane.col_axis) if a < channel_axis)
        view = np.moveaxis(np.asarray(view), ch_pos, -1)
    return view


def assign_click_order(layer: Any, counter: int, rows: Sequence[int] | None = None) -> int:
    """Give new points of ``layer`` the next order numbers.

    A point is new when it is in ``rows`` (e.g. the ``data_indices`` of napari's "added" event;
    negative indices count from the end), has no valid order (< 0 or NaN), or repeats the order
    of an earlier point of the layer (napari fills new points' features from
    ``feature_defaults``, which follows the last selected point).

    Args:
        layer: napari Points layer with an ``ORDER`` feature (created by the widget).
        counter: next order number to hand out.
        rows: indices of points known to be new.

    Returns:
        the next unused order number.
    """
    n = len(layer.data)
    if n == 0:
        return counter
    features = layer.features
    if ORDER not in features.columns or len(features) != n:
        order = np.full(n, -1, dtype=np.int64)
    else:
        order = np.nan_to_num(np.asarray(features[ORDER], dtype=float), nan=-1).astype(np.int64)
    new = order < 0
    if rows is not None:
        idx = np.asarray(list(rows), dtype=np.int64)
        idx = idx[(idx >= -n) & (idx < n)]
        new[idx] = True
    _, first = np.unique(order, return_index=True)
    duplicate = np.ones(n, dtype=bool)
    duplicate[first] = False
    new |= duplicate
    missing = np.flatnonzero(new)
    if missing.size == 0:
        return counter
    order[missing] = np.arange(counter, counter + missing.size)
    features = features.copy() if len(features) == n else features.iloc[:0].reindex(range(n))
    features[ORDER] = order
    layer.features = features
    layer.feature_defaults = {ORDER: -1}
    return counter + int(missing.size)


def clicks_on_plane(positive: Any, negative: Any, plane: Plane) -> list[Click]:
    """The clicks on ``plane`` from the positive and negative Points layers, in click order.

    Points layers share the spatial data coordinates of the image (the widget creates them with
    the image's scale and translate), so their data coordinates are image pixels.

    Returns:
        Clicks with sub-pixel (row, col) in plane pixels, sorted by the ``ORDER`` feature
        (ties: positive first, then by position in the layer).
    """
    items: list[tuple[float, int, int, Click]] = []
    for flag, layer in ((True, positive), (False, negative)):
        if layer is None or len(layer.data) == 0:
            continue
        coords = np.asarray(layer.data, dtype=float)
        if coords.shape[1] != plane.ndim:
            raise ImageFormatError(
                f"Points layer {layer.name!r} has {coords.shape[1]} dimensions but the image has "
                f"{plane.ndim}; delete it and click again"
            )
        if ORDER in layer.features.columns:
            order = np.nan_to_num(np.asarray(layer.features[ORDER], dtype=float), nan=1e12)
        else:
            order = np.arange(len(coords), dtype=float)
        keep = plane.on_plane(coords)
        for i in np.flatnonzero(keep):
            row, col = coords[i, plane.row_axis], coords[i, plane.col_axis]
            h, w = plane.hw
            if not (-0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5):
                continue  # outside the image: ignore rather than fail on a stray point
            click = Click(float(row), float(col), flag)
            items.append((float(order[i]), 0 if flag else 1, int(i), click))
    items.sort(key=lambda t: t[:3])
    return [t[3] for t in items]


def commit_indices(
    labels_plane: np.ndarray,
    mask: np.ndarray,
    label_id: int,
    *,
    overwrite: bool = False,
    replace: int | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Pixels to set to ``label_id`` and pixels to clear when committing ``mask``.

    Args:
        labels_plane: (h, w) int labels of the plane as they are now.
        mask: (h, w) bool object mask.
        label_id: id to write (> 0).
        overwrite: if True, the mask replaces other objects; else only background (0) and pixels
            already ``label_id`` are written.
        replace: id of the object being refined (usually ``label_id``): its pixels outside
            ``mask`` are cleared to 0. ``None`` clears nothing.

    Returns:
        ``((rows, cols) to set to label_id, (rows, cols) to set to 0)``, int arrays.
    """
    if labels_plane.shape != mask.shape:
        raise ImageFormatError(
            f"mask shape {mask.shape} does not match the labels plane {labels_plane.shape}"
        )
    allowed = mask & (labels_plane != label_id)
    if not overwrite:
        free = labels_plane == 0
        if replace is not None:
            free |= labels_plane == replace
        allowed &= free
    set_rc = np.nonzero(allowed)
    if replace is not None:
        clear_rc = np.nonzero((labels_plane == replace) & ~mask)
    else:
        empty = np.zeros(0, dtype=np.intp)
        clear_rc = (empty, empty)
    return set_rc, clear_rc


def centre_pixel(mask: np.ndarray) -> tuple[int, int] | None:
    """The pixel of ``mask`` farthest from its border (maximum of the distance transform).

    Among equally deep pixels the one nearest the mask's centroid is chosen.

    Args:
        mask: (h, w) bool.

    Returns:
        (row, col) ints, or None for an empty mask.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    # pad so objects touching the image border still get their centre inside
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    # ties (a ridge of equally deep pixels): take the one nearest the object's centroid
    rows, cols = np.nonzero(dist >= dist.max() - 1e-6)
    mrows, mcols = np.nonzero(mask)
    d2 = (rows - mrows.mean()) ** 2 + (cols - mcols.mean()) ** 2
    k = int(np.argmin(d2))
    return int(rows[k]), int(cols[k])
