"""Preview rendering: the "RITM preview" Labels layer, redrawn only where the object changed.

A result arrives as a box and the probabilities inside it (``ClickSession.probs_roi``). The
preview writes only the union of that box and the previously drawn one, through
``Labels.data_setitem`` (napari then refreshes just that part of the texture), so a click on an
8192 x 8192 plane costs about what it costs on a small one. The layer is one plane big (size-1
axes at the plane's indices) and sits directly above the labels layer being edited, so pixels a
refinement removes are visible before the commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels

from napari_ritm.napari.click_input import add_keeping_selection, spatial_transform
from napari_ritm.napari.layers import PREVIEW_NAME, RITM_ROLE, Plane

if TYPE_CHECKING:  # pragma: no cover
    from napari_ritm.napari.controls import ControlPanel

__all__ = ["PreviewRenderer", "Roi"]

Roi = tuple[int, int, int, int]  # (rmin, rmax, cmin, cmax), inclusive


class PreviewRenderer:
    """Draws the object in progress into a one-plane Labels layer.

    Args:
        controls: the dock's controls (image layer, channel axis, labels layer).
    """

    def __init__(self, controls: ControlPanel) -> None:
        self.controls = controls
        self.viewer = controls.viewer
        self.layer: Labels | None = None
        self._plane: Plane | None = None  # plane the layer's contents belong to
        self._box: Roi | None = None  # box holding every nonzero preview pixel

    def forget_deleted(self) -> None:
        """Drop the reference when the user deleted the preview layer."""
        if self.layer is not None and self.layer not in self.viewer.layers:
            self.layer, self._plane, self._box = None, None, None

    def draw(self, plane: Plane, roi: Roi, crop: np.ndarray, threshold: float) -> int:
        """Show ``crop > threshold`` at ``roi`` of ``plane``; returns the pixels written."""
        layer = self._layer_for(plane)
        mask = np.asarray(crop) > threshold
        if not mask.any():
            roi, mask = None, None
        return self._write(layer, roi, mask)

    def show_mask(self, plane: Plane, mask: np.ndarray) -> None:
        """Show a full-plane bool ``mask`` (e.g. the object about to be refined)."""
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            self.clear()
            return
        roi = (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max()))
        r0, r1, c0, c1 = roi
        self._write(self._layer_for(plane), roi, np.asarray(mask)[r0 : r1 + 1, c0 : c1 + 1])

    def clear(self) -> None:
        """Erase what is drawn (only the drawn box is touched)."""
        if self.layer is not None and self._box is not None:
            self._write(self.layer, None, None)

    def keep_above(self, labels: Labels | None) -> None:
        """Move the preview directly above ``labels`` when it is below it."""
        if self.layer is None or labels is None or labels not in self.viewer.layers:
            return
        layers = self.viewer.layers
        here, there = layers.index(self.layer), layers.index(labels)
        if here < there:
            layers.move(here, there)  # napari's move puts it at `there`, above labels

    # -- internals -------------------------------------------------------------------------------

    def _layer_for(self, plane: Plane) -> Labels:
        image = self.controls.image.value
        scale, translate = spatial_transform(image, self.controls.channel_axis)
        shape = tuple(
            n if a in (plane.row_axis, plane.col_axis) else 1 for a, n in enumerate(plane.shape)
        )
        offset = translate + scale * np.array(
            [0 if a in (plane.row_axis, plane.col_axis) else i for a, i in enumerate(plane.index)],
            dtype=float,
        )
        layer = self.layer
        if layer is None or layer.data.shape != shape:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            layer = Labels(
                np.zeros(shape, dtype=np.uint8),
                name=PREVIEW_NAME,
                opacity=0.5,
                scale=scale,
                translate=offset,
                metadata={RITM_ROLE: "preview"},
            )
            layer.colormap = _preview_colormap()
            self.layer, self._box = layer, None
            add_keeping_selection(self.viewer, layer)
            self.keep_above(self.controls.labels.value)
        elif self._plane != plane:
            self._write(layer, None, None)  # the old slice's object must not show here
            layer.scale = scale
            layer.translate = offset
        self._plane = plane
        return layer

    def _local_plane(self, layer: Labels) -> Plane:
        """The layer's own plane: the displayed axes, index 0 on its size-1 axes."""
        plane = self._plane
        assert plane is not None  # set by _layer_for before anything is written
        shape = tuple(int(n) for n in layer.data.shape)
        return Plane(shape, plane.row_axis, plane.col_axis, (0,) * len(shape))

    def _write(self, layer: Labels, roi: Roi | None, mask: np.ndarray | None) -> int:
        """Make the layer show ``mask`` at ``roi`` (None: nothing), touching only changed pixels."""
        boxes = [b for b in (self._box, roi) if b is not None]
        if not boxes:
            return 0
        r0 = min(b[0] for b in boxes)
        r1 = max(b[1] for b in boxes)
        c0 = min(b[2] for b in boxes)
        c1 = max(b[3] for b in boxes)
        local = self._local_plane(layer)
        current = np.asarray(layer.data)[local.data_index()][r0 : r1 + 1, c0 : c1 + 1]
        wanted = np.zeros_like(current)
        if roi is not None and mask is not None:
            wanted[roi[0] - r0 : roi[1] - r0 + 1, roi[2] - c0 : roi[3] - c0 + 1] = mask
        rows, cols = np.nonzero(current != wanted)
        if len(rows):
            values = wanted[rows, cols]
            layer.data_setitem(local.nd_indices(rows + r0, cols + c0), values)
            _drop_history(layer)
        self._box = roi
        layer.visible = True
        return len(rows)


def _drop_history(layer: Labels) -> None:
    # The preview is redrawn on every click; its undo history would only grow (indices + values
    # per click) and nobody undoes a preview.
    reset = getattr(layer, "_reset_history", None)
    if callable(reset):
        reset()


def _preview_colormap() -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "#ffd400"})
