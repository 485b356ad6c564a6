"""The RITM dock's controls: option widgets, layer pickers, buttons and the status line.

:class:`ControlPanel` only builds and lays out magicgui widgets and reads their values; what the
buttons do is wired by :class:`~napari_ritm.napari.widget.RitmWidget`. Keyboard focus is kept
out of the dock on purpose: buttons and check boxes never take focus and the label-ID box takes it
only when clicked, so the viewer's keys (N, U, Ctrl+Z...) and typed digits reach the canvas.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QWidget

from napari_ritm.inference.session import DEFAULT_THRESHOLD
from napari_ritm.napari.layers import is_ritm_layer
from napari_ritm.napari.qt_parts import wrapping_label

if TYPE_CHECKING:  # pragma: no cover
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "NEW_LABELS",
    "NORMALIZATION_CHOICES",
    "PRECISION_CHOICES",
    "PRESET_CHOICES",
    "ControlPanel",
]

NEW_LABELS = "<new labels layer>"
#: (label, ClickSession precision); float32 reproduces RITM exactly (docs/performance.md)
PRECISION_CHOICES = [
    ("auto (fastest that keeps accuracy here)", "auto"),
    ("float32 (exact)", "float32"),
    ("bfloat16 (fast CPU)", "bfloat16"),
    ("float16 (GPU)", "float16"),
]
#: "trained": the normalization recorded in the model's checkpoint (what training and evaluation
#: fed the network); "contrast": the image layer's displayed contrast limits.
#: (label, ClickSession preset)
PRESET_CHOICES = [
    ("interactive (zoom from the first click)", "interactive"),
    ("evaluation protocol (reference RITM)", "evaluation"),
]
NORMALIZATION_CHOICES = [
    ("as trained (model's percentiles)", "trained"),
    ("displayed contrast", "contrast"),
]
#: Longest status text shown in the dock; longer messages go whole into a notification.
STATUS_CHARS = 90


def model_use(name: str | None) -> str:
    """The "for: ..." line of a model choice: what a registry entry is for, or a file's note."""
    from napari_ritm.weights import list_weights

    if not name:
        return ""
    for info in list_weights():
        if info.name == name:
            return f"for: {info.use_for}" if info.use_for else ""
    return "for: the images its training data resembles (a checkpoint file)"


def model_choices() -> list[tuple[str, str]]:
    """(label, registry name) of the known weights, the shipped default first."""
    from napari_ritm.weights import DEFAULT_MODEL, list_weights

    infos = list_weights()
    infos.sort(key=lambda i: (i.name != DEFAULT_MODEL, not i.cached))
    return [(f"{i.name}  [{i.status}]", i.name) for i in infos]


