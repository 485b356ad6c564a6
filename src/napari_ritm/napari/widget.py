"""RitmWidget: the napari dock widget for click-based interactive segmentation.

One widget = one :class:`~napari_ritm.napari.engine.PredictionEngine` (model + ClickSession) fed
through
one :class:`~napari_ritm.napari.worker.LatestRunner`, so predictions never block the viewer and the
newest click always wins. All persistent state lives in napari layers:

* "RITM positive" (green) / "RITM negative" (red) Points layers hold the clicks of the object in
  progress, in image pixel coordinates of the image's spatial axes. They are the truth: adding,
  moving or deleting a point (with napari's own Points tools too) re-runs the prediction.
* "RITM preview" Labels layer shows the current object on the displayed slice only.
* the chosen Labels layer receives committed objects through ``Labels.data_setitem`` inside one
  ``block_history`` so napari's Ctrl+Z on that layer takes a commit back.

Mouse, in click mode and with the active layer in pan/zoom mode: left click = positive click,
right click or Ctrl/Cmd+left click = negative click, Shift+left click on an object = refine it.
A press that moves more than a few screen pixels is a pan/zoom, not a click (as in the RITM demo).

Keys (viewer level, unused by napari's defaults): ``N`` finish object, ``Shift+N`` propagate to
the next slice, ``U`` undo click, ``Shift+U`` redo click, ``.``/``,`` next/previous slice.

Lifecycle: the model loads on the first prediction (or with "Load model") and is reused; changing
model, device, zoom-in or flip rebuilds the session and re-runs the clicks. Closing the widget
drops queued work, unbinds the keys and mouse callback and releases the model.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from napari_ritm.errors import ImageFormatError, RitmError
from napari_ritm.napari.engine import PredictionEngine, Request, Result
from napari_ritm.napari.layers import (
    NEGATIVE_COLOR,
    NEGATIVE_NAME,
    ORDER,
    POSITIVE_COLOR,
    POSITIVE_NAME,
    PREVIEW_NAME,
    Plane,
    assign_click_order,
    centre_pixel,
    clicks_on_plane,
    commit_indices,
    current_plane,
    image_plane,
    spatial_shape,
    world_to_spatial,
)
from napari_ritm.napari.worker import LatestRunner

if TYPE_CHECKING:  # pragma: no cover
    import napari

logger = logging.getLogger(__name__)

__all__ = ["KEYS", "RitmWidget", "widget_for"]

#: Viewer key bindings (napari key names). None of these is bound by napari by default.
KEYS = {
    "finish": "n",
    "propagate": "Shift-n",
    "undo": "u",
    "redo": "Shift-u",
    "next_slice": ".",
    "previous_slice": ",",
}
#: A press that moves more than this many screen pixels before release is a pan, not a click.
CLICK_TOLERANCE_PX = 3.0
NEW_LABELS = "<new labels layer>"
#: (label, ClickSession dtype); only float32 reproduces RITM exactly (docs/performance.md)
PRECISION_CHOICES = [
    ("float32 (exact)", "float32"),
    ("bfloat16 (fast CPU)", "bfloat16"),
    ("float16 (GPU)", "float16"),
]

_WIDGETS: weakref.WeakKeyDictionary[Any, RitmWidget] = weakref.WeakKeyDictionary()


def widget_for(viewer: napari.Viewer) -> RitmWidget | None:
    """The RitmWidget created for ``viewer`` (the newest one), or None."""
    return _WIDGETS.get(viewer)


def _model_choices() -> list[tuple[str, str]]:
    try:
        from napari_ritm.weights import DEFAULT_MODEL, list_weights

        infos = list_weights()
    except Exception:  # pragma: no cover - weights registry broken: still let files be loaded
        logger.exception("cannot list weights")
        return []
    infos.sort(key=lambda i: (i.name != DEFAULT_MODEL, not i.cached))
    return [(f"{i.name}  [{i.status}]", i.name) for i in infos]


def _device_choices() -> list[tuple[str, str | None]]:
    choices: list[tuple[str, str | None]] = [("auto", None), ("cpu", "cpu")]
    try:
        import torch

        if torch.cuda.is_available():
            choices.append(("cuda", "cuda"))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            choices.append(("mps", "mps"))
    except ImportError:  # pragma: no cover
        pass
    return choices


class RitmWidget(Container):
    """Dock widget: click to segment, refine existing labels, walk through stacks.

    Args:
        viewer: the napari viewer to work in.
        engine: inference state to use (tests inject one with a small model); default builds
            models with ``weights.load_model``.

    The child widgets are public attributes (``model``, ``image``, ``labels``, ``label_id``,
    ``threshold``...) so scripts and tests can set values and call the action methods
    (``finish_object``, ``undo_click``, ``refine_label``, ``propagate``...) directly.
    """

    def __init__(self, viewer: napari.Viewer, engine: PredictionEngine | None = None) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self._progress_lock = threading.Lock()
        self._progress_state: tuple[int, int, str] | None = None
        self.engine = engine or PredictionEngine()
        self.engine.progress = self._progress_from_thread
        self.runner = LatestRunner(self._on_result, self._on_busy, progress_desc="RITM")

        # --- model ---------------------------------------------------------------------------
        self.model = ComboBox(
            label="model",
            choices=_model_choices(),
            tooltip=(
                "Weights from the registry (downloaded on first use), or a checkpoint file added "
                "below"
            ),
        )
        self.model_file = FileEdit(label="or checkpoint", mode="r", filter="*.pth *.pt")
        self.device = ComboBox(label="device", choices=_device_choices())
        self.load_button = PushButton(text="Load model")
        # --- layers --------------------------------------------------------------------------
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.channels_first = CheckBox(
            text="first axis is channels",
            value=False,
            tooltip=("The image layer holds channels along its first axis (C, [Z,] Y, X)"),
        )
        self.channel = ComboBox(label="channel", choices=self._channel_choices)
        self.use_contrast = CheckBox(
            text="normalize with displayed contrast",
            value=True,
            tooltip="Use the image layer's contrast limits (what you see)"
            " for uint16/float images; off: 1-99.8 percentiles",
        )
        self.labels = ComboBox(label="labels", choices=self._labels_choices)
        self.label_id = SpinBox(label="label ID", value=1, min=1, max=2**31 - 1)
        self.overwrite = CheckBox(text="overwrite other labels", value=False)
        # --- prediction ----------------------------------------------------------------------
        self.threshold = FloatSlider(label="threshold", value=0.5, min=0.01, max=0.99, step=0.01)
        self.zoom_in = CheckBox(text="zoom-in", value=True)
        self.flip = CheckBox(text="flip augmentation", value=True)
        self.precision = ComboBox(
            label="precision",
            choices=PRECISION_CHOICES,
            value="float32",
            tooltip="float32: exact RITM outputs. bfloat16 (CPUs with AMX/AVX512-BF16) or "
            "float16 (GPUs): faster clicks, slightly different probabilities",
        )
        self.click_mode = CheckBox(
            text="click mode",
            value=True,
            tooltip=(
                "left click: positive, right or Ctrl+left click: negative, Shift+left: refine the "
                "label under the cursor (active layer in pan/zoom mode)"
            ),
        )
        # --- actions -------------------------------------------------------------------------
        self.finish_button = PushButton(text="Finish object [N]")
        self.undo_button = PushButton(text="Undo click [U]")
        self.redo_button = PushButton(text="Redo click [Shift+U]")
        self.reset_button = PushButton(text="Reset clicks")
        self.refine_button = PushButton(text="Refine selected label")
        self.propagate_button = PushButton(text="Propagate to next slice [Shift+N]")
        self.status = Label(value="ready")
        self.extend(
            [
                self.model,
                self.model_file,
                self.device,
                self.load_button,
                self.image,
                self.channels_first,
                self.channel,
                self.use_contrast,
                self.labels,
                self.label_id,
                self.overwrite,
                self.threshold,
                self.zoom_in,
                self.flip,
                self.precision,
                self.click_mode,
                self.finish_button,
                self.undo_button,
                self.redo_button,
                self.reset_button,
                self.refine_button,
                self.propagate_button,
                self.status,
            ]
        )

        # state of the object in progress
        self._positive: Points | None = None
        self._negative: Points | None = None
        self._preview: Labels | None = None
        self._order = 0
        self._redo: list[tuple[np.ndarray, bool]] = []
        self._priors: dict[tuple, tuple[int, np.ndarray]] = {}  # plane key -> (label id, mask)
        self._probs: np.ndarray | None = None
        self._probs_request: Request | None = None
        self._finish_when_idle = False
        self._updating = False
        self._plane_seen: Plane | None = None
        self._last_commit: tuple[int, Plane] | None = None

        # wiring
        self.load_button.changed.connect(self.load_model)
        self.model_file.changed.connect(self._on_model_file)
        for w in (self.model, self.device, self.zoom_in, self.flip, self.precision):
            w.changed.connect(self._on_options_changed)
        self.image.changed.connect(self._on_image_changed)
        self.channels_first.changed.connect(self._on_image_changed)
        for w in (self.channel, self.use_contrast):
            w.changed.connect(self.request_prediction)
        self.threshold.changed.connect(self._redraw_preview)
        self.finish_button.changed.connect(self.finish_object)
        self.undo_button.changed.connect(self.undo_click)
        self.redo_button.changed.connect(self.redo_click)
        self.reset_button.changed.connect(self.reset_clicks)
        self.refine_button.changed.connect(self.refine_selected)
        self.propagate_button.changed.connect(self.propagate)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.layers.events.reordered.connect(self._on_layers_changed)
        viewer.dims.events.point.connect(self._on_dims_changed)
        viewer.dims.events.order.connect(self._on_dims_changed)
        viewer.dims.events.ndisplay.connect(self._on_dims_changed)
        viewer.mouse_drag_callbacks.append(self._on_mouse_drag)
        self._bind_keys()
        self._progress_timer = QTimer(self.native)
        self._progress_timer.setInterval(200)
        self._progress_timer.timeout.connect(self._show_progress)
        self.native.destroyed.connect(self._teardown)
        _WIDGETS[viewer] = self
        self._on_layers_changed()
        self._on_image_changed()

    # ------------------------------------------------------------------------------------------
    # choices

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels | None]]:
        out: list[tuple[str, Labels | None]] = [(NEW_LABELS, None)]
        out += [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and layer is not self._preview_layer_or_none()
        ]
        return out

    def _channel_choices(self, _widget: Any = None) -> list[tuple[str, int | None]]:
        layer = self.image.value if hasattr(self, "image") else None
        choices: list[tuple[str, int | None]] = [("composite (channel mean)", None)]
        if layer is not None and self.channels_first.value and layer.ndim >= 3:
            choices += [(f"channel {c}", c) for c in range(layer.data.shape[0])]
        return choices

    def _preview_layer_or_none(self) -> Labels | None:
        return getattr(self, "_preview", None)

    def _on_layers_changed(self, event: Any = None) -> None:
        # our own layers may have been deleted by the user
        for attr in ("_positive", "_negative", "_preview"):
            layer = getattr(self, attr)
            if layer is not None and layer not in self.viewer.layers:
                setattr(self, attr, None)
        before = self.image.value
        self.image.reset_choices()
        if before is None and self.image.choices:
            # first image opened: take the active layer if it is an image, else the newest one
            active = self.viewer.layers.selection.active
            images = [layer for _, layer in self._image_choices()]
            self.image.value = active if active in images else images[-1]
        self.labels.reset_choices()
        self.channel.reset_choices()

    def reset_choices(self, event: Any = None) -> None:
        """Refresh the layer pickers (called by napari when layers change)."""
        self._on_layers_changed()

    # ------------------------------------------------------------------------------------------
    # settings

    @property
    def channel_axis(self) -> int | None:
        """Data axis of the image layer holding channels (0 when ticked), else None."""
        layer = self.image.value
        if self.channels_first.value and layer is not None and not layer.rgb and layer.ndim >= 3:
            return 0
        return None

    def _on_model_file(self, path: Any = None) -> None:
        path = str(self.model_file.value)
        if not path or path in (".", ""):
            return
        if path not in list(self.model.choices):
            self.model.set_choice(f"file: {path}", path)
        self.model.value = path

    def _on_options_changed(self, event: Any = None) -> None:
        self.request_prediction()

    def _on_image_changed(self, event: Any = None) -> None:
        self.channel.reset_choices()
        layer = self.image.value
        if layer is None:
            return
        shape = spatial_shape(layer, self.channel_axis)
        for attr in ("_positive", "_negative"):
            points = getattr(self, attr)
            if points is not None and points.ndim != len(shape):
                self._updating = True
                try:
                    self.viewer.layers.remove(points)
                finally:
                    self._updating = False
                setattr(self, attr, None)
        self._priors.clear()
        self.request_prediction()

    # ------------------------------------------------------------------------------------------
    # layers owned by the widget

    def _spatial_transform(self, layer: Image) -> tuple[np.ndarray, np.ndarray]:
        scale = np.asarray(layer.scale, dtype=float)
        translate = np.asarray(layer.translate, dtype=float)
        if self.channel_axis is not None:
            scale = np.delete(scale, self.channel_axis)
            translate = np.delete(translate, self.channel_axis)
        return scale, translate

    def _points_layer(self, positive: bool, create: bool = True) -> Points | None:
        attr = "_positive" if positive else "_negative"
        layer = getattr(self, attr)
        if layer is not None or not create:
            return layer
        image = self._require_image()
        ndim = len(spatial_shape(image, self.channel_axis))
        scale, translate = self._spatial_transform(image)
        color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
        layer = Points(
            np.empty((0, ndim)),
            ndim=ndim,
            name=POSITIVE_NAME if positive else NEGATIVE_NAME,
            face_color=color,
            border_color="white",
            border_width=0.15,
            # in data pixels: ~2% of the plane's longer side keeps points visible at any size
            size=max(5.0, 0.02 * max(spatial_shape(image, self.channel_axis)[-2:])),
            scale=scale,
            translate=translate,
            features={ORDER: np.zeros(0, dtype=np.int64)},
            feature_defaults={ORDER: -1},
            out_of_slice_display=False,
        )
        layer.events.data.connect(self._on_points_changed)
        setattr(self, attr, layer)
        active = self.viewer.layers.selection.active
        self._updating = True
        try:
            self.viewer.layers.append(layer)
        finally:
            self._updating = False
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # keep what the user had selected
        return layer

    def _preview_layer(self, plane: Plane) -> Labels:
        """Preview layer sized to one plane: size-1 axes placed at the plane's indices."""
        image = self._require_image()
        scale, translate = self._spatial_transform(image)
        shape = tuple(
            n if a in (plane.row_axis, plane.col_axis) else 1 for a, n in enumerate(plane.shape)
        )
        offset = translate + scale * np.array(
            [
                0 if a in (plane.row_axis, plane.col_axis) else plane.index[a]
                for a in range(plane.ndim)
            ],
            dtype=float,
        )
        layer = self._preview
        if layer is None or layer.data.shape != shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = Labels(
                np.zeros(shape, dtype=np.uint8),
                name=PREVIEW_NAME,
                opacity=0.5,
                scale=scale,
                translate=offset,
            )
            layer.colormap = _preview_colormap()
            self._preview = layer
            active = self.viewer.layers.selection.active
            self.viewer.layers.append(layer)
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
            self.labels.reset_choices()
        else:
            layer.scale = scale
            layer.translate = offset
        return layer

    def _require_image(self) -> Image:
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            raise ImageFormatError("no image layer chosen; open an image and pick it in 'image'")
        if getattr(layer, "multiscale", False):
            raise ImageFormatError(
                f"{layer.name!r} is a multiscale (pyramid) image; open its full-resolution level "
                "as a normal image layer"
            )
        return layer

    def _target_labels(self, create: bool) -> Labels | None:
        """The Labels layer to write; created with the image's spatial shape when asked."""
        image = self._require_image()
        shape = spatial_shape(image, self.channel_axis)
        layer = self.labels.value
        if layer is not None and layer not in self.viewer.layers:
            layer = None
        if layer is None:
            if not create:
                return None
            # uint16 halves the memory of very large stacks; uint32 otherwise
            dtype = np.uint16 if np.prod(shape, dtype=np.int64) > 2**26 else np.uint32
            scale, translate = self._spatial_transform(image)
            layer = Labels(
                np.zeros(shape, dtype=dtype),
                name=f"{image.name} labels",
                scale=scale,
                translate=translate,
            )
            active = self.viewer.layers.selection.active
            self.viewer.layers.append(layer)
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
            self.labels.reset_choices()
            self.labels.value = layer
            return layer
        if tuple(layer.data.shape) != shape:
            raise ImageFormatError(
                f"labels layer {layer.name!r} has shape {tuple(layer.data.shape)} but image "
                f"{image.name!r} has spatial shape {shape}; pick a matching labels layer or "
                f"'{NEW_LABELS}'"
            )
        return layer

    # ------------------------------------------------------------------------------------------
    # prediction

    def plane(self) -> Plane:
        """The displayed plane of the chosen image (raises ImageFormatError when unusable)."""
        return current_plane(self.viewer, self._require_image(), self.channel_axis)

    def _image_and_plane_or_warn(self) -> tuple[Image, Plane] | None:
        """The chosen image layer and its displayed plane, or None after warning why not."""
        try:
            return self._require_image(), self.plane()
        except RitmError as exc:
            self._warn(str(exc))
            return None

    def _plane_or_warn(self) -> Plane | None:
        """The displayed plane, or None after warning why there is none."""
        found = self._image_and_plane_or_warn()
        return None if found is None else found[1]

    def current_clicks(self) -> list:
        """Clicks of the object in progress on the displayed plane, in click order."""
        return clicks_on_plane(self._positive, self._negative, self.plane())

    def _build_request(self) -> Request | None:
        image = self._require_image()
        plane = self.plane()
        clicks = tuple(clicks_on_plane(self._positive, self._negative, plane))
        prior = self._priors.get(plane.key)
        if not clicks and prior is None:
            return None
        array = image_plane(image, plane, self.channel_axis)
        contrast = None
        if self.use_contrast.value:
            contrast = tuple(float(v) for v in image.contrast_limits)
        channel = self.channel.value if self.channel_axis is not None else None
        rgb = bool(image.rgb)
        key = (
            id(image),
            image.data.shape,
            plane.key,
            plane.row_axis,
            plane.col_axis,
            self.channel_axis,
            channel,
            contrast,
            id(prior[1]) if prior else None,
        )
        return Request(
            **self._model_options(),
            image_key=key,
            image=array,
            contrast_limits=contrast,
            channel=channel,
            rgb=rgb,
            prior_mask=None if prior is None else prior[1],
            clicks=clicks,
            tag=(image, plane),
        )

    def request_prediction(self, event: Any = None) -> int | None:
        """Queue a prediction for the displayed plane's clicks; returns the job ticket or None.

        With neither clicks nor prior mask on the plane the preview is cleared instead.
        """
        if self._updating:
            return None
        try:
            request = self._build_request()
        except RitmError as exc:
            self._clear_preview()
            if self.image.value is not None and self._has_any_points():
                self._warn(str(exc))
            return None
        if request is None:
            self._probs = None
            self._probs_request = None
            self._clear_preview()
            return None
        if request.model == "":
            self._warn("no model chosen; pick one in 'model' or choose a checkpoint file")
            return None
        return self.runner.submit(lambda r=request: self.engine.run(r))

    def load_model(self, event: Any = None) -> int | None:
        """Load (download if needed) the chosen model in the background."""
        if not self.model.value:
            self._warn("no model chosen; pick one in 'model' or choose a checkpoint file")
            return None
        request = Request(**self._model_options(), image_key=None, image=None)
        return self.runner.submit(lambda r=request: self.engine.run(r))

    def _model_options(self) -> dict[str, Any]:
        """The Request fields that choose the model and how the session runs it."""
        return {
            "model": str(self.model.value) if self.model.value is not None else "",
            "device": self.device.value,
            "zoom_in": bool(self.zoom_in.value),
            "flip": bool(self.flip.value),
            "precision": str(self.precision.value),
        }

    def _on_result(self, result: Result) -> None:
        if result.error is not None:
            self._warn(str(result.error))
            self._finish_when_idle = False
            return
        if result.probs is None:
            name = result.request.model
            self.status.value = f"model {name} loaded"
            return
        self._probs = result.probs
        self._probs_request = result.request
        t = result.timings
        self.status.value = f"{len(result.request.clicks)} click(s), {t.get('predict', 0.0):.2f} s"
        self._redraw_preview()

    def _on_busy(self, busy: bool) -> None:
        if busy:
            self.status.value = "predicting…"
            self._progress_timer.start()
        else:
            self._progress_timer.stop()
            if self._finish_when_idle:
                self._finish_when_idle = False
                self.finish_object()

    def _progress_from_thread(self, done: int, total: int, message: str) -> None:
        # called from the worker thread: only store, the UI timer shows it
        with self._progress_lock:
            self._progress_state = (done, total, message)

    def _show_progress(self) -> None:
        with self._progress_lock:
            state, self._progress_state = self._progress_state, None
        if state is None:
            return
        done, total, message = state
        if total:
            self.status.value = f"{message}: {100.0 * done / total:.0f}%"
        else:
            self.status.value = f"{message}…"

    def wait_idle(self) -> bool:
        """True when no prediction runs or waits (for tests and scripts)."""
        return not self.runner.busy

    @property
    def probs(self) -> np.ndarray | None:
        """(h, w) float32 probabilities of the object in progress on the displayed plane."""
        return self._probs

    @property
    def mask(self) -> np.ndarray | None:
        """(h, w) bool: ``probs > threshold`` (the preview), or None without a prediction."""
        if self._probs is None:
            return None
        return self._probs > float(self.threshold.value)

    def _current_result_valid(self) -> bool:
        """Whether the held probabilities belong to the displayed plane and its current clicks."""
        if self._probs is None or self._probs_request is None:
            return False
        try:
            request = self._build_request()
        except RitmError:
            return False
        if request is None:
            return False
        held = self._probs_request
        return (
            held.image_key == request.image_key
            and held.clicks == request.clicks
            and (held.model, held.zoom_in, held.flip, held.precision)
            == (request.model, request.zoom_in, request.flip, request.precision)
        )

    def _redraw_preview(self, event: Any = None) -> None:
        if self._probs is None or self._probs_request is None:
            self._clear_preview()
            return
        image, plane = self._probs_request.tag
        try:
            if image is not self.image.value or plane != self.plane():
                return
            layer = self._preview_layer(plane)
        except RitmError:
            return
        data = np.asarray(self.mask, dtype=np.uint8).reshape(layer.data.shape)
        layer.data = data
        layer.visible = True

    def _clear_preview(self) -> None:
        if self._preview is not None and self._preview.data.any():
            self._preview.data = np.zeros_like(self._preview.data)

    # ------------------------------------------------------------------------------------------
    # events

    def _has_any_points(self) -> bool:
        return any(p is not None and len(p.data) for p in (self._positive, self._negative))

    def _on_points_changed(self, event: Any) -> None:
        action = str(getattr(event, "action", "changed"))
        if action.split(".")[-1].lower() in ("adding", "changing", "removing"):
            return
        layer = event.source
        rows = getattr(event, "data_indices", None) if action.endswith(("added", "ADDED")) else None
        self._order = assign_click_order(layer, self._order, rows)
        if self._updating:
            return
        if action.split(".")[-1].lower() == "added":
            self._redo.clear()
        self.request_prediction()

    def _on_dims_changed(self, event: Any = None) -> None:
        if self._updating:
            return
        try:
            plane = self.plane()
        except RitmError:
            plane = None
        if plane is not None and plane == self._plane_seen:
            return  # e.g. a layer was added: same slice, nothing to redo
        self._plane_seen = plane
        self._probs = None
        self._probs_request = None
        self.request_prediction()

    def _on_mouse_drag(self, viewer: Any, event: Any):
        """Viewer drag callback: turns short presses into clicks (generator, napari protocol)."""
        if not self.click_mode.value or event.type != "mouse_press":
            return
        active = viewer.layers.selection.active
        if active is not None and getattr(active, "mode", "pan_zoom") != "pan_zoom":
            return  # the user is painting, adding points, selecting...: not ours
        if self.image.value is None:
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

    def handle_click(self, position: Any, button: int = 1, modifiers: Any = ()) -> None:
        """Act on a click at a world ``position`` (what the mouse callback calls).

        Args:
            position: world coordinates, one per viewer dimension.
            button: 1 left, 2 right.
            modifiers: names of held modifier keys ("Shift", "Control", "Meta", "Alt").
        """
        modifiers = set(modifiers)
        found = self._image_and_plane_or_warn()
        if found is None:
            return
        image, plane = found
        coords = world_to_spatial(image, position, self.channel_axis)
        row, col = coords[plane.row_axis], coords[plane.col_axis]
        h, w = plane.hw
        if not (-0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5):
            return  # outside the image
        if button == 1 and "Shift" in modifiers:
            self._refine_at(plane, int(np.floor(row + 0.5)), int(np.floor(col + 0.5)))
            return
        positive = button == 1 and not ({"Control", "Meta"} & modifiers)
        if button not in (1, 2):
            return
        point = np.array(plane.index, dtype=float)
        point[plane.row_axis], point[plane.col_axis] = row, col
        self.add_point(point, positive)

    def add_point(self, coords: Any, positive: bool = True) -> None:
        """Append a click given in spatial data coordinates (one per spatial axis)."""
        layer = self._points_layer(positive)
        self._redo.clear()
        layer.add(np.asarray(coords, dtype=float).reshape(1, -1))

    # ------------------------------------------------------------------------------------------
    # actions

    def _points_on_plane(self, plane: Plane) -> list[tuple[Points, int, float]]:
        """(layer, row index, order) of the points on ``plane``."""
        out = []
        for layer in (self._positive, self._negative):
            if layer is None or len(layer.data) == 0:
                continue
            keep = plane.on_plane(np.asarray(layer.data))
            order = np.asarray(layer.features[ORDER], dtype=float)
            out += [(layer, int(i), float(order[i])) for i in np.flatnonzero(keep)]
        return out

    def _remove_points(self, items: list[tuple[Points, int, float]], notify: bool) -> None:
        by_layer: dict[int, tuple[Points, list[int]]] = {}
        for layer, i, _ in items:
            by_layer.setdefault(id(layer), (layer, []))[1].append(i)
        self._updating = not notify
        try:
            for layer, rows in by_layer.values():
                keep = np.setdiff1d(np.arange(len(layer.data)), rows)
                features = layer.features.iloc[keep].reset_index(drop=True)
                layer.data = np.asarray(layer.data)[keep]
                layer.features = features
        finally:
            self._updating = False

    def undo_click(self, event: Any = None) -> None:
        """Remove the newest click of the displayed plane (it can be redone)."""
        plane = self._plane_or_warn()
        if plane is None:
            return
        items = self._points_on_plane(plane)
        if not items:
            self.status.value = "no click to undo"
            return
        newest = max(items, key=lambda t: t[2])
        layer, i, _ = newest
        self._redo.append((np.asarray(layer.data[i], dtype=float).copy(), layer is self._positive))
        self._remove_points([newest], notify=True)
        self.request_prediction()

    def redo_click(self, event: Any = None) -> None:
        """Put back the last undone click."""
        if not self._redo:
            self.status.value = "no click to redo"
            return
        coords, positive = self._redo.pop()
        redo = list(self._redo)
        self.add_point(coords, positive)
        self._redo = redo

    def reset_clicks(self, event: Any = None) -> None:
        """Drop the clicks and the refine target of the displayed plane."""
        plane = self._plane_or_warn()
        if plane is None:
            return
        self._clear_object(plane)
        self.status.value = "reset"

    def _clear_object(self, plane: Plane) -> None:
        """Forget the object in progress on ``plane``: its clicks, prior, redo stack and preview."""
        self._remove_points(self._points_on_plane(plane), notify=False)
        self._priors.pop(plane.key, None)
        self._redo.clear()
        self._probs = None
        self._probs_request = None
        self._clear_preview()

    def finish_object(self, event: Any = None) -> int | None:
        """Commit the object in progress into the labels layer and go to the next free ID.

        Writes ``label ID`` (or the refined object's ID) where ``probs > threshold`` on the
        displayed plane, without touching other objects unless "overwrite other labels" is on.

        Returns:
            the ID written, or None when nothing was committed (a notification says why). When a
            prediction is still running, the commit happens as soon as it arrives and None is
            returned.
        """
        if self.runner.busy:
            self._finish_when_idle = True
            self.status.value = "finishing when the prediction arrives…"
            return None
        try:
            plane = self.plane()
            if not self._current_result_valid():
                if self._build_request() is None:
                    self._warn("nothing to finish: click on an object first")
                    return None
                self._finish_when_idle = True
                self.request_prediction()
                return None
            labels = self._target_labels(create=True)
        except RitmError as exc:
            self._warn(str(exc))
            return None
        mask = self.mask
        assert mask is not None  # checked by _current_result_valid
        if not mask.any():
            self._warn(
                f"the object is empty at threshold {self.threshold.value:.2f}: nothing "
                "written; add positive clicks or lower the threshold"
            )
            return None
        prior = self._priors.get(plane.key)
        label_id = int(prior[0]) if prior is not None else int(self.label_id.value)
        replace = label_id if prior is not None else None
        max_id = np.iinfo(labels.data.dtype).max if labels.data.dtype.kind in "ui" else 2**31 - 1
        if label_id > max_id:
            self._warn(
                f"label ID {label_id} does not fit the labels layer's {labels.data.dtype}; "
                "use a smaller ID"
            )
            return None
        labels_plane = np.asarray(labels.data[plane.data_index()])
        set_rc, clear_rc = commit_indices(
            labels_plane, mask, label_id, overwrite=bool(self.overwrite.value), replace=replace
        )
        with labels.block_history():  # one napari undo step for the whole commit
            if len(set_rc[0]):
                labels.data_setitem(plane.nd_indices(*set_rc), label_id)
            if len(clear_rc[0]):
                labels.data_setitem(plane.nd_indices(*clear_rc), 0)
        self._clear_object(plane)
        self.label_id.value = max(int(np.max(labels.data)) + 1, 1)
        self.status.value = f"label {label_id} written ({len(set_rc[0])} px)"
        self._last_commit = (label_id, plane)
        return label_id

    def refine_selected(self, event: Any = None) -> None:
        """Refine the labels layer's selected label on the displayed plane."""
        plane = self._plane_or_warn()
        if plane is None:
            return
        labels = self._labels_to_refine_or_warn()
        if labels is None:
            return
        self.refine_label(int(labels.selected_label), plane)

    def _labels_to_refine_or_warn(self) -> Labels | None:
        """The chosen labels layer (never created here), or None after warning why not."""
        try:
            labels = self._target_labels(create=False)
        except RitmError as exc:
            self._warn(str(exc))
            return None
        if labels is None:
            self._warn("no labels layer chosen; pick the layer holding the object to refine")
        return labels

    def _refine_at(self, plane: Plane, row: int, col: int) -> None:
        labels = self._labels_to_refine_or_warn()
        if labels is None:
            return
        index = list(plane.index)
        index[plane.row_axis], index[plane.col_axis] = row, col
        value = int(labels.data[tuple(index)])
        if value == 0:
            self._warn(
                "Shift+click on an object of the labels layer to refine it (this is background)"
            )
            return
        self.refine_label(value, plane)

    def refine_label(self, label_id: int, plane: Plane | None = None) -> bool:
        """Make object ``label_id`` of the displayed plane the object in progress.

        Its mask becomes the session's prior mask; clicks then refine it and finishing writes it
        back under the same ID (its pixels outside the new mask become 0).

        Returns:
            True when refining started, False when refused (a notification says why).
        """
        plane = plane or self._plane_or_warn()
        if plane is None:
            return False
        labels = self._labels_to_refine_or_warn()
        if labels is None:
            return False
        if self._points_on_plane(plane):
            self._warn("finish or reset the current object before refining another one")
            return False
        if label_id <= 0:
            self._warn("select a label ID > 0 to refine (0 is background)")
            return False
        mask = np.asarray(labels.data[plane.data_index()]) == label_id
        if not mask.any():
            self._warn(f"label {label_id} is not on the displayed slice; nothing to refine")
            return False
        self._set_prior(plane, label_id, mask)
        self.label_id.value = label_id
        self.status.value = f"refining label {label_id}: click to correct, then finish"
        return True

    def _set_prior(self, plane: Plane, label_id: int, mask: np.ndarray) -> None:
        self._priors[plane.key] = (label_id, np.ascontiguousarray(mask, dtype=bool))
        self._probs = mask.astype(np.float32)
        self._probs_request = None
        self.request_prediction()
        # show the prior at once; the model's answer replaces it
        try:
            layer = self._preview_layer(plane)
            layer.data = mask.astype(np.uint8).reshape(layer.data.shape)
        except RitmError:
            pass

    def _stack_axis(self, plane: Plane) -> int | None:
        others = plane.other_axes
        if not others:
            return None
        image = self._require_image()
        offset = self.viewer.dims.ndim - image.ndim
        last = self.viewer.dims.last_used - offset
        if self.channel_axis is not None and last > self.channel_axis:
            last -= 1
        return last if last in others else others[-1]

    def step_slice(self, step: int) -> None:
        """Move the viewer ``step`` slices along the stack axis of the chosen image."""
        found = self._image_and_plane_or_warn()
        if found is None:
            return
        image, plane = found
        axis = self._stack_axis(plane)
        if axis is None:
            return
        target = plane.index[axis] + step
        if not 0 <= target < plane.shape[axis]:
            return
        self._move_to(image, plane, axis, target)

    def _move_to(self, image: Image, plane: Plane, axis: int, index: int) -> None:
        data_axis = axis + (1 if self.channel_axis is not None and axis >= self.channel_axis else 0)
        offset = self.viewer.dims.ndim - image.ndim
        scale = float(image.scale[data_axis])
        translate = float(image.translate[data_axis])
        self.viewer.dims.set_point(data_axis + offset, translate + scale * index)

    def propagate(self, event: Any = None) -> bool:
        """Commit the object and carry it to the next slice as prior mask plus a centre click.

        Returns:
            True when the viewer moved to the next slice with the object as prior.
        """
        if self.runner.busy:
            self._warn("a prediction is still running; propagate again when it is done")
            return False
        found = self._image_and_plane_or_warn()
        if found is None:
            return False
        image, plane = found
        axis = self._stack_axis(plane)
        if axis is None:
            self._warn("the image has no stack axis (Z or T) to propagate along")
            return False
        if plane.index[axis] + 1 >= plane.shape[axis]:
            self._warn("this is the last slice; nothing to propagate to")
            return False
        if self._points_on_plane(plane) or plane.key in self._priors:
            label_id = self.finish_object()
            if label_id is None:
                return False
        elif self._last_commit is not None and self._last_commit[1] == plane:
            label_id = self._last_commit[0]
        else:
            self._warn("nothing to propagate: segment an object on this slice first")
            return False
        labels = self._target_labels(create=False)
        assert labels is not None
        mask = np.asarray(labels.data[plane.data_index()]) == label_id
        centre = centre_pixel(mask)
        if centre is None:
            self._warn(f"label {label_id} is empty on this slice; nothing to propagate")
            return False
        nxt = plane.with_index(axis, plane.index[axis] + 1)
        self._updating = True
        try:
            self._move_to(image, plane, axis, nxt.index[axis])
        finally:
            self._updating = False
        self._priors[nxt.key] = (label_id, np.ascontiguousarray(mask))
        self.label_id.value = label_id
        point = np.array(nxt.index, dtype=float)
        point[nxt.row_axis], point[nxt.col_axis] = centre
        self.add_point(point, positive=True)  # triggers the prediction with the prior
        self.status.value = f"propagated label {label_id} to slice {nxt.index[axis]}"
        return True

    # ------------------------------------------------------------------------------------------
    # keys, notifications, teardown

    def _bind_keys(self) -> None:
        actions = {
            "finish": lambda v: self.finish_object(),
            "propagate": lambda v: self.propagate(),
            "undo": lambda v: self.undo_click(),
            "redo": lambda v: self.redo_click(),
            "next_slice": lambda v: self.step_slice(1),
            "previous_slice": lambda v: self.step_slice(-1),
        }
        self._key_funcs = {}
        for name, func in actions.items():
            self.viewer.bind_key(KEYS[name], func, overwrite=True)
            self._key_funcs[name] = func

    def _warn(self, message: str) -> None:
        self.status.value = message
        show_warning(message)

    def _teardown(self, *args: Any) -> None:
        if getattr(self, "_torn_down", False):
            return
        self._torn_down = True
        self.runner.close()
        try:
            self._progress_timer.stop()
        except RuntimeError:  # Qt already deleted it (widget destroyed)
            pass
        try:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse_drag)
        except ValueError:
            pass
        for name in self._key_funcs:
            try:
                self.viewer.bind_key(KEYS[name], None)
            except (KeyError, ValueError, TypeError):  # pragma: no cover
                pass
        for emitter, cb in (
            (self.viewer.layers.events.inserted, self._on_layers_changed),
            (self.viewer.layers.events.removed, self._on_layers_changed),
            (self.viewer.layers.events.reordered, self._on_layers_changed),
            (self.viewer.dims.events.point, self._on_dims_changed),
            (self.viewer.dims.events.order, self._on_dims_changed),
            (self.viewer.dims.events.ndisplay, self._on_dims_changed),
        ):
            emitter.disconnect(cb)
        self.engine.session = None
        self.engine.model = None
        if _WIDGETS.get(self.viewer) is self:
            del _WIDGETS[self.viewer]

    def close(self) -> None:
        """Close the widget and release its model, key bindings and callbacks."""
        self._teardown()
        super().close()


def _preview_colormap() -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "#ffd400"})


def _info(message: str) -> None:  # pragma: no cover - kept for commands
    show_info(message)
