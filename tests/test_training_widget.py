"""The Fine-tune dock widget in a real viewer: defaults, a tiny run, copy-on-start, teardown."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from napari_ritm_training.synthetic import SyntheticConfig, synthetic_cells

from napari_ritm.napari.layers import PREVIEW_NAME

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_with_cells(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = synthetic_cells(
        np.random.default_rng(0), SyntheticConfig(shape=(96, 96), n_objects=(4, 8))
    )
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    return viewer


class Confirm:
    """Stands in for the QMessageBox: records each question and gives the queued answers."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.questions: list[str] = []

    def __call__(self, question: str) -> bool:
        self.questions.append(question)
        return self.answers.pop(0)


def _tiny_run(widget, out, checkpoint, iters: int) -> None:
    """Settings of a run that costs little on two cores (one pair -> no validation split)."""
    widget.out.value = str(out)
    widget.start_file.value = str(checkpoint)
    widget.budget.value = "epochs"
    widget.register_name.value = ""
    widget.epochs.value, widget.iters.value, widget.batch_size.value = 1, iters, 2
    widget.crop.value = 64
    widget.device.value = "cpu"


def _wait_finished(qtbot, widget, job, timeout: int = 120_000) -> None:
    """The worker returned, its finished signal was handled and the thread pool is idle."""
    from qtpy.QtCore import QThreadPool

    qtbot.waitUntil(lambda: job.finished and job.worker is None, timeout=timeout)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=10_000)
    assert widget.job is None


def test_defaults_are_a_real_labels_layer_and_the_shipped_model(make_napari_viewer):
    from napari_ritm.napari.finetune_widget import FinetuneWidget
    from napari_ritm.weights import DEFAULT_MODEL

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="cells")
    # the RITM widget's preview comes first, so a naive default would pick it
    viewer.add_labels(np.zeros((32, 32), np.int32), name=PREVIEW_NAME)
    viewer.add_labels(np.ones((32, 32), np.int32), name="nuclei")
    widget = FinetuneWidget(viewer)
    assert widget.labels_layer.choices == ("nuclei",)
    assert widget.labels_layer.value == "nuclei"
    assert widget.image_layer.value == "cells"
    assert widget.start_from.value == DEFAULT_MODEL == "napari-ritm.cells"
    assert widget.make_config().from_weights == DEFAULT_MODEL

    # a second preview gets napari's " [1]" suffix; it is still not offered
    viewer.add_labels(np.zeros((32, 32), np.int32), name=PREVIEW_NAME)
    assert {layer.name for layer in viewer.layers} >= {PREVIEW_NAME, f"{PREVIEW_NAME} [1]"}
    viewer.add_labels(np.zeros((32, 32), np.int32), name="membranes")
    assert set(widget.labels_layer.choices) == {"nuclei", "membranes"}
    viewer.layers["nuclei"].name = "nuclei v2"  # a rename updates the choices
    assert set(widget.labels_layer.choices) == {"nuclei v2", "membranes"}


@pytest.mark.slow
def test_widget_trains_on_layers_without_changing_torch_threads(
    viewer_with_cells, qtbot, tmp_path, monkeypatch, tiny_checkpoint
):
    import torch

    from napari_ritm.model import load_checkpoint
    from napari_ritm.napari.finetune_widget import FinetuneWidget

    shown = []
    monkeypatch.setattr("napari_ritm.napari.finetune_widget.show_info", shown.append)
    widget = FinetuneWidget(viewer_with_cells)
    assert widget.image_layer.value == "cells" and widget.labels_layer.value == "cells labels"
    widget._on_add_pair()
    assert widget.pairs == [("cells", "cells labels")]
    _tiny_run(widget, tmp_path / "run", tiny_checkpoint, iters=2)
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2  # a count the trainer's own default (cores) would not give
    torch.set_num_threads(threads)
    try:
        cfg = widget.make_config()
        assert cfg.threads == threads and cfg.crop == (64, 64) and cfg.iters_per_epoch == 2
        assert cfg.from_weights == str(tiny_checkpoint)
        widget._on_start()
        job = widget.job
        assert job is not None and job.running and not widget.start.enabled
        _wait_finished(qtbot, widget, job)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert job.error is None
    assert widget.checkpoint == job.result == tmp_path / "run" / "best.pth"
    model = load_checkpoint(widget.checkpoint)
    assert model.metadata["data"]["train"][0]["name"] == "layers"
    assert model.metadata["iteration"] == 2
    assert any(str(widget.checkpoint) in msg for msg in shown)
    assert widget.start.enabled and not widget.stop.enabled
    assert widget.status.value.startswith("done, finished")


