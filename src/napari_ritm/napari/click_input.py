"""Click input: the positive/negative Points layers and the mouse.

The two Points layers are the truth about the object in progress: adding, moving or deleting a
point (with the mouse in click mode, or napari's own Points tools) calls ``on_change``, and the
widget re-predicts from the points on the displayed plane. Each point carries its click order
(RITM is order sensitive). Mouse: left = positive, right or Ctrl/Cmd+left = negative,
Shift+left = ``on_refine_at``; a press that moves more than a few screen pixels is a pan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Points

from napari_ritm.errors import ImageFormatError
from napari_ritm.inference.clicks import Click
from napari_ritm.napari.keys import focus_canvas
from napari_ritm.napari.layers import (
    NEGATIVE_COLOR,
    NEGATIVE_NAME,
    ORDER,
    POSITIVE_COLOR,
    POSITIVE_NAME,
    RITM_ROLE,
    Plane,
    assign_click_order,
    clicks_on_plane,
    spatial_shape,
    world_to_spatial,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_ritm.napari.controls import ControlPanel

__all__ = ["CLICK_TOLERANCE_PX", "ClickInput"]

#: A press that moves more than this many screen pixels before release is a pan, not a click.
CLICK_TOLERANCE_PX = 3.0


class ClickInput:
    """The clicks of the object in progress, held in two Points layers.

    Args:
        controls: the dock's controls (image layer, channel axis, click mode).
        current_plane: ``() -> Plane`` of the displayed slice (raises ImageFormatError).
        on_change: called after the clicks changed (the widget re-predicts).
        on_refine_at: ``(plane, row, col)`` for a Shift+click on an object.
    """

    def __init__(
        self,
        controls: ControlPanel,
        current_plane: Callable[[], Plane],
        on_change: Callable[[], Any],
        on_refine_at: Callable[[Plane, int, int], Any],
    ) -> None:
        self.controls = controls
        self.viewer = controls.viewer
        self._current_plane = current_plane
        self._on_change = on_change
        self._on_refine_at = on_refine_at
        self.positive: Points | None = None
        self.negative: Points | None = None
        self._order = 0
        self._redo: list[tuple[np.ndarray, bool]] = []
        self._quiet = False  # set while the widget itself edits the points

    # -- layers ----------------------------------------------------------------------------------

    def layers(self) -> list[Points]:
        """The Points layers that exist."""
        return [layer for layer in (self.positive, self.negative) if layer is not None]

    def forget_deleted(self) -> None:
        """Drop references to Points layers the user deleted."""
        if self.positive is not None and self.positive not in self.viewer.layers:
            self.positive = None
        if self.negative is not None and self.negative not in self.viewer.layers:
            self.negative = None

    def drop_if_wrong_ndim(self, ndim: int) -> None:
        """Remove the Points layers when the image changed to another number of dimensions."""
        for layer in self.layers():
            if layer.ndim != ndim:
                self._quiet = True
                try:
                    self.viewer.layers.remove(layer)
                finally:
                    self._quiet = False
        self.forget_deleted()

    def _layer(self, positive: bool) -> Points:
        layer = self.positive if positive else self.negative
        if layer is not None:
            return layer
        image = self.controls.image.value
        if image is None:
            raise ImageFormatError("no image layer chosen; open an image and pick it in 'image'")
        axis = self.controls.channel_axis
        shape = spatial_shape(image, axis)
        scale, translate = spatial_transform(image, axis)
        layer = Points(
            np.empty((0, len(shape))),
            ndim=len(shape),
            name=POSITIVE_NAME if positive else NEGATIVE_NAME,
            face_color=POSITIVE_COLOR if positive else NEGATIVE_COLOR,
            border_color="white",
            border_width=0.15,
            # in data pixels: ~2% of the plane's longer side keeps points visible at any size
            size=max(5.0, 0.02 * max(shape[-2:])),
            scale=scale,
            translate=translate,
            features={ORDER: np.zeros(0, dtype=np.int64)},
            feature_defaults={ORDER: -1},
            out_of_slice_display=False,
            metadata={RITM_ROLE: "positive" if positive else "negative"},
        )
        layer.events.data.connect(self._on_points_changed)
        if positive:
            self.positive = layer
        else:
            self.negative = layer
        add_keeping_selection(self.viewer, layer)
        return layer

    # -- clicks ----------------------------------------------------------------------------------

    def clicks_on(self, plane: Plane) -> list[Click]:
        """Clicks on ``plane``, in click order."""
        return clicks_on_plane(self.positive, self.negative, plane)

    def points_on(self, plane: Plane) -> list[tuple[Points, int, float]]:
        """(layer, row index, order) of the points on ``plane``."""
        out = []
        for layer in self.layers():
            if len(layer.data) == 0:
                continue
            keep = plane.on_plane(np.asarray(layer.data))
            order = np.asarray(layer.features[ORDER], dtype=float)
            out += [(layer, int(i), float(order[i])) for i in np.flatnonzero(keep)]
        return out

    def has_any(self) -> bool:
        """Whether any click exists on any plane."""
        return any(len(layer.data) for layer in self.layers())

    def add_point(self, coords: Any, positive: bool = True) -> None:
        """Append a click given in spatial data coordinates (one per spatial axis)."""
        layer = self._layer(positive)
        self._redo.clear()
        layer.add(np.asarray(coords, dtype=float).reshape(1, -1))

    def remove(self, items: list[tuple[Points, int, float]], notify: bool) -> None:
        """Delete points; ``notify`` False: without re-predicting."""
        by_layer: dict[int, tuple[Points, list[int]]] = {}
        for layer, i, _ in items:
            by_layer.setdefault(id(layer), (layer, []))[1].append(i)
        self._quiet = not notify
        try:
            for layer, rows in by_layer.values():
                keep = np.setdiff1d(np.arange(len(layer.data)), rows)
                features = layer.features.iloc[keep].reset_index(drop=True)
                layer.data = np.asarray(layer.data)[keep]
                layer.features = features
        finally:
            self._quiet = False

    def clear_plane(self, plane: Plane) -> None:
        """Remove the clicks of ``plane`` (the object there is finished or reset)."""
        self.remove(self.points_on(plane), notify=False)
        self._redo.clear()

    def undo(self, plane: Plane) -> bool:
        """Remove the newest click of ``plane`` (it can be redone); False when there is none."""
        items = self.points_on(plane)
        if not items:
            return False
        newest = max(items, key=lambda t: t[2])
        layer, i, _ = newest
        self._redo.append((np.asarray(layer.data[i], dtype=float).copy(), layer is self.positive))
        self.remove([newest], notify=True)
        return True

    def redo(self) -> bool:
        """Put back the last undone click; False when there is none."""
        if not self._redo:
            return False
        coords, positive = self._redo.pop()
        redo = list(self._redo)
        self.add_point(coords, positive)
        self._redo = redo
        return True

    def _on_points_changed(self, event: Any) -> None:
        action = str(getattr(event, "action", "changed")).split(".")[-1].lower()
        if action in ("adding", "changing", "removing"):
            return
        layer = event.source
        rows = getattr(event, "data_indices", None) if action == "added" else None
        self._order = assign_click_order(layer, self._order, rows)
        if self._quiet:
            return
        if action == "added":
            self._redo.clear()
        self._on_change()

    # -- mouse -----------------------------------------------------------------------------------

    def on_mouse_drag(self, viewer: Any, event: Any):
        """Viewer drag callback: turns short presses into clicks (generator, napari protocol)."""
        if not self.controls.click_mode.value or event.type != "mouse_press":
            return
        active = viewer.layers.selection.active
        if active is not None and getattr(active, "mode", "pan_zoom") != "pan_zoom":
            return  # the user is painting, adding points, selecting...: not ours
        if self.controls.image.value is None:
            return
        press = np.asarray(event.pos, dtype=float)
        position = tuple(event.position)
        button = event.button
        modifiers = {str(getattr(m, "name", m)) for m in (event.modifiers or ())}
        moved = 0.0
        yield
        while event.type == "mouse_move":
            moved = max(moved, float(np.hypot(*(np.asarray(event.pos, dtype=float) - press))))
            yield
        if event.type == "mouse_release":
            moved = max(moved, float(np.hypot(*(np.asarray(event.pos, dtype=float) - press))))
        if moved > CLICK_TOLERANCE_PX:
            return  # a pan or zoom drag
        self.handle_click(position, button=button, modifiers=modifiers)
        focus_canvas(viewer)  # a click on the image gives the keyboard to the viewer again

    def handle_click(self, position: Any, button: int = 1, modifiers: Any = ()) -> None:
        """Act on a click at a world ``position`` (one coordinate per viewer dimension).

        Args:
            position: world coordinates.
            button: 1 left, 2 right.
            modifiers: names of held modifier keys ("Shift", "Control", "Meta", "Alt").
        """
        modifiers = set(modifiers)
        if button not in (1, 2):
            return
        image = self.controls.image.value
        plane = self._current_plane()
        coords = world_to_spatial(image, position, self.controls.channel_axis)
        row, col = coords[plane.row_axis], coords[plane.col_axis]
        h, w = plane.hw
        if not (-0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5):
            return  # outside the image
        if button == 1 and "Shift" in modifiers:
            self._on_refine_at(plane, int(np.floor(row + 0.5)), int(np.floor(col + 0.5)))
            return
        positive = button == 1 and not ({"Control", "Meta"} & modifiers)
        point = np.array(plane.index, dtype=float)
        point[plane.row_axis], point[plane.col_axis] = row, col
        self.add_point(point, positive)


def spatial_transform(image: Any, channel_axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(scale, translate) of an image layer's spatial axes (the channel axis removed)."""
    scale = np.asarray(image.scale, dtype=float)
    translate = np.asarray(image.translate, dtype=float)
    if channel_axis is not None:
        scale = np.delete(scale, channel_axis)
        translate = np.delete(translate, channel_axis)
    return scale, translate


def add_keeping_selection(viewer: Any, layer: Any) -> None:
    """Add ``layer`` to the viewer without changing which layer the user has selected."""
    active = viewer.layers.selection.active
    viewer.layers.append(layer)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
