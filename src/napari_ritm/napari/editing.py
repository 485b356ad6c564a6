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
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels

from napari_ritm.errors import ImageFormatError
from napari_ritm.napari.click_input import add_keeping_selection, spatial_transform
from napari_ritm.napari.commit import Prior, Snapshot, write_commit
from napari_ritm.napari.engine import Result
from napari_ritm.napari.identity import next_serial
from napari_ritm.napari.label_ids import LabelIds, max_painted_value
from napari_ritm.napari.layers import Plane, spatial_shape

if TYPE_CHECKING:  # pragma: no cover
    from napari_ritm.napari.bridge import PredictionBridge
    from napari_ritm.napari.click_input import ClickInput
    from napari_ritm.napari.controls import ControlPanel
    from napari_ritm.napari.preview import PreviewRenderer

__all__ = ["ObjectEditor", "Prior", "Snapshot"]


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
        self.watched_labels: Labels | None = None
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

    def watch_labels(self, labels: Labels | None) -> None:
        """Follow ``labels`` (the chosen layer): napari undo/redo and paints move the next ID."""
        old = self.watched_labels
        if old is labels:
            return
        if old is not None:
            old.events.set_data.disconnect(self._on_labels_refreshed)
            old.events.paint.disconnect(self._on_labels_painted)
        if labels is not None:
            labels.events.set_data.connect(self._on_labels_refreshed)
            labels.events.paint.connect(self._on_labels_painted)
            self.show_next_id(labels)
        self.watched_labels = labels

    def _on_labels_refreshed(self, _event: Any = None) -> None:
        labels = self.watched_labels
        if labels is None:
            return
        before = self.next_free_id(labels)
        self.ids.refreshed(labels)  # napari's undo/redo of a commit
        if self.next_free_id(labels) != before:
            self.show_next_id(labels)

    def _on_labels_painted(self, event: Any) -> None:
        labels = self.watched_labels
        showing_auto = labels is not None and self.controls.label_id.value == self._auto_id
        self.ids.painted(max_painted_value(event))
        if showing_auto and self.next_free_id(labels) != self._auto_id:
            self.show_next_id(labels)  # the user painted with the ID shown: show a free one

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
            chosen = label_id != self._auto_id
            if not chosen and label_id < next_free:
                label_id = next_free  # the ID shown went stale (painted meanwhile): never merge
            fresh = label_id >= next_free
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
        target_ok = (
            snap.labels in self.viewer.layers
            and snap.image in self.viewer.layers
            and gens.key(snap.labels) == snap.labels_key
            and gens.key(snap.image) == snap.image_key
        )
        outcome = write_commit(snap, result, target_ok)
        if outcome.label_id is None:
            self.controls.warn(outcome.message)
            return None
        self.ids.committed(outcome.label_id, outcome.written, snap.fresh)
        self.last_commit = (outcome.label_id, snap.plane, snap.labels)
        self.controls.set_status(outcome.message)
        return outcome.label_id

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
