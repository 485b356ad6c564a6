"""FinetuneWidget: the "Fine-tune" dock widget (train a RITM model on painted Labels layers).

Pick Image + Labels layer pairs (or a data folder), where to start from, a time budget (5 / 15 /
60 minutes or custom; or epochs x steps) and a name, then Start. The layer data is copied when
the run starts (and saved in the run folder, so the run can be resumed after napari was closed),
so painting during training does not change the training set.
:func:`napari_ritm_training.run_finetune` runs in a
:class:`~napari_ritm.napari.training_job.TrainingJob` (a napari thread worker) with a napari
progress bar; the :class:`~napari_ritm.napari.finetune_report.ReportPanel` shows the split, the
scores before -> now and the curves. At the end the best model is registered under the name and
selected in the RITM dock ("Revert to previous model" undoes that). Stop, or closing the dock,
keeps the best model so far and saves a resumable state.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
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
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import notification_manager, show_error, show_info, show_warning

from napari_ritm.errors import RitmError
from napari_ritm.napari.finetune_report import ReportPanel
from napari_ritm.napari.qt_parts import wrapping_label
from napari_ritm.napari.training_job import (
    DockLifecycle,
    LayerWatch,
    TrainingJob,
    ask_stop,
    is_training_labels,
    short_message,
    snapshot_pairs,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

logger = logging.getLogger(__name__)

__all__ = ["BUDGETS", "SCRATCH", "FinetuneWidget"]

SCRATCH = "scratch (random init)"
#: (label, value) of the length choices: seconds, "custom" (a duration typed in) or "epochs".
BUDGETS = [
    ("5 min", "300"),
    ("15 min", "900"),
    ("60 min", "3600"),
    ("custom", "custom"),
    ("epochs x steps", "epochs"),
]
#: Held-back objects validated before and after each epoch (each costs up to 10 clicks).
VAL_OBJECTS = 12
#: The Image/Labels data a run trained on, saved in its folder so it can be resumed.
LAYERS_FILE = "layers.npz"
STOP_QUESTION = (
    "A fine-tuning run is in progress. Stop it? It saves last.pth and a resumable state "
    "(resume.pth) in its output folder after the current step."
)


def runs_dir() -> Path:
    """Where the dock's runs go by default: ~/napari-ritm-runs."""
    return Path.home() / "napari-ritm-runs"


