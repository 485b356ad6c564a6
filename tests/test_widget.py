"""RitmWidget in a real napari viewer: clicks by mouse and by Points layers, finish, refine,
propagate, undo, wrong layers, latest click wins.

The model is a seeded random-weight checkpoint made by the tests (``tiny_model``), so every check
compares the widget with a ClickSession run on the same clicks, never with fixed numbers.
Thresholds are taken from the session's own probabilities so that masks are neither empty nor
full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import (
    mouse_move_callbacks,
    mouse_press_callbacks,
    mouse_release_callbacks,
)

from napari_ritm.inference.clicks import Click
from napari_ritm.inference.session import ClickSession
from napari_ritm.napari.engine import PredictionEngine
from napari_ritm.napari.layers import NEGATIVE_NAME, POSITIVE_NAME
from napari_ritm.napari.sample_data import load_bundled

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


@pytest.fixture(scope="module")
def image2d() -> np.ndarray:
    # a real microscopy image (phase contrast cell), cropped to keep the test fast
    return load_bundled("cell.png")[200:360, 180:340]


@pytest.fixture
def make_widget(make_napari_viewer, tiny_model, qtbot):
    from napari_ritm.napari.widget import RitmWidget

    def make(image: np.ndarray, **add_kwargs):
        viewer = make_napari_viewer()
        layer = viewer.add_image(image, **add_kwargs)
        engine = PredictionEngine(loader=lambda name, device, progress: tiny_model)
        widget = RitmWidget(viewer, engine=engine)
        viewer.window.add_dock_widget(widget)
        widget.model.set_choice("conformance", "conformance")
        widget.model.value = "conformance"
        widget.device.value = "cpu"
        assert widget.image.value is layer
        qtbot.waitUntil(widget.wait_idle, timeout=WAIT_MS)  # the background model load
        return viewer, layer, widget

    return make


def reference_probs(model, image, clicks, **kwargs) -> np.ndarray:
    prior = kwargs.pop("prior_mask", None)
    session = ClickSession(model, device="cpu")
    session.set_image(image, prior_mask=prior, **kwargs)
    return np.array(session.set_clicks(clicks))


def wait_prediction(qtbot, widget) -> np.ndarray:
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)
    assert widget.probs is not None
    return widget.probs


def pick_threshold(widget, probs: np.ndarray) -> float:
    """A UI threshold that splits ``probs`` into a non-trivial mask (random weights)."""
    t = float(np.clip(np.round(np.quantile(probs, 0.8), 2), 0.01, 0.98))
    if (probs > t).all() or not (probs > t).any():
        t = float(np.clip(np.round(np.median(probs), 2), 0.01, 0.98))
    widget.threshold.value = t
    return widget.threshold.value


@dataclass
class MouseEvent:
    """The attributes of a napari mouse event the widget reads (as napari's own tests do)."""

    type: str
    position: tuple
    pos: np.ndarray
    button: int = 1
    modifiers: list = field(default_factory=list)
    is_dragging: bool = False
    handled: bool = False
    dims_displayed: list = field(default_factory=lambda: [0, 1])
    view_direction: object = None


def mouse_click(viewer, world, button=1, modifiers=(), drag_px=0.0):
    """Press (and release) through napari's viewer mouse-callback path."""
    kwargs = dict(
        position=tuple(world),
        pos=np.array([100.0, 100.0]),
        button=button,
        modifiers=list(modifiers),
    )
    press = ReadOnlyWrapper(MouseEvent("mouse_press", **kwargs), exceptions=("handled",))
    mouse_press_callbacks(viewer, press)
    if drag_px:
        kwargs["pos"] = np.array([100.0 + drag_px, 100.0])
        kwargs["is_dragging"] = True
        move = ReadOnlyWrapper(MouseEvent("mouse_move", **kwargs), exceptions=("handled",))
        mouse_move_callbacks(viewer, move)
    release = ReadOnlyWrapper(MouseEvent("mouse_release", **kwargs), exceptions=("handled",))
    mouse_release_callbacks(viewer, release)


def test_mouse_clicks_match_session(make_widget, tiny_model, image2d, qtbot):
    viewer, _layer, widget = make_widget(image2d, scale=(0.5, 0.5))
    # world coordinates: scale 0.5 -> pixel (80, 70) is world (40, 35)
    mouse_click(viewer, (40.0, 35.0), button=1)
    mouse_click(viewer, (10.0, 60.0), button=2)  # right click: negative
    mouse_click(viewer, (60.0, 20.0), button=1, modifiers=["Control"])  # one-button mice
    mouse_click(viewer, (30.0, 30.0), button=1, drag_px=20.0)  # a pan, not a click
    probs = wait_prediction(qtbot, widget)
    clicks = [Click(80, 70, True), Click(20, 120, False), Click(120, 40, False)]
    assert widget.current_clicks() == clicks
    assert len(viewer.layers[POSITIVE_NAME].data) == 1
    assert len(viewer.layers[NEGATIVE_NAME].data) == 2
    expected = reference_probs(tiny_model, image2d, clicks)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    t = pick_threshold(widget, expected)
    np.testing.assert_array_equal(widget.mask, expected > t)
    preview = viewer.layers["RITM preview"].data
    np.testing.assert_array_equal(preview.astype(bool), expected > t)


def test_points_layers_are_the_truth(make_widget, tiny_model, image2d, qtbot):
    viewer, _layer, widget = make_widget(image2d)
    widget.add_point((50.0, 60.0), positive=True)
    widget.add_point((100.0, 100.0), positive=True)
    wait_prediction(qtbot, widget)
    pos = viewer.layers[POSITIVE_NAME]
    # move the second point with napari's own API, then delete the first one
    data = np.asarray(pos.data).copy()
    data[1] = (110.0, 90.0)
    pos.data = data
    pos.selected_data = {0}
    pos.remove_selected()
    probs = wait_prediction(qtbot, widget)
    expected = reference_probs(tiny_model, image2d, [Click(110, 90, True)])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # a point added directly to the negative layer (napari's Points "add" tool path)
    neg = widget.clicks._layer(False)
    neg.add(np.array([[20.0, 30.0]]))
    probs = wait_prediction(qtbot, widget)
    expected = reference_probs(
        tiny_model,
        image2d,
        [Click(110, 90, True), Click(20, 30, False)],
    )
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_finish_writes_id_keeps_others_and_napari_undo(make_widget, image2d, qtbot):
    viewer, _layer, widget = make_widget(image2d)
    labels_data = np.zeros(image2d.shape, dtype=np.uint16)
    labels_data[:, :40] = 9  # another object
    labels = viewer.add_labels(labels_data.copy(), name="cells")
    widget.labels.value = labels
    widget.label_id.value = 4
    widget.add_point((80.0, 60.0))
    probs = wait_prediction(qtbot, widget)
    t = pick_threshold(widget, probs)
    mask = probs > t
    assert widget.finish_object() == 4
    out = labels.data
    np.testing.assert_array_equal(out == 9, labels_data == 9)  # untouched
    np.testing.assert_array_equal(out == 4, mask & (labels_data == 0))
    assert widget.label_id.value == 10  # next free ID
    assert widget.current_clicks() == []
    assert not viewer.layers["RITM preview"].data.any()
    labels.undo()  # napari's Labels undo takes the whole commit back
    np.testing.assert_array_equal(labels.data, labels_data)
    labels.redo()
    assert (labels.data == 4).sum() == (mask & (labels_data == 0)).sum()


def test_finish_with_overwrite_and_new_layer(make_widget, image2d, qtbot):
    _viewer, _layer, widget = make_widget(image2d)
    widget.add_point((80.0, 60.0))
    probs = wait_prediction(qtbot, widget)
    t = pick_threshold(widget, probs)
    assert widget.finish_object() == 1
    created = widget.labels.value
    assert created is not None and created.data.shape == image2d.shape
    np.testing.assert_array_equal(created.data == 1, probs > t)


def test_refine_writes_back_same_id(make_widget, tiny_model, image2d, qtbot, warnings_seen):
    viewer, _layer, widget = make_widget(image2d)
    labels_data = np.zeros(image2d.shape, dtype=np.uint16)
    labels_data[40:100, 50:110] = 3
    labels_data[120:150, 10:40] = 7
    labels = viewer.add_labels(labels_data.copy(), name="cells")
    widget.labels.value = labels
    widget.label_id.value = 12
    # Shift+click on object 3 picks it for refinement
    mouse_click(viewer, (70.0, 80.0), button=1, modifiers=["Shift"])
    assert widget.label_id.value == 3
    widget.add_point((60.0, 120.0), positive=False)
    probs = wait_prediction(qtbot, widget)
    expected = reference_probs(
        tiny_model, image2d, [Click(60, 120, False)], prior_mask=labels_data == 3
    )
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    t = pick_threshold(widget, expected)
    assert widget.finish_object() == 3
    mask = expected > t
    np.testing.assert_array_equal(labels.data == 3, mask & (labels_data != 7))
    np.testing.assert_array_equal(labels.data == 7, labels_data == 7)
    # the "Refine selected label" path: layer's selected label
    labels.selected_label = 7
    widget.refine_selected()
    assert widget.label_id.value == 7
    assert 7 in {prior.label_id for prior in widget.editor.priors.values()}
    assert warnings_seen == []


def test_propagate_fills_next_slice(make_widget, tiny_model, image2d, qtbot):
    stack = np.stack([image2d, np.roll(image2d, 3, axis=1), np.roll(image2d, 6, axis=1)])
    viewer, _layer, widget = make_widget(stack)
    viewer.dims.set_point(0, 0)
    widget.add_point((0.0, 80.0, 60.0))
    probs = wait_prediction(qtbot, widget)
    t = pick_threshold(widget, probs)
    assert widget.propagate()
    labels = widget.labels.value
    first = labels.data[0] == 1
    np.testing.assert_array_equal(first, probs > t)
    assert widget.plane().key == (1,)
    clicks = widget.current_clicks()
    assert len(clicks) == 1 and clicks[0].positive
    row, col = int(clicks[0].row), int(clicks[0].col)
    assert first[row, col]  # a click inside the carried object
    probs1 = wait_prediction(qtbot, widget)
    expected = reference_probs(tiny_model, stack[1], clicks, prior_mask=first)
    np.testing.assert_allclose(probs1, expected, atol=1e-5)
    if not (expected > t).any():
        pick_threshold(widget, expected)
    assert widget.finish_object() == 1
    np.testing.assert_array_equal(labels.data[1] == 1, widget_mask_from(expected, widget))
    assert not labels.data[2].any()  # nothing leaked into other slices


def widget_mask_from(probs, widget):
    return probs > widget.threshold.value


def test_undo_redo_click(make_widget, tiny_model, image2d, qtbot):
    _viewer, _layer, widget = make_widget(image2d)
    widget.add_point((80.0, 60.0))
    widget.add_point((30.0, 30.0), positive=False)
    first = Click(80, 60, True)
    wait_prediction(qtbot, widget)
    widget.undo_click()
    assert widget.current_clicks() == [first]
    probs = wait_prediction(qtbot, widget)
    np.testing.assert_allclose(probs, reference_probs(tiny_model, image2d, [first]), atol=1e-5)
    widget.redo_click()
    assert widget.current_clicks() == [first, Click(30, 30, False)]
    wait_prediction(qtbot, widget)
    widget.reset_clicks()
    assert widget.current_clicks() == []
    assert widget.probs is None


def test_wrong_labels_layer_notifies_and_changes_nothing(
    make_widget, image2d, qtbot, warnings_seen
):
    viewer, _layer, widget = make_widget(image2d)
    wrong = viewer.add_labels(np.zeros((10, 10), dtype=np.uint8), name="wrong")
    widget.labels.value = wrong
    widget.add_point((80.0, 60.0))
    probs = wait_prediction(qtbot, widget)
    pick_threshold(widget, probs)
    assert widget.finish_object() is None
    assert warnings_seen and "shape" in warnings_seen[-1]
    assert not wrong.data.any()
    assert widget.current_clicks() == [Click(80, 60, True)]  # the object is kept


def test_3d_display_click_notifies(make_widget, image2d, warnings_seen):
    stack = np.stack([image2d, image2d])
    viewer, _layer, widget = make_widget(stack)
    viewer.dims.ndisplay = 3
    widget.handle_click((0.0, 50.0, 50.0))
    assert warnings_seen and "2D" in warnings_seen[-1]
    assert POSITIVE_NAME not in [layer.name for layer in viewer.layers]


def test_latest_click_wins(make_widget, tiny_model, image2d, qtbot):
    _viewer, _layer, widget = make_widget(image2d)
    ran = []
    run = widget.engine.run
    widget.engine.run = lambda request: ran.append(len(request.clicks)) or run(request)
    widget.add_point((80.0, 60.0))
    assert widget.runner.busy  # the first prediction is running
    widget.add_point((40.0, 100.0), positive=False)  # supersedes while it runs
    widget.add_point((120.0, 60.0))
    probs = wait_prediction(qtbot, widget)
    clicks = [Click(80, 60, True), Click(40, 100, False), Click(120, 60, True)]
    assert widget.current_clicks() == clicks
    expected = reference_probs(tiny_model, image2d, clicks)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert widget.bridge.result.request.clicks == tuple(clicks)
    assert ran == [1, 3]  # the 2-click state was superseded before it ever ran


def test_uint16_displayed_contrast_option_and_channels(make_widget, tiny_model, image2d, qtbot):
    image16 = (image2d.astype(np.uint16) * 200 + 1000).astype(np.uint16)
    two = np.stack([image16, image16[::-1]])  # (C, H, W)
    _viewer, _layer, widget = make_widget(two, contrast_limits=(5000, 40000))
    widget.normalization.value = "contrast"
    widget.channels_first.value = True
    widget.channel.value = 1
    widget.add_point((80.0, 60.0))
    probs = wait_prediction(qtbot, widget)
    expected = reference_probs(
        tiny_model,
        np.moveaxis(two, 0, -1),
        [Click(80, 60)],
        contrast_limits=(5000.0, 40000.0),
        channel=1,
    )
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_keys_do_not_clash_with_napari_defaults(make_widget, image2d):
    from napari.utils.shortcuts import _default_shortcuts

    from napari_ritm.napari.widget import KEYS

    viewer, _layer, widget = make_widget(image2d)
    defaults = {str(k).lower() for combos in _default_shortcuts.values() for k in combos}
    for key in KEYS.values():
        assert key.lower().replace("-", "+") not in defaults
    from napari.utils.key_bindings import coerce_keybinding

    widget.add_point((80.0, 60.0))
    widget.add_point((90.0, 60.0))
    viewer.keymap[coerce_keybinding(KEYS["undo"])](viewer)  # what pressing U runs
    assert widget.current_clicks() == [Click(80, 60, True)]
    viewer.keymap[coerce_keybinding(KEYS["redo"])](viewer)
    assert len(widget.current_clicks()) == 2


def test_launch_opens_sample_with_widget_docked(qtbot, monkeypatch, plain_viewer_app):
    from napari_ritm.napari import commands as _commands
    from napari_ritm.napari.launch import build_parser, open_viewer

    assert build_parser().parse_args([]).sample == "cell"
    viewer, widget = open_viewer(sample="cell", model="some-checkpoint.pth")
    qtbot.waitUntil(widget.wait_idle, timeout=WAIT_MS)  # background loads (this one fails)
    try:
        assert [layer.name for layer in viewer.layers] == ["cell (phase contrast)"]
        assert widget.image.value is viewer.layers[0]
        assert widget.model.value == "some-checkpoint.pth"
        assert _commands.get_widget(viewer) is widget  # commands act on the docked widget
        seen = []
        monkeypatch.setattr("napari_ritm.napari.controls.show_warning", seen.append)
        _commands.finish_object(viewer)
        assert seen and "nothing to finish" in seen[-1]
    finally:
        widget.close()
        viewer.close()


def test_precision_choice_runs_the_session_in_that_dtype(
    make_widget, tiny_model, image2d, qtbot, warnings_seen
):
    _viewer, _layer, widget = make_widget(image2d)
    widget.precision.value = "float32"
    widget.add_point((110.0, 90.0), positive=True)
    exact = wait_prediction(qtbot, widget)
    assert widget.engine.session._net.dtype == torch.float32
    widget.precision.value = "bfloat16"  # rebuilds the session, same clicks
    approx = wait_prediction(qtbot, widget)
    assert widget.engine.session._net.dtype == torch.bfloat16
    assert approx.shape == exact.shape and not np.array_equal(approx, exact)
    assert np.abs(approx - exact).mean() < 0.2  # same object, bf16 rounding
    widget.precision.value = "float16"  # GPU only: a clear message, no crash
    qtbot.waitUntil(lambda: any("float16" in w for w in warnings_seen), timeout=20000)
    widget.precision.value = "float32"
    np.testing.assert_allclose(wait_prediction(qtbot, widget), exact, atol=1e-6)
