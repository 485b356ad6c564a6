"""The dock under fast real use: snapshot commits, identity by generation, normalization as
trained, label IDs, per-slice stacks, lifecycle, and real key and mouse events on the canvas.

The model is the seeded random-weight ``tiny_model``; expected masks are always recomputed with a
ClickSession on the same clicks (never fixed numbers).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
from fake_engine import FakeEngine
from qtpy.QtCore import QPoint, Qt

from napari_ritm.inference.clicks import Click
from napari_ritm.inference.session import ClickSession
from napari_ritm.napari.engine import PredictionEngine

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


@pytest.fixture
def image2d() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.normal(40, 5, (96, 96))
    yy, xx = np.mgrid[:96, :96]
    for r, c in ((30, 30), (65, 60), (25, 75)):
        image[(yy - r) ** 2 + (xx - c) ** 2 < 12**2] += 120
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def make_widget(make_napari_viewer, tiny_model, qtbot):
    from napari_ritm.napari.widget import RitmWidget

    def make(image: np.ndarray, model=None, delay: float = 0.0, engine=None, **add_kwargs):
        viewer = make_napari_viewer()
        layer = viewer.add_image(image, **add_kwargs)
        used = model if model is not None else tiny_model
        engine = engine or PredictionEngine(loader=lambda name, device, progress: used)
        if delay:  # a slow model: a second action arrives while a prediction runs
            run = engine.run
            engine.run = lambda request: (time.sleep(delay), run(request))[1]
        widget = RitmWidget(viewer, engine=engine)
        viewer.window.add_dock_widget(widget)
        widget.precision.value = "float32"
        widget.device.value = "cpu"
        qtbot.waitUntil(widget.wait_idle, timeout=WAIT_MS)
        return viewer, layer, widget

    return make


def session_probs(model, image, clicks, **kwargs) -> np.ndarray:
    session = ClickSession(model, device="cpu", precision="float32")
    prior = kwargs.pop("prior_mask", None)
    session.set_image(image, prior_mask=prior, **kwargs)
    return np.array(session.set_clicks(clicks))


def idle(qtbot, widget) -> None:
    qtbot.waitUntil(widget.wait_idle, timeout=WAIT_MS)


def test_uint16_default_normalization_equals_session_as_trained(make_widget, tiny_model, qtbot):
    """napari's default contrast limits do not matter: the model's recorded percentiles do."""
    model = copy.deepcopy(tiny_model)
    model.metadata = {"normalization": {"percentiles": [0.5, 99.5]}}
    rng = np.random.default_rng(0)
    image = (rng.gamma(2.0, 3000.0, (80, 90))).astype(np.uint16)
    image[20:50, 30:60] += 20000
    _viewer, layer, widget = make_widget(image, model=model)
    assert tuple(layer.contrast_limits) != (0.0, 65535.0) or True  # napari's own default
    widget.add_point((35.0, 45.0))
    widget.add_point((10.0, 10.0), positive=False)
    idle(qtbot, widget)
    clicks = [Click(35, 45, True), Click(10, 10, False)]
    expected = session_probs(model, image, clicks)
    np.testing.assert_allclose(widget.probs, expected, atol=1e-5)
    assert widget.engine.session.normalization.low == pytest.approx(np.percentile(image, 0.5))
    # the displayed-contrast option gives other numbers (the option is not a no-op)
    widget.normalization.value = "contrast"
    idle(qtbot, widget)
    contrast = session_probs(
        model, image, clicks, contrast_limits=tuple(float(v) for v in layer.contrast_limits)
    )
    np.testing.assert_allclose(widget.probs, contrast, atol=1e-5)
    assert widget.threshold.value == pytest.approx(ClickSession(model).threshold)


def test_finish_then_click_at_once_commits_only_its_own_clicks(
    make_widget, tiny_model, image2d, qtbot
):
    """Press N while the prediction runs, click the next object: two objects, two IDs."""
    viewer, _layer, widget = make_widget(image2d, delay=0.4)
    widget.threshold.value = 0.3
    widget.add_point((30.0, 30.0))
    assert not widget.wait_idle()  # still predicting
    assert widget.finish_object() is None  # the snapshot waits for its prediction
    widget.add_point((65.0, 60.0))  # the next object, at once
    assert widget.current_clicks() == [Click(65, 60, True)]
    idle(qtbot, widget)
    labels = widget.labels.value
    first = session_probs(tiny_model, image2d, [Click(30, 30, True)]) > 0.3
    np.testing.assert_array_equal(labels.data == 1, first)
    assert widget.label_id.value == 2
    widget.finish_object()
    idle(qtbot, widget)
    second = session_probs(tiny_model, image2d, [Click(65, 60, True)]) > 0.3
    np.testing.assert_array_equal(labels.data == 2, second & ~first)
    assert len(labels._undo_history) == int(first.any()) + int((second & ~first).any())
    assert viewer.layers["RITM preview"].data.sum() == 0


def test_snapshot_dropped_when_labels_data_replaced(make_widget, image2d, qtbot, warnings_seen):
    viewer, _layer, widget = make_widget(image2d, delay=0.4)
    labels = viewer.add_labels(np.zeros(image2d.shape, dtype=np.uint16), name="cells")
    widget.labels.value = labels
    widget.add_point((30.0, 30.0))
    widget.finish_object()
    labels.data = np.full(image2d.shape, 5, dtype=np.uint16)  # replaced before the result
    idle(qtbot, widget)
    assert (labels.data == 5).all()
    assert any("replaced or removed" in w for w in warnings_seen)
    assert widget.label_id.value == 6  # the next free ID of the new data


def test_replacing_image_data_predicts_on_the_new_pixels(make_widget, tiny_model, image2d, qtbot):
    _viewer, layer, widget = make_widget(image2d)
    widget.add_point((30.0, 30.0))
    idle(qtbot, widget)
    new = np.ascontiguousarray(image2d[::-1, ::-1])
    layer.data = new  # same shape, same layer object: only the generation tells them apart
    idle(qtbot, widget)
    np.testing.assert_allclose(
        widget.probs, session_probs(tiny_model, new, [Click(30, 30, True)]), atol=1e-5
    )


def test_user_chosen_existing_id_is_refused(make_widget, image2d, qtbot, warnings_seen):
    viewer, _layer, widget = make_widget(image2d)
    data = np.zeros(image2d.shape, dtype=np.uint16)
    data[60:70, 55:65] = 3
    data[0:5, 0:5] = 8
    labels = viewer.add_labels(data.copy(), name="cells")
    widget.labels.value = labels
    assert widget.label_id.value == 9  # next free
    widget.label_id.value = 3
    widget.threshold.value = 0.3
    widget.add_point((30.0, 30.0))
    idle(qtbot, widget)
    assert widget.finish_object() is None
    assert "already exists" in warnings_seen[-1]
    np.testing.assert_array_equal(labels.data, data)
    widget.label_id.value = 5  # unused: allowed
    assert widget.finish_object() == 5


def test_painting_with_the_shown_id_never_merges_the_next_object(make_widget, image2d, qtbot):
    """Found by the property test: the user paints with the ID the dock shows (1), then
    finishes a clicked object, which must get a new ID, not merge into the painted one."""
    viewer, _layer, widget = make_widget(image2d)
    labels = viewer.add_labels(np.zeros(image2d.shape, dtype=np.uint16), name="cells")
    widget.labels.value = labels
    widget.threshold.value = 0.3
    widget.add_point((30.0, 30.0))
    assert widget.label_id.value == 1
    labels.brush_size = 5
    labels.paint((80, 80), 1)  # what a brush stroke with label 1 does
    painted = labels.data == 1
    assert painted.any() and widget.label_id.value == 2  # the dock shows a free ID at once
    idle(qtbot, widget)
    widget.label_id.value = 1  # stale: as if the box had not followed (the property test's race)
    widget.editor._auto_id = 1
    assert widget.finish_object() == 2
    np.testing.assert_array_equal(labels.data == 1, painted)  # the painted object is untouched
    assert (labels.data == 2).any()


def test_next_id_follows_napari_undo(make_widget, image2d, qtbot):
    _viewer, _layer, widget = make_widget(image2d)
    widget.threshold.value = 0.3
    for point in ((30.0, 30.0), (25.0, 75.0)):
        widget.add_point(point)
        idle(qtbot, widget)
        widget.finish_object()
    labels = widget.labels.value
    written = sorted(set(np.unique(labels.data)) - {0})
    assert widget.label_id.value == max(written) + 1
    labels.undo()  # napari's Ctrl+Z of the last commit
    labels.refresh()
    assert widget.label_id.value == int(labels.data.max()) + 1
    labels.redo()
    labels.refresh()
    assert widget.label_id.value == int(labels.data.max()) + 1


def test_propagate_on_per_slice_ids_never_touches_other_objects(
    make_widget, image2d, qtbot, warnings_seen
):
    """Slice 1 was numbered on its own: its "1" is another object than slice 0's "1".

    The deterministic fake model (disks around clicks, plus the prior) keeps the carried object
    away from slice 1's object, whatever random weights would predict.
    """
    stack = np.stack([image2d, image2d, image2d])
    viewer, _layer, widget = make_widget(stack, engine=FakeEngine(delay=0.0))
    data = np.zeros(stack.shape, dtype=np.uint16)
    data[0, 20:40, 20:40] = 1
    data[1, 0:10, 80:96] = 1
    labels = viewer.add_labels(data.copy(), name="per-slice")
    widget.labels.value = labels
    widget.threshold.value = 0.3
    viewer.dims.set_point(0, 0)
    assert widget.refine_label(1)
    widget.add_point((0.0, 30.0, 30.0))
    idle(qtbot, widget)
    assert widget.propagate(), warnings_seen
    idle(qtbot, widget)
    assert widget.plane().key == (1,)
    carried = int(widget.label_id.value)
    assert carried == 2  # a new ID: "1" belongs to another object on slice 1
    widget.finish_object()
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data[1, 0:10, 80:96], 1)  # untouched
    assert (labels.data[1] == 1).sum() == 10 * 16
    assert (labels.data[1] == carried).any()
    assert not labels.data[2].any()


def test_close_cancels_waiting_jobs_and_releases_after_the_running_one(make_widget, image2d, qtbot):
    viewer, _layer, widget = make_widget(image2d, delay=0.5)
    runs: list[int] = []
    run = widget.engine.run
    widget.engine.run = lambda request: runs.append(len(request.clicks)) or run(request)
    widget.add_point((30.0, 30.0))
    widget.add_point((40.0, 40.0), positive=False)  # waits behind the first
    widget.finish_object()  # a kept job, also waiting
    widget.close()
    assert widget.engine.model is not None  # not released under the running job
    from napari_ritm.napari import worker

    # the closed runner (and its thread pool) stays alive until its job has finished, and
    # quitting the app waits for that job
    assert widget.bridge.runner in worker._CLOSING
    assert worker.wait_for_closed_runners(timeout_ms=WAIT_MS)
    qtbot.waitUntil(lambda: widget.engine.model is None, timeout=WAIT_MS)
    assert widget.bridge.runner not in worker._CLOSING
    qtbot.wait(700)
    assert runs == [1]  # only the job that was already running ran
    assert widget.engine.session is None
    viewer.add_image(image2d, name="after close")  # no callback into the closed dock
    assert "n" not in {str(k).lower() for k in viewer.keymap}


def test_keys_of_other_plugins_are_kept_and_restored(make_napari_viewer, tiny_model, qtbot):
    from napari_ritm.napari.widget import RitmWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), dtype=np.uint8))

    def theirs(_viewer):
        return "theirs"

    viewer.bind_key("u", theirs)
    engine = PredictionEngine(loader=lambda name, device, progress: tiny_model)
    widget = RitmWidget(viewer, engine=engine)
    from napari.utils.key_bindings import coerce_keybinding

    assert viewer.keymap[coerce_keybinding("u")] is theirs
    assert coerce_keybinding("n") in viewer.keymap
    widget.close()
    assert viewer.keymap[coerce_keybinding("u")] is theirs
    assert coerce_keybinding("n") not in viewer.keymap


def _canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def _canvas_point(viewer, row: float, col: float) -> QPoint:
    """Canvas pixel of an image pixel (2D view, no rotation)."""
    canvas = _canvas(viewer)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9: viewer.camera is deprecated
    camera = scene.camera if scene is not None else viewer.camera
    center = np.asarray(camera.center[-2:], dtype=float)
    zoom = float(camera.zoom)
    x = canvas.width() / 2 + (col - center[1]) * zoom
    y = canvas.height() / 2 + (row - center[0]) * zoom
    return QPoint(round(x), round(y))


def test_real_keys_and_mouse_loop(make_widget, tiny_model, image2d, qtbot):
    """N -> click -> Shift+N -> Ctrl+Z with real Qt events on the canvas."""
    stack = np.stack([image2d, image2d, image2d])
    viewer, _layer, widget = make_widget(stack)
    viewer.window._qt_window.show()
    widget.threshold.value = 0.3
    widget.overwrite.value = True  # random weights: objects may overlap; keys are the point here
    viewer.dims.set_point(0, 0)
    viewer.reset_view()
    canvas = _canvas(viewer)
    qtbot.waitExposed(canvas)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=_canvas_point(viewer, 30, 30))
    clicks = widget.current_clicks()
    assert len(clicks) == 1 and clicks[0].positive
    assert abs(clicks[0].row - 30) < 1.5 and abs(clicks[0].col - 30) < 1.5
    idle(qtbot, widget)
    widget.finish_button.native.click()  # the dock's button must hand focus back
    assert viewer.window._qt_window.focusWidget() is canvas
    labels = widget.labels.value
    assert (labels.data[0] == 1).any()
    qtbot.keyClick(canvas, Qt.Key.Key_7)  # a digit over the canvas never edits the ID box
    assert widget.label_id.value == 2
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=_canvas_point(viewer, 25, 75))
    idle(qtbot, widget)
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)  # propagate
    idle(qtbot, widget)
    assert widget.plane().key == (1,)
    assert (labels.data[0] == 2).any()
    assert len(widget.current_clicks()) == 1  # the carried object's centre click
    qtbot.keyClick(canvas, Qt.Key.Key_N)  # finish the carried object on slice 1
    idle(qtbot, widget)
    assert (labels.data[1] == 2).any()
    viewer.layers.selection.active = labels
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # napari undo
    assert not (labels.data[1] == 2).any()
    assert (labels.data[0] == 2).any()


def test_status_says_predicting_only_once_a_prediction_is_slow(make_widget, image2d, qtbot):
    """The dock does not repaint with "predicting…" the moment a click is made (with software
    OpenGL each repaint takes CPU from the model); a slow prediction says so within the
    progress timer's interval, and its result replaces it."""
    _viewer, _layer, widget = make_widget(image2d, delay=0.6)
    widget.add_point((30.0, 30.0))
    assert not widget.wait_idle()
    assert widget.status.value != "predicting…"  # not at once
    qtbot.waitUntil(lambda: widget.status.value == "predicting…", timeout=500)
    idle(qtbot, widget)
    assert widget.status.value.startswith("1 click(s)")