def device_choices() -> list[tuple[str, str | None]]:
    """(label, device) for "auto", the CPU and whatever accelerator torch sees."""
    import torch

    choices: list[tuple[str, str | None]] = [("auto", None), ("cpu", "cpu")]
    if torch.cuda.is_available():
        choices.append(("cuda", "cuda"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        choices.append(("mps", "mps"))
    return choices


class ControlPanel(Container):
    """The dock's widgets (public attributes, so scripts and tests can set them).

    Args:
        viewer: the viewer whose layers the pickers list.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.model = ComboBox(
            label="model",
            choices=model_choices(),
            tooltip="Weights from the registry (official ones download on first use), or a "
            "checkpoint file chosen below",
        )
        # what the chosen model is for, in one wrapped line (the choices say only names)
        self.model_use = wrapping_label(model_use(self.model.value))
        self.model_file = FileEdit(label="or checkpoint", mode="r", filter="*.pth *.pt")
        self.device = ComboBox(label="device", choices=device_choices())
        self.load_button = PushButton(text="Load model")
        self.image = ComboBox(label="image", choices=self.image_choices)
        self.channels_first = CheckBox(
            text="first axis is channels",
            value=False,
            tooltip="The image layer holds channels along its first axis (C, [Z,] Y, X)",
        )
        self.channel = ComboBox(label="channel", choices=self.channel_choices)
        self.normalization = ComboBox(
            label="normalize",
            choices=NORMALIZATION_CHOICES,
            value="trained",
            tooltip="as trained: the per-image percentiles the model was trained with (recorded "
            "in its checkpoint); displayed contrast: the image layer's contrast limits",
        )
        self.labels = ComboBox(label="labels", choices=self.labels_choices)
        self.label_id = SpinBox(label="label ID", value=1, min=1, max=2**31 - 1)
        self.overwrite = CheckBox(text="overwrite other labels", value=False)
        self.threshold = FloatSlider(
            label="threshold", value=DEFAULT_THRESHOLD, min=0.01, max=0.99, step=0.01
        )
        self.zoom_in = CheckBox(text="zoom-in", value=True)
        self.flip = CheckBox(text="flip augmentation", value=True)
        self.precision = ComboBox(
            label="precision",
            choices=PRECISION_CHOICES,
            value="auto",
            tooltip="auto: bfloat16 on CPUs with native bf16 where it measures faster, "
            "float16 on GPUs, else float32. float32: exact RITM outputs",
        )
        self.preset = ComboBox(
            label="preset",
            choices=PRESET_CHOICES,
            value="interactive",
            tooltip="interactive: the first click already zooms in around the object (fast); "
            "evaluation: the reference protocol (first click on the whole image)",
        )
        self.click_mode = CheckBox(
            text="click mode",
            value=True,
            tooltip="left click: positive, right or Ctrl+left click: negative, Shift+left: "
            "refine the label under the cursor (active layer in pan/zoom mode)",
        )
        self.finish_button = PushButton(text="Finish object [N]")
        self.undo_button = PushButton(text="Undo click [U]")
        self.redo_button = PushButton(text="Redo click [Shift+U]")
        self.reset_button = PushButton(text="Reset clicks")
        self.refine_button = PushButton(text="Refine selected label")
        self.propagate_button = PushButton(text="Propagate to next slice [Shift+N]")
        self.runtime = wrapping_label()
        self.status = wrapping_label("ready")  # a long message wraps; it never widens the dock
        self.extend(
            [
                self.model,
                self.model_use,
                self.model_file,
                self.device,
                self.load_button,
                self.image,
                self.channels_first,
                self.channel,
                self.normalization,
                self.labels,
                self.label_id,
                self.overwrite,
                self.threshold,
                self.zoom_in,
                self.flip,
                self.precision,
                self.preset,
                self.click_mode,
                self.finish_button,
                self.undo_button,
                self.redo_button,
                self.reset_button,
                self.refine_button,
                self.propagate_button,
                self.runtime,
                self.status,
            ]
        )
        self._keep_focus_out()
        self.model_file.changed.connect(self._on_model_file)
        self.model.changed.connect(self._on_model)

    def _keep_focus_out(self) -> None:
        for widget in self:
            if isinstance(widget, (PushButton, CheckBox, ComboBox, FloatSlider)):
                for native in [widget.native, *widget.native.findChildren(QWidget)]:
                    if hasattr(native, "setFocusPolicy"):
                        native.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        # the ID box takes focus only when clicked: digits typed over the canvas stay there
        for native in [self.label_id.native, *self.label_id.native.findChildren(QWidget)]:
            if hasattr(native, "setFocusPolicy"):
                native.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

    # -- choices ---------------------------------------------------------------------------------

    def image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        """Image layers of the viewer."""
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels | None]]:
        """Labels layers that can receive objects (never the widget's own preview)."""
        out: list[tuple[str, Labels | None]] = [(NEW_LABELS, None)]
        out += [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and not is_ritm_layer(layer)
        ]
        return out

    def channel_choices(self, _widget: Any = None) -> list[tuple[str, int | None]]:
        """ "composite" plus one entry per channel when the first axis holds channels."""
        layer = self.image.value if hasattr(self, "image") else None
        choices: list[tuple[str, int | None]] = [("composite (channel mean)", None)]
        if layer is not None and self.channels_first.value and layer.ndim >= 3:
            choices += [(f"channel {c}", c) for c in range(layer.data.shape[0])]
        return choices

    def refresh_layer_choices(self) -> None:
        """Refresh the pickers after layers were added, removed or reordered."""
        before = self.image.value
        self.image.reset_choices()
        if before is None and self.image.choices:
            # first image opened: take the active layer if it is an image, else the newest one
            active = self.viewer.layers.selection.active
            images = [layer for _, layer in self.image_choices()]
            self.image.value = active if active in images else images[-1]
        self.labels.reset_choices()
        self.channel.reset_choices()

    # -- values ----------------------------------------------------------------------------------

    @property
    def channel_axis(self) -> int | None:
        """Data axis of the image layer holding channels (0 when ticked), else None."""
        layer = self.image.value
        if self.channels_first.value and layer is not None and not layer.rgb and layer.ndim >= 3:
            return 0
        return None

    def model_options(self) -> dict[str, Any]:
        """The Request fields that choose the model and how the session runs it."""
        return {
            "model": str(self.model.value) if self.model.value is not None else "",
            "device": self.device.value,
            "zoom_in": bool(self.zoom_in.value),
            "flip": bool(self.flip.value),
            "precision": str(self.precision.value),
            "preset": str(self.preset.value),
        }

    def _on_model(self, value: Any = None) -> None:
        self.model_use.value = model_use(None if value is None else str(value))

    def _on_model_file(self, _value: Any = None) -> None:
        path = str(self.model_file.value)
        if not path or path in (".", ""):
            return
        if path not in list(self.model.choices):
            self.model.set_choice(f"file: {path}", path)
        self.model.value = path

    # -- messages --------------------------------------------------------------------------------

    def set_status(self, message: str) -> None:
        """Show a short status line (cut to STATUS_CHARS; wrapped, never widening the dock)."""
        if len(message) > STATUS_CHARS:
            message = message[: STATUS_CHARS - 1].rstrip() + "…"
        self.status.value = message

    def warn(self, message: str) -> None:
        """A problem the user must see: short in the status line, whole in a notification."""
        self.set_status(message.splitlines()[0] if message else message)
        show_warning(message)
