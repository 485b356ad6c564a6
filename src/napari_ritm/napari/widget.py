"""RitmWidget: the napari dock for click-based interactive segmentation.

The class napari instantiates only wires the parts, each with one job:

* :class:`~napari_ritm.napari.controls.ControlPanel` (its base): option widgets, pickers, status;
* :class:`~napari_ritm.napari.click_input.ClickInput`: the click Points layers and the mouse;
* :class:`~napari_ritm.napari.bridge.PredictionBridge`: requests to the model, off the UI thread;
* :class:`~napari_ritm.napari.live.LivePrediction`: the preview follows the displayed clicks;
* :class:`~napari_ritm.napari.preview.PreviewRenderer`: the ROI-bounded preview layer;
* :class:`~napari_ritm.napari.editing.ObjectEditor`: finish by snapshot, refine, label IDs
  (the commit itself: :mod:`napari_ritm.napari.commit`);
* :class:`~napari_ritm.napari.stacks.StackNavigator`: slices and propagation;
* :class:`~napari_ritm.napari.keys.KeyBindings`: N, Shift+N, U, Shift+U, "." and ",".

The model starts loading in the background when the dock opens. Closing the dock drops waiting
jobs, releases the model once the running job is over, unbinds only its own keys and disconnects
every event it connected.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ritm.errors import ImageFormatError, RitmError
from napari_ritm.inference.clicks import Click
from napari_ritm.napari.bridge import PredictionBridge
from napari_ritm.napari.click_input import ClickInput
from napari_ritm.napari.controls import ControlPanel
from napari_ritm.napari.editing import ObjectEditor
from napari_ritm.napari.engine import PredictionEngine
from napari_ritm.napari.keys import KEYS, KeyBindings, focus_canvas
from napari_ritm.napari.layers import Plane, current_plane, spatial_shape
from napari_ritm.napari.live import LivePrediction
from napari_ritm.napari.preview import PreviewRenderer
from napari_ritm.napari.stacks import StackNavigator

if TYPE_CHECKING:  # pragma: no cover
    import napari

logger = logging.getLogger(__name__)

__all__ = ["KEYS", "RitmWidget", "widget_for"]

_WIDGETS: weakref.WeakKeyDictionary[Any, RitmWidget] = weakref.WeakKeyDictionary()


def widget_for(viewer: napari.Viewer) -> RitmWidget | None:
    """The RitmWidget docked in ``viewer`` (the newest one), or None."""
    return _WIDGETS.get(viewer)


class RitmWidget(ControlPanel):
    """Dock widget: click to segment, refine existing labels, walk through stacks.

    Args:
        viewer: the napari viewer to work in.
        engine: inference state to use (tests inject one with a small model); default loads
            models with ``weights.load_model``.
    """

    def __init__(self, viewer: napari.Viewer, engine: PredictionEngine | None = None) -> None:
        super().__init__(viewer)
        self._quiet = False
        self._torn_down = False
        self._plane_seen: Plane | None = None
        self.bridge = PredictionBridge(
            self, engine, lambda result: self.live.on_result(result), self._on_data_replaced
        )
        self.engine, self.runner = self.bridge.engine, self.bridge.runner
        self.preview = PreviewRenderer(self)
        self.clicks = ClickInput(self, self.plane, self.request_prediction, self._refine_at)
        self.editor = ObjectEditor(self, self.clicks, self.bridge, self.preview, self.plane)
        self.stacks = StackNavigator(self.editor, self.plane, self._quietly)
        self.live = LivePrediction(self, self.bridge, self.clicks, self.editor, self.preview)
        actions: dict[str, Callable[[], Any]] = {
            "finish": self.finish_object,
            "propagate": self.propagate,
            "undo": self.undo_click,
            "redo": self.redo_click,
            "next_slice": lambda: self.step_slice(1),
            "previous_slice": lambda: self.step_slice(-1),
        }
        for button, action in (
            (self.finish_button, self.finish_object),
            (self.undo_button, self.undo_click),
            (self.redo_button, self.redo_click),
            (self.reset_button, self.reset_clicks),
            (self.refine_button, self.refine_selected),
            (self.propagate_button, self.propagate),
            (self.load_button, self.load_model),
        ):
            button.changed.connect(lambda _v=None, a=action: (a(), focus_canvas(self.viewer)))
        for option in (
            self.model,
            self.device,
            self.zoom_in,
            self.flip,
            self.precision,
            self.preset,
        ):
            option.changed.connect(self._on_options_changed)
        for option in (self.channel, self.normalization):
            option.changed.connect(self.request_prediction)
        self.image.changed.connect(self._on_image_changed)
        self.channels_first.changed.connect(self._on_image_changed)
        self.labels.changed.connect(self._on_labels_changed)
        self.threshold.changed.connect(lambda _v=None: self.live.redraw())
        self.label_id.native.editingFinished.connect(lambda: focus_canvas(self.viewer))
        self._viewer_events = [
            (viewer.layers.events.inserted, self._on_layers_changed),
            (viewer.layers.events.removed, self._on_layers_changed),
            (viewer.layers.events.reordered, self._on_layers_changed),
            (viewer.dims.events.point, self._on_dims_changed),
            (viewer.dims.events.order, self._on_dims_changed),
            (viewer.dims.events.ndisplay, self._on_dims_changed),
        ]
        for emitter, callback in self._viewer_events:
            emitter.connect(callback)
        viewer.mouse_drag_callbacks.append(self.clicks.on_mouse_drag)
        self.keys = KeyBindings(viewer, {k: self._guarded(a) for k, a in actions.items()})
        self.native.destroyed.connect(self._teardown)
        _WIDGETS[viewer] = self
        self._on_layers_changed()
        self._on_image_changed()
        self.load_model()  # in the background, so the first click does not wait for it

    # -- the displayed plane ---------------------------------------------------------------------

    def plane(self) -> Plane:
        """The displayed plane of the chosen image (raises ImageFormatError when unusable)."""
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            raise ImageFormatError("no image layer chosen; open an image and pick it in 'image'")
        if getattr(layer, "multiscale", False):
            raise ImageFormatError(
                f"{layer.name!r} is a multiscale (pyramid) image; open its full-resolution level "
                "as a normal image layer"
            )
        return current_plane(self.viewer, layer, self.channel_axis)

    def current_clicks(self) -> list[Click]:
        """Clicks of the object in progress on the displayed plane, in click order."""
        return self.clicks.clicks_on(self.plane())

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _guarded(self, action: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            try:
                return action()
            except RitmError as exc:
                self.warn(str(exc))
                return None

        return run

    # -- prediction ------------------------------------------------------------------------------

    def request_prediction(self, _event: Any = None) -> int | None:
        """Predict the displayed plane's object (latest wins); returns the job ticket or None."""
        if self._quiet or self._torn_down:
            return None
        return self.live.request()

    def load_model(self, _event: Any = None) -> int | None:
        """Load (download if needed) the chosen model in the background."""
        return self.live.load_model()

    def wait_idle(self) -> bool:
        """True when no prediction runs or waits (for tests and scripts)."""
        return not self.bridge.busy

    @property
    def probs(self) -> np.ndarray | None:
        """(h, w) float32 probabilities of the object on the displayed plane (image-sized)."""
        result = self.live.held_for_display()
        return None if result is None else result.probs

    @property
    def mask(self) -> np.ndarray | None:
        """(h, w) bool ``probs > threshold`` (the preview), or None without a prediction."""
        probs = self.probs
        return None if probs is None else probs > float(self.threshold.value)

    # -- actions ---------------------------------------------------------------------------------

    def finish_object(self, _event: Any = None) -> int | None:
        """Commit the object in progress (by snapshot); returns the ID if written now."""
        return self._guarded(self.editor.finish)()

    def propagate(self, _event: Any = None) -> bool:
        """Commit the object and carry it to the next slice."""
        return bool(self._guarded(self.stacks.propagate)())

    def undo_click(self, _event: Any = None) -> None:
        """Remove the newest click of the displayed plane (it can be redone)."""
        plane = self._guarded(self.plane)()
        if plane is not None and not self.clicks.undo(plane):
            self.set_status("no click to undo")

    def redo_click(self, _event: Any = None) -> None:
        """Put back the last undone click."""
        if not self._guarded(self.clicks.redo)():
            self.set_status("no click to redo")

    def reset_clicks(self, _event: Any = None) -> None:
        """Drop the clicks and the refine target of the displayed plane."""
        plane = self._guarded(self.plane)()
        if plane is not None:
            self.editor.clear_object(plane)
            self.set_status("reset")

    def refine_selected(self, _event: Any = None) -> bool:
        """Refine the labels layer's selected label on the displayed plane."""
        labels = self.labels.value
        if labels is None:
            self.warn("no labels layer chosen; pick the layer holding the object")
            return False
        return bool(self._guarded(lambda: self.editor.refine(int(labels.selected_label)))())

    def refine_label(self, label_id: int, plane: Plane | None = None) -> bool:
        """Make object ``label_id`` of the displayed plane the object in progress."""
        started = bool(self._guarded(lambda: self.editor.refine(label_id, plane))())
        if started:
            self.request_prediction()
        return started

    def _refine_at(self, plane: Plane, row: int, col: int) -> None:
        if self.editor.refine_at(plane, row, col):
            self.request_prediction()

    def step_slice(self, step: int) -> None:
        """Move the viewer ``step`` slices along the stack axis."""
        self._guarded(lambda: self.stacks.step(step))()

    def add_point(self, coords: Any, positive: bool = True) -> None:
        """Append a click given in spatial data coordinates (one per spatial axis)."""
        self.clicks.add_point(coords, positive)

    def handle_click(self, position: Any, button: int = 1, modifiers: Any = ()) -> None:
        """Act on a click at a world ``position`` (what the mouse callback calls)."""
        self._guarded(lambda: self.clicks.handle_click(position, button, modifiers))()

    # -- events ----------------------------------------------------------------------------------

    def _on_options_changed(self, _event: Any = None) -> None:
        if self.request_prediction() is None and not self.bridge.busy:
            self.load_model()

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.clicks.forget_deleted()
        self.preview.forget_deleted()
        self.refresh_layer_choices()

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the layer pickers (called by napari when layers change)."""
        self._on_layers_changed()

    def _on_image_changed(self, _event: Any = None) -> None:
        self.channel.reset_choices()
        layer = self.image.value
        if layer is None:
            return
        self.clicks.drop_if_wrong_ndim(len(spatial_shape(layer, self.channel_axis)))
        self.editor.priors.clear()
        self.request_prediction()

    def _on_labels_changed(self, _event: Any = None) -> None:
        labels = self.labels.value
        self.editor.watch_labels(labels)
        self.preview.keep_above(labels)

    def _on_data_replaced(self, layer: Any) -> None:
        if layer is self.image.value:
            self.bridge.forget()
            self.request_prediction()
        elif layer is self.editor.watched_labels:
            self.editor.show_next_id(layer)

    def _on_dims_changed(self, _event: Any = None) -> None:
        if self._quiet:
            return
        try:
            plane: Plane | None = self.plane()
        except RitmError:
            plane = None
        if plane is not None and plane == self._plane_seen:
            return  # e.g. a layer was added: same slice, nothing to redo
        self._plane_seen = plane
        if self.request_prediction() is None and self.live.held_for_display() is None:
            self.preview.clear()

    # -- teardown --------------------------------------------------------------------------------

    def _teardown(self, *_args: Any) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        self.keys.unbind()
        with contextlib.suppress(ValueError):
            self.viewer.mouse_drag_callbacks.remove(self.clicks.on_mouse_drag)
        for emitter, callback in self._viewer_events:
            emitter.disconnect(callback)
        self.editor.watch_labels(None)
        self.bridge.close()  # the model is released when the running job (if any) has ended
        if _WIDGETS.get(self.viewer) is self:
            del _WIDGETS[self.viewer]

    def close(self) -> None:
        """Close the dock: cancel waiting jobs, release the model, unbind keys and events."""
        self._teardown()
        super().close()
