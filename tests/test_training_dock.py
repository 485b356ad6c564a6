"""The issue's "done when": the Fine-tune dock, in a real viewer, fine-tunes to a time budget.

Split -> evaluation before -> training -> evaluation after -> registered and selected in the
RITM dock -> revert; and closing the dock mid-run stops cleanly and offers to resume.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from napari_ritm_training.synthetic import SyntheticConfig, synthetic_cells

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def viewer_with_stack(make_napari_viewer, monkeypatch, tmp_path):
    """A viewer with a 3-slice 64x64 stack of synthetic blobs and its labels; runs in tmp."""
    monkeypatch.setenv("NAPARI_RITM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("napari_ritm.napari.finetune_widget.runs_dir", lambda: tmp_path / "runs")
    for name in ("show_info", "show_warning"):
        monkeypatch.setattr(f"napari_ritm.napari.finetune_widget.{name}", lambda *a: None)
    rng = np.random.default_rng(0)
    cfg = SyntheticConfig(shape=(64, 64), n_objects=(3, 5), radius=(7.0, 12.0))
    planes = [synthetic_cells(rng, cfg) for _ in range(3)]
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([p[0] for p in planes]), name="blobs")
    viewer.add_labels(np.stack([p[1] for p in planes]).astype(np.int32), name="blob labels")
    return viewer


def _small_validation(monkeypatch) -> None:
    """The dock's settings, with a validation cheap enough for two cores."""
    from napari_ritm.napari.finetune_widget import FinetuneWidget

    make_config = FinetuneWidget.make_config

    def small(self):
        cfg = make_config(self)
        cfg.val_max_objects, cfg.val_max_clicks, cfg.val_crop = 2, 5, 64
        cfg.val_zoom_in = cfg.val_flip = False
        cfg.min_object_area, cfg.diameter_range, cfg.max_num_next_clicks = 20, (12.0, 30.0), 1
        return cfg

    monkeypatch.setattr(FinetuneWidget, "make_config", small)


def _dock(viewer, tiny_checkpoint, monkeypatch, confirm=None):
    from napari_ritm.napari.finetune_widget import FinetuneWidget

    _small_validation(monkeypatch)
    widget = FinetuneWidget(viewer, confirm=confirm)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.start_file.value = str(tiny_checkpoint)
    widget.batch_size.value, widget.crop.value, widget.device.value = 2, 64, "cpu"
    widget.val_fraction.value = 0.34
    return widget


def _wait_finished(qtbot, widget, job, timeout: int = 300_000) -> None:
    from qtpy.QtCore import QThreadPool

    qtbot.waitUntil(lambda: job.finished and job.worker is None, timeout=timeout)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=30_000)


