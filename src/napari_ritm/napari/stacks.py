"""Stacks: moving between slices and propagating an object to the next one.

Propagate commits the object (by snapshot, see :mod:`napari_ritm.napari.editing`) and, once it is
written, moves to the next slice with the object as prior mask plus a positive click at its
deepest pixel. The ID used there never takes over another object: when the next slice already
has the same ID on an unrelated object (stacks labelled slice by slice), the carried object gets
a new free ID instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ritm.napari.commit import Prior
from napari_ritm.napari.identity import next_serial
from napari_ritm.napari.layers import Plane, centre_pixel

if TYPE_CHECKING:  # pragma: no cover
    from napari_ritm.napari.editing import ObjectEditor

__all__ = ["SAME_OBJECT_OVERLAP", "StackNavigator"]

#: An object with the carried ID on the next slice is the same object when at least this share
#: of the smaller of the two masks overlaps; otherwise it is an unrelated object with that ID.
SAME_OBJECT_OVERLAP = 0.5


class StackNavigator:
    """Slice stepping and propagation for the dock.

    Args:
        editor: the object editor (commits, priors, labels layer).
        current_plane: ``() -> Plane`` of the displayed slice.
        keep_quiet: context manager factory that suppresses re-prediction while moving.
    """

    def __init__(
        self,
        editor: ObjectEditor,
        current_plane: Callable[[], Plane],
        keep_quiet: Callable[[], Any],
    ) -> None:
        self.editor = editor
        self.controls = editor.controls
        self.viewer = editor.viewer
        self._current_plane = current_plane
        self._keep_quiet = keep_quiet

    def stack_axis(self, plane: Plane) -> int | None:
        """The spatial axis that slices move along (the last one the user moved), or None."""
        others = plane.other_axes
        if not others:
            return None
        image = self.controls.image.value
        last = self.viewer.dims.last_used - (self.viewer.dims.ndim - image.ndim)
        axis = self.controls.channel_axis
        if axis is not None and last > axis:
            last -= 1
        return last if last in others else others[-1]

    def step(self, step: int) -> None:
        """Move the viewer ``step`` slices along the stack axis."""
        plane = self._current_plane()
        axis = self.stack_axis(plane)
        if axis is None:
            return
        target = plane.index[axis] + step
        if 0 <= target < plane.shape[axis]:
            self.move_to(axis, target)

    def move_to(self, axis: int, index: int) -> None:
        """Show slice ``index`` of spatial ``axis``."""
        image = self.controls.image.value
        channel_axis = self.controls.channel_axis
        data_axis = axis + (1 if channel_axis is not None and axis >= channel_axis else 0)
        offset = self.viewer.dims.ndim - image.ndim
        scale = float(image.scale[data_axis])
        translate = float(image.translate[data_axis])
        self.viewer.dims.set_point(data_axis + offset, translate + scale * index)

    def propagate(self) -> bool:
        """Commit the object and carry it to the next slice.

        Returns:
            True when the object was carried, or will be once its commit is written.
        """
        editor = self.editor
        plane = self._current_plane()
        axis = self.stack_axis(plane)
        if axis is None:
            self.controls.warn("the image has no stack axis (Z or T) to propagate along")
            return False
        if plane.index[axis] + 1 >= plane.shape[axis]:
            self.controls.warn("this is the last slice; nothing to propagate to")
            return False
        if editor.clicks.points_on(plane) or plane.key in editor.priors:
            written = editor.finish(then=lambda label_id: self._carry(label_id, plane, axis))
            return written is not None or editor.pending > 0
        last = editor.last_commit
        if last is not None and last[1] == plane and last[2] is self.controls.labels.value:
            return self._carry(last[0], plane, axis)
        if editor.pending:
            self.controls.warn("the object is still being written; propagate when it is done")
        else:
            self.controls.warn("nothing to propagate: segment an object on this slice first")
        return False

    def _carry(self, label_id: int, plane: Plane, axis: int) -> bool:
        editor = self.editor
        try:
            if self._current_plane() != plane:
                self.controls.set_status(f"label {label_id} written; the slice changed, not moved")
                return False
        except Exception:  # no usable plane any more (image removed...): nothing to carry
            return False
        labels = editor.target_labels(create=False)
        if labels is None:
            return False
        mask = np.asarray(labels.data[plane.data_index()]) == label_id
        centre = centre_pixel(mask)
        if centre is None:
            self.controls.warn(f"label {label_id} is empty on this slice; nothing to propagate")
            return False
        nxt = plane.with_index(axis, plane.index[axis] + 1)
        existing = np.asarray(labels.data[nxt.data_index()]) == label_id
        carried_id, replace, fresh = label_id, None, False
        if existing.any():
            overlap = np.count_nonzero(existing & mask) / max(
                1, min(np.count_nonzero(existing), np.count_nonzero(mask))
            )
            if overlap >= SAME_OBJECT_OVERLAP:
                replace = label_id  # the same object continues: refine it there
            else:  # another object already has this ID on that slice: never touch it
                carried_id, fresh = editor.next_free_id(labels), True
                editor.ids.reserve(carried_id)
        with self._keep_quiet():
            self.move_to(axis, nxt.index[axis])
        editor.set_prior(nxt, Prior(carried_id, mask, replace, fresh, next_serial()))
        point = np.array(nxt.index, dtype=float)
        point[nxt.row_axis], point[nxt.col_axis] = centre
        editor.clicks.add_point(point, positive=True)  # predicts with the prior
        self.controls.set_status(f"label {carried_id} carried to slice {nxt.index[axis]}")
        return True
