"""FinetuneWidget: the "Fine-tune" dock widget (train a RITM model on painted Labels layers).

Pick Image + Labels layer pairs (or a data folder), an output folder, where to start from and how
long to train, then Start. Training runs :func:`napari_ritm_training.trainer.run_finetune` in a
napari thread worker, so the viewer stays responsive; a napari progress bar shows the steps,
the loss and the ETA (polled from the main thread). Stop saves a resumable state and ``last.pth``.
When the run ends, the checkpoint path is logged and shown in a notification; the RITM widget
can load it through its "checkpoint" file field.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from napari_ritm.errors import RitmError

if TYPE_CHECKING:  # pragma: no cover
    import napari

logger = logging.getLogger(__name__)

__all__ = ["FinetuneWidget"]

SCRATCH = "scratch (random init)"


def _default_out_dir() -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.home() / "napari-ritm-runs" / f"finetune-{stamp}"


def _start_choices() -> list[str]:
    names = [SCRATCH]
    try:
        from napari_ritm.weights import list_weights

        names += [info.name for info in list_weights()]
    except Exception:  # pragma: no cover - a broken registry must not break the widget
        logger.exception("cannot list weights")
    return names


class FinetuneWidget(Container):
    """Dock widget that fine-tunes (or trains) a model on Image/Labels layer pairs.

    Attributes:
        pairs: the (image layer name, labels layer name) pairs to train on.
        checkpoint: path of the last finished run's checkpoint (None before).
        worker: the running napari thread worker (None when idle).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.pairs: list[tuple[str, str]] = []
        self.checkpoint: Path | None = None
        self.worker: Any = None
        self._stop = threading.Event()
        self._latest: tuple[int, int, str] | None = None
        self._pbar: Any = None

        self.image = ComboBox(label="image", choices=self._layer_choices(Image))
        self.labels = ComboBox(label="labels", choices=self._layer_choices(Labels))
        self.add_pair = PushButton(text="Add pair")
        self.clear_pairs = PushButton(text="Clear pairs")
        self.pair_list = Label(value="pairs: (the image/labels above)")
        self.folder = FileEdit(label="or data folder", mode="d", value="")
        self.out = FileEdit(label="output folder", mode="d", value=str(_default_out_dir()))
        self.start_from = ComboBox(label="start from", choices=_start_choices())
        self.start_file = FileEdit(label="or checkpoint", mode="r", filter="*.pth *.pt", value="")
        self.epochs = SpinBox(label="epochs", value=5, min=1, max=10_000)
        self.iters = SpinBox(label="steps per epoch", value=100, min=1, max=1_000_000)
        self.batch_size = SpinBox(label="batch size", value=8, min=1, max=512)
        self.crop = SpinBox(label="crop size", value=192, min=32, max=2048, step=16)
        self.synthetic = FloatSpinBox(
            label="synthetic fraction", value=0.0, min=0.0, max=1.0, step=0.1
        )
        self.val_fraction = FloatSpinBox(
            label="validation fraction", value=0.2, min=0.0, max=0.9, step=0.05
        )
        self.freeze = CheckBox(text="freeze backbone", value=False)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.start = PushButton(text="Start")
        self.stop = PushButton(text="Stop", enabled=False)
        self.status = Label(value="idle")
        self.extend([
            self.image, self.labels, self.add_pair, self.clear_pairs, self.pair_list,
            self.folder, self.out, self.start_from, self.start_file, self.epochs, self.iters,
            self.batch_size, self.crop, self.synthetic, self.val_fraction, self.freeze,
            self.device, self.start, self.stop, self.status,
        ])  # fmt: skip

        self.add_pair.changed.connect(self._on_add_pair)
        self.clear_pairs.changed.connect(self._on_clear_pairs)
        self.start.changed.connect(self._on_start)
        self.stop.changed.connect(self._on_stop)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        self._timer = QTimer()
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._poll_progress)

    # -- layers --------------------------------------------------------------------------------
    def _layer_choices(self, kind: type) -> list[str]:
        return [layer.name for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layers(self, event: Any = None) -> None:
        for combo, kind in ((self.image, Image), (self.labels, Labels)):
            current = combo.value
            combo.choices = self._layer_choices(kind)
            if current in combo.choices:
                combo.value = current

    def _on_add_pair(self) -> None:
        if not self.image.value or not self.labels.value:
            show_warning("pick an Image and a Labels layer first")
            return
        pair = (self.image.value, self.labels.value)
        if pair not in self.pairs:
            self.pairs.append(pair)
        self.pair_list.value = "pairs: " + "; ".join(f"{i} + {lab}" for i, lab in self.pairs)

    def _on_clear_pairs(self) -> None:
        self.pairs = []
        self.pair_list.value = "pairs: (the image/labels above)"

    def _collect_arrays(self) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        pairs = list(self.pairs)
        if not pairs and self.image.value and self.labels.value:
            pairs = [(self.image.value, self.labels.value)]
        images, labels, names = [], [], []
        for image_name, labels_name in pairs:
            if image_name not in self.viewer.layers or labels_name not in self.viewer.layers:
                raise RitmError(f"layer {image_name!r} or {labels_name!r} no longer exists")
            images.append(np.asarray(self.viewer.layers[image_name].data))
            labels.append(np.asarray(self.viewer.layers[labels_name].data))
            names.append(image_name)
        return images, labels, names

    # -- run -----------------------------------------------------------------------------------
    def make_config(self) -> Any:
        """The :class:`~napari_ritm_training.trainer.TrainConfig` for the current settings."""
        from napari_ritm_training.trainer import TrainConfig

        folder = str(self.folder.value) if str(self.folder.value) not in ("", ".") else None
        start_file = str(self.start_file.value)
        if start_file not in ("", "."):
            start = start_file
        else:
            start = None if self.start_from.value == SCRATCH else self.start_from.value
        return TrainConfig(
            data=[folder] if folder else [],
            out=str(self.out.value),
            from_weights=start,
            epochs=int(self.epochs.value),
            iters_per_epoch=int(self.iters.value),
            batch_size=int(self.batch_size.value),
            crop=(int(self.crop.value), int(self.crop.value)),
            synthetic_fraction=float(self.synthetic.value),
            val_fraction=float(self.val_fraction.value),
            freeze_backbone=bool(self.freeze.value),
            device=str(self.device.value),
        )

    def _on_start(self) -> None:
        if self.worker is not None:
            show_warning("a training run is already going; stop it first")
            return
        try:
            config = self.make_config()
            images, labels, names = self._collect_arrays()
            if not images and not config.data and config.synthetic_fraction < 1.0:
                raise RitmError(
                    "nothing to train on: pick an Image and a Labels layer (Add pair for more), "
                    "or a data folder"
                )
        except RitmError as exc:
            show_error(str(exc))
            return
        from napari.qt.threading import create_worker

        self._stop.clear()
        self._latest = None
        self.worker = create_worker(self._train, config, images, labels, names)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.start.enabled, self.stop.enabled = False, True
        self.status.value = "loading data..."
        from napari.utils import progress

        self._pbar = progress(total=config.epochs * config.iters_per_epoch, desc="fine-tune")
        self._timer.start()
        self.worker.start()

    def _train(
        self, config: Any, images: list[np.ndarray], labels: list[np.ndarray], names: list[str]
    ) -> Path:
        """Worker thread: arrays -> dataset -> run_finetune (no Qt calls here)."""
        from napari_ritm_training.data import from_arrays
        from napari_ritm_training.trainer import run_finetune

        datasets = [from_arrays(images, labels, names)] if images else []
        return run_finetune(
            config, progress=self._on_progress, should_stop=self._stop.is_set, datasets=datasets
        )

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self._latest = (done, total, message)  # read by the main-thread timer

    def _poll_progress(self) -> None:
        latest = self._latest
        if latest is None or self._pbar is None:
            return
        done, total, message = latest
        if self._pbar.total != total:
            self._pbar.total = total
        self._pbar.n = done
        self._pbar.set_description(message.split(" (")[0])
        self._pbar.refresh()
        self.status.value = message

    def _on_stop(self) -> None:
        self._stop.set()
        self.status.value = "stopping after this step..."

    def _on_done(self, checkpoint: Path) -> None:
        self.checkpoint = Path(checkpoint)
        stopped = (
            " (stopped; resume with napari-ritm-finetune --resume)" if self._stop.is_set() else ""
        )
        logger.info("fine-tuning finished: %s%s", checkpoint, stopped)
        self.status.value = f"done: {checkpoint}"
        show_info(
            f"Fine-tuning finished{stopped}. Checkpoint: {checkpoint} - load it in the RITM widget "
            "with 'or checkpoint'."
        )

    def _on_error(self, exc: BaseException) -> None:
        self.status.value = f"error: {exc}"
        if isinstance(exc, RitmError):
            show_error(str(exc))
        else:
            logger.error("fine-tuning failed", exc_info=exc)
            show_error(f"fine-tuning failed: {exc!r}")

    def _on_finished(self) -> None:
        self._timer.stop()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        self.start.enabled, self.stop.enabled = True, False