def test_dock_fine_tunes_to_a_budget_registers_and_selects_the_model(
    viewer_with_stack, qtbot, tmp_path, monkeypatch, tiny_checkpoint
):
    from napari_ritm.napari.widget import RitmWidget, widget_for
    from napari_ritm.weights import DEFAULT_MODEL, list_weights

    viewer = viewer_with_stack
    # four steps from random weights rarely beat the start; registering is tested here
    monkeypatch.setattr("napari_ritm_training.register.improves_on_start", lambda trainer: True)
    ritm = RitmWidget(viewer)
    viewer.window.add_dock_widget(ritm, name="RITM")
    assert widget_for(viewer) is ritm and ritm.model.value == DEFAULT_MODEL
    widget = _dock(viewer, tiny_checkpoint, monkeypatch)
    assert widget.budget.value == "900" and widget.epochs.native.isHidden()  # 15 min by default
    widget.budget.value = "custom"
    widget.budget_custom.value = "2s"  # less than the setup: the warm-up steps only
    widget.register_name.value = "blobs-v1"
    widget.out.value = str(tmp_path / "runs" / "blobs")
    assert widget.make_config().time_budget_s == 2.0
    widget._on_start()
    job = widget.job
    assert job is not None and job.running
    _wait_finished(qtbot, widget, job)
    assert job.error is None, job.error
    assert widget.checkpoint == tmp_path / "runs" / "blobs" / "best.pth"
    # objects are scaled around the size of the user's own objects, not the nuclei default
    from napari_ritm_training.data import object_diameter_range

    settings = json.loads((tmp_path / "runs" / "blobs" / "config.json").read_text())["config"]
    expected = object_diameter_range([viewer.layers["blob labels"].data])
    assert settings["diameter_range"] == pytest.approx(list(expected))

    report = widget.report.last_report
    assert report.stage == "end" and report.registered == "blobs-v1"
    # the split: by slice (one stack), one of three slices held back
    assert report.split.unit == "slice" and report.split.val_images == 1
    assert report.split.train_images == 2 and report.split.val_evaluated == 2
    assert widget.report.split_label.value.startswith("split: train 2 image(s)")
    assert "(by slice)" in widget.report.split_label.value
    # evaluated before and after: the table holds both columns for NoC and mIoU@1/3/5
    table = widget.report.table
    rows = [table.verticalHeaderItem(r).text() for r in range(table.rowCount())]
    assert rows == ["NoC@85", "NoC@90", "mIoU@1", "mIoU@3", "mIoU@5"]
    assert table.item(0, 0).text() == f"{report.before.noc85:.2f}"
    assert table.item(0, 1).text() == f"{report.now.noc85:.2f}"
    assert table.item(4, 1).text() == f"{report.now.miou[5]:.3f}"
    log_rows = json.loads((tmp_path / "runs" / "blobs" / "log.json").read_text())
    assert [r["epoch"] for r in log_rows] == [0, 1]
    assert report.before.noc85 == log_rows[0]["val_noc85"]
    assert report.now.noc85 == log_rows[1]["val_noc85"]
    plan = report.plan
    assert plan["epochs"] == 1 and plan["steps_done"] == plan["total_steps"] == report.step

    # registered, listed, and selected in the RITM dock; revert gives the previous one back
    info = next(i for i in list_weights() if i.name == "blobs-v1")
    # weights list says what it is: start, data (the image layer), before -> after
    assert info.description.startswith(f"fine-tuned from {tiny_checkpoint.stem} on ")
    assert "held-back NoC@85" in info.description and "->" in info.description
    assert ritm.model.value == "blobs-v1"
    assert widget.status.value.startswith("done, finished: registered as 'blobs-v1', selected")
    assert widget.revert.enabled and widget.previous_model == DEFAULT_MODEL
    assert widget.revert_model() is True
    assert ritm.model.value == DEFAULT_MODEL and not widget.revert.enabled
    qtbot.waitUntil(ritm.wait_idle, timeout=60_000)


def test_closing_the_dock_mid_run_stops_cleanly_and_offers_resume(
    viewer_with_stack, qtbot, tmp_path, monkeypatch, tiny_checkpoint
):
    from napari_ritm.model import load_checkpoint

    viewer = viewer_with_stack
    widget = _dock(viewer, tiny_checkpoint, monkeypatch, confirm=lambda question: True)
    assert widget.resume.native.isHidden()  # nothing to resume yet
    widget.budget.value = "3600"  # an hour: only the close ends it
    widget.register_name.value = "blobs-closed"
    out = tmp_path / "runs" / "closed"
    widget.out.value = str(out)
    widget._on_start()
    job = widget.job
    qtbot.waitUntil(lambda: widget.status.value.startswith("epoch 1/"), timeout=300_000)
    assert widget.native.close() is True
    assert widget.torn_down and job.stop_requested
    _wait_finished(qtbot, widget, job)
    assert job.error is None, job.error
    assert (out / "resume.pth").is_file() and (out / "layers.npz").is_file()
    assert job.result == out / "last.pth"  # stopped before the first epoch's validation
    steps = load_checkpoint(job.result).metadata["iteration"]
    plan = json.loads((out / "config.json").read_text())["plan"]
    assert plan["warmup_steps"] < steps < plan["total_steps"] and not plan["ended_by_budget"]
    assert not (out / "registered.json").exists()  # no validated model: nothing registered

    # next time: the dock offers to resume that run, with the layers it was trained on
    again = _dock(viewer, tiny_checkpoint, monkeypatch)
    assert not again.resume.native.isHidden() and again.resumable == out
    assert again.resume.text == "Resume closed"
    again._on_resume()
    resumed = again.job
    assert resumed is not None and again.resume.native.isHidden()
    qtbot.waitUntil(lambda: again.status.value.startswith("epoch 1/"), timeout=300_000)
    resumed.request_stop()
    _wait_finished(qtbot, again, resumed)
    assert resumed.error is None, resumed.error
    record = json.loads((out / "config.json").read_text())
    assert record["plan"]["total_steps"] == plan["total_steps"]  # the plan is kept
    assert len(record["resumed_with"]) == 1 and record["resumed_with"][0]["iteration"] == steps
    assert load_checkpoint(out / "last.pth").metadata["iteration"] > steps