def test_training_copies_the_layers_when_it_starts(viewer_with_cells, qtbot, tmp_path, monkeypatch):
    """Paint after Start: the trainer still gets the labels as they were at Start."""
    import napari_ritm_training.data as data_module

    from napari_ritm.errors import RitmError
    from napari_ritm.napari.finetune_widget import FinetuneWidget

    painted = threading.Event()
    received: list[np.ndarray] = []

    def from_arrays(images, labels, names=None, **kwargs):
        assert painted.wait(30), "the test did not paint"
        received.extend(np.array(x) for x in labels)
        raise RitmError("enough: the training set was recorded\nsecond line with details")

    monkeypatch.setattr(data_module, "from_arrays", from_arrays)
    errors = []
    monkeypatch.setattr("napari_ritm.napari.finetune_widget.show_error", errors.append)
    layer = viewer_with_cells.layers["cells labels"]
    original = np.array(layer.data)
    widget = FinetuneWidget(viewer_with_cells)
    _tiny_run(widget, tmp_path / "run", "", iters=2)
    widget._on_start()
    job = widget.job
    layer.data[:] = 7  # painting in place, as the brush does
    layer.refresh()
    painted.set()
    _wait_finished(qtbot, widget, job)
    assert len(received) == 1
    np.testing.assert_array_equal(received[0], original)
    assert (layer.data == 7).all()
    # the error: first line in the wrapped status label, the whole message as a notification
    assert widget.status.value == "error: enough: the training set was recorded"
    assert widget.status.native.wordWrap()
    assert errors == ["enough: the training set was recorded\nsecond line with details"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["close", "remove_dock", "remove_dock_keep", "viewer_close"])
def test_closing_mid_run_stops_training_cleanly(
    viewer_with_cells, qtbot, tmp_path, monkeypatch, tiny_checkpoint, how
):
    from napari_ritm.model import load_checkpoint
    from napari_ritm.napari.finetune_widget import FinetuneWidget
    from napari_ritm.napari.training_job import wait_for_jobs

    monkeypatch.setattr("napari_ritm.napari.finetune_widget.show_info", lambda *a: None)
    viewer = viewer_with_cells
    # close(): the first answer (No) keeps the dock and the run, the second stops it
    answers = {"close": (False, True), "remove_dock_keep": (False,)}.get(how, (True,))
    confirm = Confirm(*answers)
    widget = FinetuneWidget(viewer, confirm=confirm)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    out = tmp_path / "run"
    _tiny_run(widget, out, tiny_checkpoint, iters=1000)
    widget._on_start()
    job = widget.job
    qtbot.waitUntil(lambda: widget.status.value.startswith("epoch 1/1 step"), timeout=120_000)

    if how == "close":
        assert widget.native.close() is False  # answered No: still open and training
        assert job.running and not job.stop_requested and not widget.torn_down
        assert widget.native.close() is True
        assert len(confirm.questions) == 2
    elif how == "remove_dock":
        viewer.window.remove_dock_widget(widget.native)
        assert len(confirm.questions) == 1
    elif how == "remove_dock_keep":  # answered No: the run goes on without its dock ...
        viewer.window.remove_dock_widget(widget.native)
        assert len(confirm.questions) == 1 and widget.torn_down
        assert job.running and not job.stop_requested
        assert wait_for_jobs(timeout=60)  # ... until napari quits (the aboutToQuit hook)
    else:
        viewer.close()  # the window goes away: nothing to ask, the run just stops
        assert confirm.questions == []
    assert widget.torn_down and job.stop_requested

    _wait_finished(qtbot, widget, job)
    assert job.error is None
    assert job.result == out / "last.pth"
    assert (out / "resume.pth").is_file()
    steps = load_checkpoint(job.result).metadata["iteration"]
    assert 1 <= steps < 1000


