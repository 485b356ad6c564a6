"""Object editing: finish (commit by snapshot), refine an existing label, propagate along a stack.

"Finish" freezes a :class:`Snapshot` of everything the commit needs (plane, clicks, prior, labels
layer, ID, threshold, overwrite, the data generations of image and labels) and clears the object
at once, so the next click starts a new object while the snapshot's own prediction is still
running. The snapshot's result is written when it arrives, or dropped with a message when its
target changed meanwhile (layer removed, data replaced). Commits are ROI-bounded: only the box
of the result (and of the refined object) is read and written, in one napari undo step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels

from napari_ritm.errors import ImageFormatError
from napari_ritm.napari.click_input import add_keeping_selection, spatial_transform
from napari_ritm.napari.engine import Request, Result
from napari_ritm.napari.identity import next_serial
from napari_ritm.napari.label_ids import LabelIds
from napari_ritm.napari.layers import Plane, commit_indices, spatial_shape

if TYPE_CHECKING:  # pragma: no cover
    from napari_ritm.napari.bridge import PredictionBridge
    from napari_ritm.napari.click_input import ClickInput
    from napari_ritm.napari.controls import ControlPanel
    from napari_ritm.napari.preview import PreviewRenderer

__all__ = ["ObjectEditor", "Prior", "Snapshot"]

Roi = tuple[int, int, int, int]


@dataclass(frozen=True)
class Prior:
    """An existing object being refined (or carried from the previous slice) on one plane.

    Attributes:
        label_id: the ID the object is written back with.
        mask: (h, w) bool mask of the object, the session's prior.
        replace: ID whose pixels outside the new mask are cleared (the object itself), or None.
        fresh: ``label_id`` was unused when the prior was made (a new ID on a new slice).
        serial: identity of the mask for the engine's cache (never reused).
    """

    label_id: int
    mask: np.ndarray
    replace: int | None
    fresh: bool
    serial: int

    @property
    def box(self) -> Roi | None:
        rows, cols = np.nonzero(self.mask)
        if len(rows) == 0:
            return None
        return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@dataclass(frozen=True)
class Snapshot:
    """Everything a commit needs, frozen when the user pressed Finish."""

    request: Request
    plane: Plane
    image: Any
    image_key: Any
    labels: Labels
    labels_key: Any
    label_id: int
    replace: int | None
    fresh: bool
    threshold: float
    overwrite: bool
    prior_box: Roi | None
    then: Callable[[int], Any] | None = None  # run after a successful commit (propagate)


class ObjectEditor:
    """Finish, refine and commit objects of the dock's labels layer."""

    def __init__(
        self,
        controls: ControlPanel,
        clicks: ClickInput,
        bridge: PredictionBridge,
        preview: PreviewRenderer,
        current_plane: Callable[[], Plane],
    ) -> None:
        self.controls = controls
        self.viewer = controls.viewer
        self.clicks = clicks
        self.bridge = bridge
        self.preview = preview
        self._current_plane = current_plane
        self.ids = LabelIds()
        self.priors: dict[tuple, Prior] = {}
        self.last_commit: tuple[int, Plane, Labels] | None = None
        self.pending = 0  # snapshots waiting for their prediction
        self._auto_id: int | None = None

    # -- labels layer and IDs --------------------------------------------------------------------

    def target_labels(self, create: bool) -> Labels | None:
        """The Labels layer to write; created with the image's spatial shape when asked."""
        image = self.controls.image.value
        axis = self.controls.channel_axis
        shape = spatial_shape(image, axis)
        layer = self.controls.labels.value
        if layer is not None and layer not in self.viewer.layers:
            layer = None
        if layer is None:
            if not create:
                return None
            # uint16 halves the memory of very large stacks; uint32 otherwise
            dtype = np.uint16 if np.prod(shape, dtype=np.int64) > 2**26 else np.uint32
            scale, translate = spatial_transform(image, axis)
            layer = Labels(
                np.zeros(shape, dtype=dtype),
                name=f"{image.name} labels",
                scale=scale,
                translate=translate,
            )
            add_keeping_selection(self.viewer, layer)
            self.controls.labels.reset_choices()
            self.controls.labels.value = layer
            self.preview.keep_above(layer)
            return layer
        if tuple(layer.data.shape) != shape:
            raise ImageFormatError(
                f"labels layer {layer.name!r} has shape {tuple(layer.data.shape)} but image "
                f"{image.name!r} has spatial shape {shape}; pick a matching labels layer"
            )
        return layer

    def next_free_id(self, labels: Labels) -> int:
        """The next unused ID of ``labels``."""
        return self.ids.next_free(labels, self.bridge.generations.key(labels))

    def show_next_id(self, labels: Labels | None = None) -> None:
        """Put the next free ID in the label-ID box (unless the user is refining)."""
        labels = labels or self.controls.labels.value
        if labels is None or labels not in self.viewer.layers:
            return
        if self.priors.get(self._plane_key()) is not None:
            return
        self._auto_id = self.next_free_id(labels)
        self.controls.label_id.value = self._auto_id

    def _plane_key(self) -> tuple | None:
        try:
            return self._current_plane().key
        except ImageFormatError:
            return None

    # -- finish ----------------------------------------------------------------------------------

    def finish(self, then: Callable[[int], Any] | None = None) -> int | None:
        """Commit the object in progress (see the module docstring).

        Returns:
            the ID written now, or None when the commit waits for its prediction or was refused
            (the status line says which).
        """
        plane = self._current_plane()
        clicks = self.clicks.clicks_on(plane)
        prior = self.priors.get(plane.key)
        if not clicks and prior is None:
            self.controls.warn("nothing to finish: click on an object first")
            return None
        labels = self.target_labels(create=True)
        assert labels is not None
        next_free = self.next_free_id(labels)
        if prior is not None:
            label_id, replace, fresh = prior.label_id, prior.replace, prior.fresh
        else:
            label_id, replace = int(self.controls.label_id.value), None
            fresh = label_id >= next_free
            chosen = label_id != self._auto_id
            if chosen and not fresh and self.ids.exists(labels, label_id):
                self.controls.warn(
                    f"label {label_id} already exists in {labels.name!r}: pick a free ID "
                    f"(next free: {next_free}) or Shift+click that object to refine it"
                )
                return None
        dtype = labels.data.dtype
        if dtype.kind in "ui" and label_id > np.iinfo(dtype).max:
            self.controls.warn(f"label ID {label_id} does not fit the labels layer's {dtype}")
            return None
        request = self.bridge.build_request(
            plane, clicks, *((prior.mask, prior.serial) if prior is not None else (None, None))
        )
        image = self.controls.image.value
        snap = Snapshot(
            request=request,
            plane=plane,
            image=image,
            image_key=self.bridge.generations.key(image),
            labels=labels,
            labels_key=self.bridge.generations.key(labels),
            label_id=label_id,
            replace=replace,
            fresh=fresh,
            threshold=float(self.controls.threshold.value),
            overwrite=bool(self.controls.overwrite.value),
            prior_box=None if prior is None else prior.box,
            then=then,
        )
        held = self.bridge.result if self.bridge.matches(request) else None
        self.clear_object(plane)
        self.ids.reserve(label_id)
        self.show_next_id(labels)
        if held is not None:
            return self.apply(snap, held)
        self.pending += 1
        self.controls.set_status(f"label {label_id}: writing when its prediction arrives…")
        self.bridge.run_kept(request, lambda result, s=snap: self._apply_later(s, result))
        return None

    def _apply_later(self, snap: Snapshot, result: Result) -> None:
        self.pending -= 1
        self.apply(snap, result)

    def apply(self, snap: Snapshot, result: Result) -> int | None:
        """Write a snapshot's result into its labels layer; returns the ID or None (dropped)."""
        written = self._write(snap, result)
        if written is None:
            self.ids.release(snap.label_id)
            self.show_next_id(snap.labels)
        elif snap.then is not None:
            snap.then(written)
        return written

    def _write(self, snap: Snapshot, result: Result) -> int | None:
        gens = self.bridge.generations
        if result.error is not None:
            self.controls.warn(f"label {snap.label_id} not written: {result.error}")
            return None
        if (
            snap.labels not in self.viewer.layers
            or snap.image not in self.viewer.layers
            or gens.key(snap.labels) != snap.labels_key
            or gens.key(snap.image) != snap.image_key
        ):
            self.controls.warn(
                f"label {snap.label_id} not written: its image or labels layer was replaced or "
                "removed before the prediction arrived"
            )
            return None
        box, mask = _mask_in_box(result, snap.prior_box, snap.threshold)
        if not mask.any():
            self.controls.warn(
                f"label {snap.label_id} is empty at threshold {snap.threshold:.2f}: nothing "
                "written; add positive clicks or lower the threshold"
            )
            return None
        r0, r1, c0, c1 = box
        labels = snap.labels
        region = np.asarray(labels.data[snap.plane.data_index()][r0 : r1 + 1, c0 : c1 + 1])
        set_rc, clear_rc = commit_indices(
            region, mask, snap.label_id, overwrite=snap.overwrite, replace=snap.replace
        )
        if not len(set_rc[0]) and not len(clear_rc[0]):
            self.controls.warn(
                f"label {snap.label_id}: nothing written, the object lies on other labels "
                "(tick 'overwrite other labels' to replace them)"
            )
            return None
        set_nd = snap.plane.nd_indices(set_rc[0] + r0, set_rc[1] + c0)
        with labels.block_history():  # one napari undo step for the whole commit
            if len(set_rc[0]):
                labels.data_setitem(set_nd, snap.label_id)
            if len(clear_rc[0]):
                labels.data_setitem(snap.plane.nd_indices(clear_rc[0] + r0, clear_rc[1] + c0), 0)
        self.ids.committed(snap.label_id, set_nd, snap.fresh)
        self.last_commit = (snap.label_id, snap.plane, labels)
        self.controls.set_status(f"label {snap.label_id} written ({len(set_rc[0])} px)")
        return snap.label_id

    def clear_object(self, plane: Plane) -> None:
        """Forget the object in progress on ``plane``: clicks, prior, held result, preview."""
        self.clicks.clear_plane(plane)
        prior = self.priors.pop(plane.key, None)
        if prior is not None and prior.fresh:
            self.ids.release(prior.label_id)  # a carried object's new ID, never written
        self.bridge.forget()
        self.preview.clear()

    # -- refine ----------------------------------------------------------------------------------

    def refine_at(self, plane: Plane, row: int, col: int) -> bool:
        """Refine the object under pixel (row, col) of ``plane`` (Shift+click)."""
        labels = self._labels_to_refine()
        if labels is None:
            return False
        index = list(plane.index)
        index[plane.row_axis], index[plane.col_axis] = row, col
        value = int(labels.data[tuple(index)])
        if value == 0:
            self.controls.warn("Shift+click on an object of the labels layer to refine it")
            return False
        return self.refine(value, plane)

    def refine(self, label_id: int, plane: Plane | None = None) -> bool:
        """Make object ``label_id`` of the plane the object in progress (its mask the prior)."""
        plane = plane or self._current_plane()
        labels = self._labels_to_refine()
        if labels is None:
            return False
        if self.clicks.points_on(plane):
            self.controls.warn("finish or reset the current object before refining another one")
            return False
        if label_id <= 0:
            self.controls.warn("select a label ID > 0 to refine (0 is background)")
            return False
        mask = np.asarray(labels.data[plane.data_index()]) == label_id
        if not mask.any():
            self.controls.warn(f"label {label_id} is not on the displayed slice")
            return False
        self.set_prior(plane, Prior(label_id, mask, label_id, False, next_serial()))
        self.controls.set_status(f"refining label {label_id}: click to correct, then finish")
        return True

    def set_prior(self, plane: Plane, prior: Prior) -> None:
        """Start from ``prior`` on ``plane`` and show it at once (the model's answer follows)."""
        self.priors[plane.key] = prior
        self.bridge.forget()
        self.controls.label_id.value = prior.label_id
        self.preview.show_mask(plane, prior.mask)

    def _labels_to_refine(self) -> Labels | None:
        labels = self.target_labels(create=False)
        if labels is None:
            self.controls.warn("no labels layer chosen; pick the layer holding the object")
        return labels


def _mask_in_box(result: Result, prior_box: Roi | None, threshold: float) -> tuple[Roi, np.ndarray]:
    """The result's mask in the union of its box and the refined object's box."""
    roi = result.roi
    assert roi is not None and result.crop is not None
    box = roi
    if prior_box is not None:
        box = (
            min(roi[0], prior_box[0]),
            max(roi[1], prior_box[1]),
            min(roi[2], prior_box[2]),
            max(roi[3], prior_box[3]),
        )
    r0, r1, c0, c1 = box
    mask = np.zeros((r1 - r0 + 1, c1 - c0 + 1), dtype=bool)
    mask[roi[0] - r0 : roi[1] - r0 + 1, roi[2] - c0 : roi[3] - c0 + 1] = result.crop > threshold
    return box, mask
