"""Property-based test of the real dock in a real viewer with a slow fake engine.

Hypothesis draws sequences of user actions (clicks, N, undo/redo of clicks, refine, propagate,
slice changes, image/labels data replacement, label paints, napari undo, dock close) and checks
after every step:

* no pixel of an object other than the one being committed changes (overwrite is off);
* each commit that writes is exactly one napari undo step;
* a committed object equals the fake model's mask for exactly the clicks it was committed with
  (on the pixels the commit was allowed to write);
* no exception reaches the user (napari error notifications, exceptions in Qt slots);
* nothing runs after close.

The fake engine is a pure function of (plane pixels, clicks, prior): a disk around each positive
click minus disks around negative clicks, plus the prior. It sleeps a little so that actions
arrive while predictions run.

``RITM_WIDGET_EXAMPLES`` sets the number of sequences: 120 by default (about a minute on 2
cores; 300 took 5 minutes, the largest single cost of the default run), more for a deeper run,
e.g. 1000 before a release. The draws are derandomized: a run of a given size always tries the
same sequences.
"""

from __future__ import annotations

import os
import time
import types

import numpy as np
import pytest
from fake_engine import FakeEngine, fake_mask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.gui

SHAPE = (3, 40, 48)


ACTIONS = st.one_of(
    st.tuples(
        st.just("click"),
        st.floats(0, SHAPE[1] - 1),
        st.floats(0, SHAPE[2] - 1),
        st.booleans(),
    ),
    st.just(("finish",)),
    st.just(("undo_click",)),
    st.just(("redo_click",)),
    st.just(("propagate",)),
    st.tuples(st.just("slice"), st.integers(0, SHAPE[0] - 1)),
    st.tuples(st.just("refine"), st.integers(0, SHAPE[1] - 1), st.integers(0, SHAPE[2] - 1)),
    st.just(("replace_image",)),
    st.just(("replace_labels",)),
    st.tuples(st.just("paint"), st.integers(1, 9)),
    st.just(("napari_undo",)),
    st.just(("wait",)),
)


@pytest.fixture
def shared_viewer(make_napari_viewer, monkeypatch):
    """One viewer for all examples of the test (hypothesis reuses a test's fixtures)."""
    from napari.utils.notifications import notification_manager

    # napari runs gc.collect() (about a second with torch loaded) after every layer removal, a
    # workaround for some Windows GL drivers; hundreds of sequences remove many layers.
    monkeypatch.setattr("napari._vispy.canvas.gc", types.SimpleNamespace(collect=lambda: 0))
    errors: list[str] = []

    def on_notification(notification) -> None:
        if str(getattr(notification, "severity", "")).lower().endswith("error"):
            errors.append(str(notification.message))

    notification_manager.notification_ready.connect(on_notification)
    _STATE.clear()
    yield make_napari_viewer(show=False), errors
    notification_manager.notification_ready.disconnect(on_notification)
    widget = _STATE.pop("widget", None)
    if widget is not None:
        widget.close()