def _callbacks_of(emitter, owners) -> int:
    """How many of ``emitter``'s callbacks are bound methods of one of ``owners``."""
    found = 0
    for callback in emitter.callbacks:
        # napari keeps bound methods as (weakref to the object, method name)
        owner = callback[0]() if isinstance(callback, tuple) else None
        found += any(owner is o for o in owners)
    return found


def test_events_are_disconnected_after_the_dock_is_removed(viewer_with_cells):
    from napari_ritm.napari.finetune_widget import FinetuneWidget

    viewer = viewer_with_cells
    events = viewer.layers.events
    emitters = [events.inserted, events.removed, events.renamed, events.reordered]
    widget = FinetuneWidget(viewer, confirm=Confirm())  # no question: nothing is running
    owners = [widget, widget._layers]
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    # ours (layer choices) + napari's reset_choices; reordered: napari's only
    assert [_callbacks_of(e, owners) for e in emitters] == [2, 2, 2, 1]
    viewer.window.remove_dock_widget(widget.native)
    assert widget.torn_down
    assert [_callbacks_of(e, owners) for e in emitters] == [0, 0, 0, 0]
    viewer.add_labels(np.zeros((96, 96), np.int32), name="painted later")
    viewer.layers["cells labels"].name = "renamed later"
    assert widget.labels_layer.choices == ("cells labels",)


def test_widget_refuses_to_start_without_data(make_napari_viewer, monkeypatch):
    from napari_ritm.napari.finetune_widget import FinetuneWidget

    errors = []
    monkeypatch.setattr("napari_ritm.napari.finetune_widget.show_error", errors.append)
    widget = FinetuneWidget(make_napari_viewer())
    widget._on_start()
    assert widget.job is None
    assert errors and "nothing to train on" in errors[0]
    assert widget.status.value.startswith("error: nothing to train on")


def test_ask_stop_is_a_yes_no_question(monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    from napari_ritm.napari.training_job import ask_stop

    asked = []

    def question(parent, title, text, buttons, default):
        asked.append((title, text, default))
        return answer

    monkeypatch.setattr(QMessageBox, "question", question)
    answer = QMessageBox.StandardButton.Yes
    assert ask_stop("Stop?") is True
    answer = QMessageBox.StandardButton.No
    assert ask_stop("Stop?") is False
    assert asked[0] == ("Fine-tune", "Stop?", QMessageBox.StandardButton.No)


def test_training_job_shows_progress_at_most_once_a_second_and_the_last_report(qtbot):
    """Progress reaches the dock throttled (each repaint costs CPU with software OpenGL): the
    start, then the newest report per interval, and the last report before the outcome."""
    import time

    from napari_ritm.napari import training_job as tj

    shown: list[tuple[int, int, str]] = []
    finished: list[object] = []

    def train(progress, should_stop):
        for i in range(1, 301):
            progress(i, 300, f"step {i}")
            time.sleep(0.005)  # ~1.5 s of reports, 200 per second
        return None

    job = tj.TrainingJob(
        train,
        total=300,
        description="starting",
        on_progress=lambda *value: shown.append(value),
        on_finished=finished.append,
    )
    job.start()
    assert shown == [(0, 300, "starting")]  # at once, before any report
    qtbot.waitUntil(lambda: finished == [job], timeout=20_000)
    assert shown[-1] == (300, 300, "step 300")  # the last report is always shown
    assert 2 <= len(shown) <= 2 + 3  # start, ~1-2 timer ticks, the end: not 300 repaints
    assert [d for d, _, _ in shown] == sorted(d for d, _, _ in shown)