def _default_out_dir() -> Path:
    """A new run folder under :func:`runs_dir` (runs need an empty one)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base = runs_dir() / f"finetune-{stamp}"
    for n in range(2, 1000):
        if not path.exists():
            break
        path = base.with_name(f"{base.name}-{n}")
    return path


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

    Lifecycle: the widget follows the layer list to keep its layer choices current. Closing it,
    or removing it from its dock, asks ``confirm`` first while training runs; the viewer window
    closing stops the run without asking (see
    :class:`~napari_ritm.napari.training_job.DockLifecycle`). Each way disconnects every event.

    Args:
        viewer: the napari viewer.
        confirm: ``confirm(question) -> True`` to stop a running training; default
            :func:`ask_stop` (a QMessageBox). Tests pass a stub.

    Attributes:
        pairs: the (image layer name, labels layer name) pairs to train on.
        checkpoint: path of the last finished run's checkpoint (None before).
        job: the running :class:`~napari_ritm.napari.training_job.TrainingJob` (None when idle).
        torn_down: the widget was closed or removed and no longer listens to the viewer.
        report: the :class:`~napari_ritm.napari.finetune_report.ReportPanel` of the run.
        previous_model: the RITM dock's model before the fine-tuned one was selected.
        resumable: a stopped run under :func:`runs_dir` that "Resume" continues (or None).
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, *, confirm: Callable[[str], bool] | None = None
    ) -> None:
        super().__init__(labels=True)
        from napari_ritm.weights import DEFAULT_MODEL

        self.viewer = viewer
        self.confirm = confirm or ask_stop
        self.pairs: list[tuple[str, str]] = []
        self.checkpoint: Path | None = None
        self.job: TrainingJob | None = None
        self.torn_down = False

        # not "image"/"labels": Container.labels is a property of magicgui. Callable choices:
        # napari's reset_choices (called when docking) recomputes them instead of emptying them
        self.image_layer = ComboBox(label="image", choices=lambda _: self._layer_choices(Image))
        self.labels_layer = ComboBox(label="labels", choices=lambda _: self._layer_choices(Labels))
        self.add_pair = PushButton(text="Add pair")
        self.clear_pairs = PushButton(text="Clear pairs")
        self.pair_list = Label(value="pairs: (the image/labels above)")
        self.folder = FileEdit(label="or data folder", mode="d", value="")
        self._auto_out = str(_default_out_dir())
        self.out = FileEdit(label="output folder", mode="d", value=self._auto_out)
        starts = _start_choices()
        self.start_from = ComboBox(
            label="start from",
            choices=starts,
            value=DEFAULT_MODEL if DEFAULT_MODEL in starts else SCRATCH,
        )
        self.start_file = FileEdit(label="or checkpoint", mode="r", filter="*.pth *.pt", value="")
        self.budget = ComboBox(label="time budget", choices=BUDGETS, value="900")
        self.budget_custom = LineEdit(label="custom budget", value="10m")
        self.budget_custom.tooltip = "e.g. 90s, 10m, 1h30m (with 'custom')"
        self.epochs = SpinBox(label="epochs", value=5, min=1, max=10_000)
        self.iters = SpinBox(label="steps per epoch", value=100, min=1, max=1_000_000)
        # min 2: BatchNorm after the OCR head's pooling cannot train on a batch of one
        self.batch_size = SpinBox(label="batch size", value=8, min=2, max=512)
        self.crop = SpinBox(label="crop size", value=192, min=32, max=2048, step=16)
        self.synthetic = FloatSpinBox(
            label="synthetic fraction", value=0.0, min=0.0, max=1.0, step=0.1
        )
        self.val_fraction = FloatSpinBox(
            label="held back", value=0.2, min=0.0, max=0.9, step=0.05,
            tooltip="share of the images (or, for one stack, of its slices) held back to "
            "measure the model before and after; never part of one slice",
        )  # fmt: skip
        self.keep_general = FloatSpinBox(
            label="keep general", value=0.0, min=0.0, max=0.9, step=0.1,
            tooltip="share of training crops from synthetic cells, so the model keeps working "
            "on other data; the forgetting is shown beside the gain",
        )  # fmt: skip
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M")
        self.register_name = LineEdit(label="name", value=f"finetuned-{stamp}")
        self.register_name.tooltip = "the trained model is registered under this name"
        self.freeze = CheckBox(text="freeze backbone", value=False)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.start = PushButton(text="Start")
        self.stop = PushButton(text="Stop", enabled=False)
        self.resume = PushButton(text="Resume", visible=False)
        self.revert = PushButton(text="Revert to previous model", enabled=False)
        self.status = wrapping_label("idle")
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.report = ReportPanel()
        self.extend([
            self.image_layer, self.labels_layer, self.add_pair, self.clear_pairs, self.pair_list,
            self.folder, self.out, self.start_from, self.start_file, self.budget,
            self.budget_custom, self.epochs, self.iters, self.batch_size, self.crop,
            self.synthetic, self.keep_general, self.val_fraction, self.freeze, self.device,
            self.register_name, self.start, self.stop, self.resume, self.revert, self.progress,
            self.status,
            self.report,
        ])  # fmt: skip
        self.previous_model: str | None = None
        self.resumable: Path | None = None
        self._wanted_name: str | None = None
        self.budget.changed.connect(self._on_budget)
        self._on_budget()
        self.resume.changed.connect(self._on_resume)
        self.revert.changed.connect(self.revert_model)
        self.offer_resume()

        self.add_pair.changed.connect(self._on_add_pair)
        self.clear_pairs.changed.connect(self._on_clear_pairs)
        self.start.changed.connect(self._on_start)
        self.stop.changed.connect(self._on_stop)
        self._layers = LayerWatch(viewer, self._refresh_layers)
        self._lifecycle = DockLifecycle(
            self.native,
            busy=lambda: self.job is not None and self.job.running,
            confirm=lambda: self.confirm(STOP_QUESTION),
            teardown=self._teardown,
        )

    # -- layers --------------------------------------------------------------------------------
    def _layer_choices(self, kind: type) -> list[str]:
        if kind is Labels:
            return [layer.name for layer in self.viewer.layers if is_training_labels(layer)]
        return [layer.name for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layers(self) -> None:
        self.image_layer.reset_choices()  # keeps the selection while it is still a choice
        self.labels_layer.reset_choices()

    def _on_add_pair(self) -> None:
        if not self.image_layer.value or not self.labels_layer.value:
            show_warning("pick an Image and a Labels layer first")
            return
        pair = (self.image_layer.value, self.labels_layer.value)
        if pair not in self.pairs:
            self.pairs.append(pair)
        self.pair_list.value = "pairs: " + "; ".join(f"{i} + {lab}" for i, lab in self.pairs)

    def _on_clear_pairs(self) -> None:
        self.pairs = []
        self.pair_list.value = "pairs: (the image/labels above)"

    # -- run -----------------------------------------------------------------------------------
    def _on_budget(self, _value: Any = None) -> None:
        by_epochs = self.budget.value == "epochs"
        self.budget_custom.visible = self.budget.value == "custom"
        self.epochs.visible = self.iters.visible = by_epochs

    def time_budget_s(self) -> float | None:
        """The chosen time budget in seconds; None for "epochs x steps".

        Raises:
            RitmError: the custom budget is not a duration.
        """
        from napari_ritm_training.budget import parse_duration

        if self.budget.value == "epochs":
            return None
        if self.budget.value == "custom":
            return parse_duration(str(self.budget_custom.value))
        return float(self.budget.value)

    def make_config(self) -> Any:
        """The :class:`~napari_ritm_training.TrainConfig` for the current settings.

        ``threads`` is this process's current torch thread count, so the trainer does not change
        the count for the whole process (the viewer's own inference uses it too).
        """
        import torch
        from napari_ritm_training import TrainConfig

        folder = str(self.folder.value) if str(self.folder.value) not in ("", ".") else None
        start_file = str(self.start_file.value)
        if start_file not in ("", "."):
            start = start_file
        else:
            start = None if self.start_from.value == SCRATCH else self.start_from.value
        name = str(self.register_name.value).strip()
        return TrainConfig(
            data=[folder] if folder else [],
            out=str(self.out.value),
            from_weights=start,
            epochs=int(self.epochs.value),
            iters_per_epoch=int(self.iters.value),
            time_budget_s=self.time_budget_s(),
            batch_size=int(self.batch_size.value),
            crop=(int(self.crop.value), int(self.crop.value)),
            synthetic_fraction=float(self.synthetic.value),
            keep_general=float(self.keep_general.value),
            val_fraction=float(self.val_fraction.value),
            val_max_objects=VAL_OBJECTS,
            val_flip=False,  # before/after on the same footing at half the cost: more budget trains
            freeze_backbone=bool(self.freeze.value),
            device=str(self.device.value),
            threads=torch.get_num_threads(),
            register=name or None,
        )

    def _on_start(self) -> None:
        if self.job is not None:
            show_warning("a training run is already going; stop it first")
            return
        try:
            config = self.make_config()
            pairs = self.pairs or [(self.image_layer.value, self.labels_layer.value)]
            images, labels, names = snapshot_pairs(self.viewer, [p for p in pairs if all(p)])
            if not images and not config.data and config.synthetic_fraction < 1.0:
                raise RitmError(
                    "nothing to train on: pick an Image and a Labels layer (Add pair for more), "
                    "or a data folder"
                )
            from napari_ritm_training.data import object_diameter_range

            if config.scale_mode == "object" and labels:
                # the user's objects at about their own size (not the nuclei default range)
                config.diameter_range = object_diameter_range(labels) or config.diameter_range
            config.validate(has_arrays=bool(images))
        except RitmError as exc:
            self._report_error(exc)
            return
        self._launch(config, images, labels, names, save_layers=True)

    def offer_resume(self) -> Path | None:
        """Show "Resume" when a run under :func:`runs_dir` was stopped before its end."""
        from napari_ritm_training.checkpointing import find_resumable

        self.resumable = find_resumable(runs_dir())
        self.resume.visible = self.resumable is not None
        if self.resumable is not None:
            self.resume.text = f"Resume {self.resumable.name}"
        return self.resumable

    def _on_resume(self) -> None:
        if self.job is not None or self.resumable is None:
            return
        import torch
        from napari_ritm_training import TrainConfig

        run_dir = self.resumable
        images: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        names: list[str] = []
        if (run_dir / LAYERS_FILE).is_file():
            with np.load(run_dir / LAYERS_FILE) as saved:
                names = [str(n) for n in saved["names"]]
                images = [saved[f"image{i}"] for i in range(len(names))]
                labels = [saved[f"labels{i}"] for i in range(len(names))]
        config = TrainConfig(
            out=str(run_dir),
            resume=True,
            epochs=0,
            device=str(self.device.value),
            threads=torch.get_num_threads(),
        )
        self.resume.visible = False
        self._launch(config, images, labels, names, save_layers=False)

    def _launch(
        self,
        config: Any,
        images: list[np.ndarray],
        labels: list[np.ndarray],
        names: list[str],
        *,
        save_layers: bool,
    ) -> None:
        """Run ``config`` in a :class:`TrainingJob` on the copied layers."""

        def train(
            progress: Callable[[int, int, str], None], should_stop: Callable[[], bool]
        ) -> Path:
            from napari_ritm_training import from_arrays, run_finetune

            if save_layers and images:  # closing napari mid-run loses nothing: resume reads it
                out = Path(config.out)
                out.mkdir(parents=True, exist_ok=True)
                arrays = {f"image{i}": a for i, a in enumerate(images)}
                arrays |= {f"labels{i}": a for i, a in enumerate(labels)}
                np.savez_compressed(out / LAYERS_FILE, names=np.array(names), **arrays)
            datasets = [from_arrays(images, labels, names)] if images else []
            return run_finetune(
                config, progress, should_stop, datasets=datasets, on_report=job.report
            )

        planned_later = config.time_budget_s or config.resume  # the trainer sends the total
        job = TrainingJob(
            train,
            total=1 if planned_later else config.epochs * config.iters_per_epoch,
            description="loading data...",
            on_progress=self._on_progress,
            on_finished=self._on_finished,
            on_report=self._on_report,
        )
        self.job = job
        self._wanted_name = getattr(config, "register", None)
        self.report.clear()
        self.start.enabled, self.stop.enabled = False, True
        self.progress.visible = True
        job.start()

    def _on_report(self, report: Any) -> None:
        if not self.torn_down:
            self.report.show_report(report)

    def _on_stop(self) -> None:
        if self.job is not None:
            self.job.request_stop()
            self._set_status("stopping after this step (the best model so far is kept)...")

    def _on_finished(self, job: TrainingJob) -> None:
        if self.job is job:
            self.job = None
        if job.error is not None:
            self._report_error(job.error)
        elif job.result is not None:
            self.checkpoint = Path(job.result)
            how = "stopped (resume.pth saved)" if job.stop_requested else "finished"
            logger.info("fine-tuning %s: %s", how, self.checkpoint)
            last = self.report.last_report
            name = last.registered if last is not None and last.stage == "end" else None
            selected = name is not None and not self.torn_down and self.select_model(name)
            if name:
                where = f"registered as '{name}'"
                where += ", selected in the RITM dock" if selected else ""
                message = f"The model is registered as '{name}'."
            elif self._wanted_name:  # the trainer refused: no validated gain over the start
                where = f"no gain over the starting model, '{self._wanted_name}' not registered"
                message = (
                    "The held-back scores did not improve on the starting model, so it was not "
                    f"registered (checkpoint: {self.checkpoint})."
                )
            else:
                where = str(self.checkpoint)
                message = (
                    f"Checkpoint: {self.checkpoint} - load it in the RITM widget with "
                    "'or checkpoint'."
                )
            self._set_status(f"done, {how}: {where}")
            show_info(f"Fine-tuning {how}. {message}")
        if not self.torn_down:
            self.start.enabled, self.stop.enabled = True, False
            if str(self.out.value) == self._auto_out:  # the next run needs an empty folder
                self._auto_out = str(_default_out_dir())
                self.out.value = self._auto_out

    # -- the RITM dock's model -----------------------------------------------------------------
    def select_model(self, name: str) -> bool:
        """Select the registered model ``name`` in the docked RITM widget (if there is one).

        Returns:
            True when a RITM dock was found and now uses ``name``.
        """
        from napari_ritm.napari.controls import model_choices
        from napari_ritm.napari.widget import widget_for

        ritm = widget_for(self.viewer)
        if ritm is None:
            return False
        if ritm.model.value != name:
            self.previous_model = ritm.model.value
        label = next((lab for lab, value in model_choices() if value == name), name)
        if name not in list(ritm.model.choices):
            ritm.model.set_choice(label, name)
        ritm.model.value = name
        ritm.load_model()
        self.revert.enabled = self.previous_model is not None
        return True

    def revert_model(self, _value: Any = None) -> bool:
        """Select the model the RITM dock used before the last fine-tuned one."""
        from napari_ritm.napari.widget import widget_for

        ritm = widget_for(self.viewer)
        if ritm is None or self.previous_model is None:
            return False
        ritm.model.value = self.previous_model
        ritm.load_model()
        self.previous_model = None
        self.revert.enabled = False
        return True

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self.torn_down:
            return
        self.progress.max = max(1, int(total))
        self.progress.value = min(int(done), self.progress.max)
        self._set_status(message)

    def _set_status(self, text: str) -> None:
        if not self.torn_down:  # after teardown the Qt label may already be deleted
            self.status.value = text

    def _report_error(self, exc: Exception) -> None:
        """Short message in the status label; the whole message (or traceback) as notification."""
        self._set_status(f"error: {short_message(exc)}")
        if isinstance(exc, RitmError):
            show_error(str(exc))
        else:  # a bug: the notification carries the traceback
            logger.error("fine-tuning failed", exc_info=exc)
            notification_manager.receive_error(type(exc), exc, exc.__traceback__)

    # -- teardown ------------------------------------------------------------------------------
    def _teardown(self, stop: bool) -> None:
        """Stop the run (if ``stop``) and disconnect every event; idempotent.

        Also called while Python collects the widget, when its attributes may be gone already
        (a running job keeps the widget alive, so then there is no run to stop).
        """
        state = vars(self)
        job = state.get("job")
        if stop and job is not None:
            job.request_stop()
        if state.get("torn_down", True) or "_layers" not in state:
            return
        self.torn_down = True
        self._layers.disconnect()
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "reordered", "renamed"):
            # napari connects these to a docked magicgui widget and never disconnects them
            getattr(events, name).disconnect(self.reset_choices)
        if job is not None and job.running and not stop:
            show_info("Fine-tuning continues in the background; a notification says when it ends.")