class Checker:
    """Records commits through the editor and checks the invariants."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.commits: list[str] = []
        editor = widget.editor
        original = editor.apply

        def apply(snap, result):
            labels = snap.labels
            before = np.array(labels.data, copy=True)
            history = len(labels._undo_history)
            written = original(snap, result)
            after = np.asarray(labels.data)
            changed = before != after
            if written is None:
                assert not changed.any(), "a dropped commit changed pixels"
                return written
            steps = len(labels._undo_history) - history
            assert steps == (1 if changed.any() else 0), "a commit is one undo step"
            plane = snap.plane.data_index()
            outside = np.ones(before.shape, dtype=bool)
            outside[plane] = False
            assert not changed[outside].any(), "a commit changed another slice"
            b, a = before[plane], after[plane]
            mask = fake_mask(snap.request, b.shape)
            replace = snap.replace
            free = (b == 0) | (b == snap.label_id)
            if replace is not None:
                free |= b == replace
            # other objects never change
            other = ~free
            np.testing.assert_array_equal(a[other], b[other])
            # the object is exactly the mask of its own clicks where it was allowed to write
            np.testing.assert_array_equal(a[free] == snap.label_id, mask[free])
            self.commits.append(f"{snap.label_id}:{len(snap.request.clicks)}")
            return written

        editor.apply = apply


def run_action(widget, viewer, action) -> None:
    name = action[0]
    image = viewer.layers["stack"]
    labels = viewer.layers["labels"]
    if name == "click":
        plane = widget.plane()
        point = np.array(plane.index, dtype=float)
        point[plane.row_axis], point[plane.col_axis] = action[1], action[2]
        widget.add_point(point, positive=action[3])
    elif name == "finish":
        widget.finish_object()
    elif name == "undo_click":
        widget.undo_click()
    elif name == "redo_click":
        widget.redo_click()
    elif name == "propagate":
        widget.propagate()
    elif name == "slice":
        viewer.dims.set_point(0, action[1])
    elif name == "refine":
        plane = widget.plane()
        value = int(labels.data[plane.key[0], action[1], action[2]])
        if value and not widget.current_clicks():
            widget.refine_label(value)
    elif name == "replace_image":
        image.data = np.ascontiguousarray(image.data[:, ::-1])
    elif name == "replace_labels":
        labels.data = np.array(labels.data, copy=True)
    elif name == "paint":
        z = round(viewer.dims.point[0])
        labels.paint((z, 5, 5), action[1])
    elif name == "napari_undo":
        labels.undo()
    elif name == "wait":
        deadline = time.time() + 5
        while not widget.wait_idle() and time.time() < deadline:
            _process_events(0.01)


def _process_events(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while True:
        QApplication.processEvents()
        if time.time() >= end:
            return
        time.sleep(0.002)


@settings(
    max_examples=int(os.environ.get("RITM_WIDGET_EXAMPLES", "120")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    actions=st.lists(ACTIONS, min_size=1, max_size=10),
    close=st.integers(0, 4).map(lambda k: k == 0),  # one sequence in five ends by closing
)
def test_random_use_keeps_the_invariants(shared_viewer, actions, close, qtbot):
    viewer, errors = shared_viewer
    widget, engine = _fresh_widget(viewer)
    errors.clear()
    with qtbot.capture_exceptions() as raised:
        for action in actions:
            run_action(widget, viewer, action)
            _process_events(0.003)
        if close:
            widget.close()
            calls = engine.calls
            # The fake engine never loads a model, so wait on the runner itself: after close it
            # is busy only while the job that was running at close time has not finished.
            runner = widget.bridge.runner
            deadline = time.time() + 30
            while runner.busy and time.time() < deadline:
                _process_events(0.01)
            assert not runner.busy, "the job running at close never finished"
            assert engine.calls <= calls + 1  # at most the job that was running
            after = engine.calls
            run_action(widget, viewer, ("click", 5.0, 5.0, True))
            _process_events(0.03)
            assert engine.calls == after, "something ran after close"
            _STATE.pop("widget", None)
        else:
            deadline = time.time() + 10
            while not widget.wait_idle() and time.time() < deadline:
                _process_events(0.01)
    assert not raised, [str(e[1]) for e in raised]
    assert not errors, errors


_STATE: dict = {}


def _fresh_widget(viewer):
    """The dock for the next example: reused (reset) unless the last example closed it."""
    from napari_ritm.napari.widget import RitmWidget

    rng = np.random.default_rng(len(_STATE) + 1)
    widget = _STATE.get("widget")
    if widget is None:
        viewer.layers.clear()
        viewer.add_image(rng.integers(0, 255, SHAPE, dtype=np.uint8), name="stack")
        viewer.add_labels(np.zeros(SHAPE, dtype=np.uint16), name="labels")
        engine = FakeEngine()
        widget = RitmWidget(viewer, engine=engine)
        widget.labels.value = viewer.layers["labels"]
        widget.threshold.value = 0.5
        Checker(widget)
        _STATE["widget"] = widget
    else:
        for plane_key in list(widget.editor.priors):
            widget.editor.priors.pop(plane_key)
        for layer in widget.clicks.layers():
            layer.data = np.empty((0, layer.ndim))
        widget.bridge.forget()
        viewer.layers["labels"].data = np.zeros(SHAPE, dtype=np.uint16)
        viewer.layers["stack"].data = rng.integers(0, 255, SHAPE, dtype=np.uint8)
        viewer.dims.set_point(0, 0)
    return widget, widget.engine