def test_status_lines_use_the_dock_width_and_wrap_inside_it(make_widget, image2d, qtbot):
    viewer, _layer, widget = make_widget(image2d)
    viewer.window._qt_window.show()
    qtbot.waitExposed(widget.native)
    dock_width = widget.native.width()
    field = widget.model.native  # the value column, as wide as the dock allows
    widget.set_status("model napari-ritm.nuclei loaded")
    qtbot.wait(50)
    status = widget.status.native
    # as wide as the other fields (magicgui's Label alone kept its first text's ~90 px)
    assert status.width() >= 0.95 * field.width()
    one_line = status.height()
    widget.set_status("a long message " * 12)
    qtbot.wait(50)
    assert widget.native.width() == dock_width  # never widens the dock
    assert status.width() >= 0.95 * field.width()
    assert status.height() > one_line  # it wraps instead


def test_model_choice_says_what_the_model_is_for(make_widget, image2d, qtbot):
    from napari_ritm.weights import DEFAULT_MODEL, WEIGHTS
    from napari_ritm.weights.registry import NATURAL_IMAGES

    _viewer, _layer, widget = make_widget(image2d)
    assert widget.model.value == DEFAULT_MODEL
    assert widget.model_use.value == f"for: {WEIGHTS[DEFAULT_MODEL].use_for}"
    combo = widget.model.native  # the user picks another entry in the drop-down
    combo.setCurrentIndex(
        combo.findText("hrnet18s.cocolvis_itermask", Qt.MatchFlag.MatchStartsWith)
    )
    assert widget.model.value == "hrnet18s.cocolvis_itermask"
    assert widget.model_use.value == f"for: {NATURAL_IMAGES}"
    qtbot.waitUntil(widget.wait_idle, timeout=WAIT_MS)
