"""`napari-ritm view`: one clear line without a display, a large window, PyQt6 without warnings.

The no-display and the launch checks run the real command line in a subprocess: the first with
the display variables removed (Qt would abort the process), the second on its own Xvfb screen of
1600 x 1000 (xvfb-run) with napari's event loop replaced by a few seconds of event processing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from napari_ritm.napari.launch import (
    EXIT_NO_DISPLAY,
    MIN_WINDOW,
    NO_DISPLAY_MESSAGE,
    display_problem,
    prefer_qt6,
)

SCREEN = (1600, 1000)
DISPLAY_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")


def _cli() -> list[str]:
    """The installed ``napari-ritm`` script next to this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("napari-ritm")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "napari_ritm.cli"]


# -- no display -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({}, "linux", NO_DISPLAY_MESSAGE),
        ({"QT_QPA_PLATFORM": "xcb"}, "linux", NO_DISPLAY_MESSAGE),
        ({"DISPLAY": ":0"}, "linux", None),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", None),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", None),
        ({"QT_QPA_PLATFORM": "minimal:enable_fonts"}, "linux", None),
        ({}, "darwin", None),
        ({}, "win32", None),
    ],
)
def test_display_problem(environ: dict[str, str], platform: str, expected: str | None) -> None:
    assert display_problem(environ, platform) == expected


def test_no_display_message_is_one_line_that_says_what_to_do() -> None:
    assert "\n" not in NO_DISPLAY_MESSAGE
    assert "xvfb-run -a napari-ritm view" in NO_DISPLAY_MESSAGE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="display check is Linux-only")
def test_view_without_display_prints_one_line_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k not in DISPLAY_VARS}
    proc = subprocess.run(
        [*_cli(), "view"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == EXIT_NO_DISPLAY, proc.stderr
    assert proc.stderr.strip().splitlines() == [NO_DISPLAY_MESSAGE]
    assert proc.stdout == ""


# -- Qt binding --------------------------------------------------------------------------------
def test_prefer_qt6_sets_qt_api_only_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "qtpy", raising=False)  # as before anything imported Qt
    environ: dict[str, str] = {}
    assert prefer_qt6(environ) == "pyqt6"
    assert environ == {"QT_API": "pyqt6"}
    chosen = {"QT_API": "pyside6"}
    assert prefer_qt6(chosen) == "pyside6"  # the user's choice stays


# -- the real launch ---------------------------------------------------------------------------
LAUNCH_PROBE = r"""
import json, sys, time, warnings

seen = []
warnings.simplefilter("always")
_show = warnings.showwarning
def _record(message, category, *args, **kwargs):
    seen.append(f"{category.__name__}: {message}")
    _show(message, category, *args, **kwargs)
warnings.showwarning = _record

import napari
from napari.utils.notifications import notification_manager
notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))

def run_briefly():
    from qtpy.QtWidgets import QApplication
    import qtpy
    from napari_ritm.napari.widget import widget_for
    app = QApplication.instance()
    viewer = napari.current_viewer()
    widget = widget_for(viewer)
    start = time.time()
    while time.time() - start < 120:  # the model loads; the window shows and settles
        app.processEvents()
        if widget.wait_idle() and time.time() - start > 3:
            break
        time.sleep(0.02)
    window = viewer.window._qt_window
    area = window.screen().availableGeometry()
    print("PROBE " + json.dumps({
        "api": qtpy.API_NAME,
        "window": [window.width(), window.height()],
        "frame": [window.x(), window.y()],
        "screen": [area.x(), area.y(), area.width(), area.height()],
        "dock": widget.native.width(),
        "seen": seen,
    }), flush=True)
    viewer.close()

napari.run = run_briefly
from napari_ritm.cli import main
sys.exit(main(["view"]))
"""


@pytest.mark.gui
@pytest.mark.slow
def test_view_opens_a_large_window_on_pyqt6_without_deprecation_warning() -> None:
    env = {k: v for k, v in os.environ.items() if k != "QT_API"}  # the launcher chooses
    env["QT_QPA_PLATFORM"] = "xcb"
    command = [sys.executable, "-c", LAUNCH_PROBE]
    if shutil.which("xvfb-run"):
        screen = f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24"
        command = ["xvfb-run", "-a", "-s", screen, *command]
    else:
        assert os.environ.get("DISPLAY"), "needs xvfb-run or a display (pytest-xvfb)"
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, proc.stdout + proc.stderr[-3000:]
    probe = json.loads(lines[-1][len("PROBE ") :])

    assert probe["api"] == "PyQt6"
    everything = "\n".join([*probe["seen"], proc.stderr])
    assert "PyQt5" not in everything, everything[-3000:]

    width, height = probe["window"]
    _, _, screen_w, screen_h = probe["screen"]
    assert width <= screen_w and height <= screen_h
    assert width >= min(MIN_WINDOW[0], screen_w) and height >= min(MIN_WINDOW[1], screen_h)
    assert width >= 0.85 * screen_w and height >= 0.85 * screen_h
    if shutil.which("xvfb-run"):
        assert (screen_w, screen_h) == SCREEN
        assert probe["dock"] < 0.4 * width  # the image keeps most of the window


# -- what the user sees of an opened image -----------------------------------------------------
def _dim_nuclei(shape: tuple[int, ...] = (120, 160)) -> np.ndarray:
    """A dim uint8 fluorescence-like image: background ~5, a few blobs up to ~40."""
    rng = np.random.default_rng(0)
    image = rng.poisson(5.0, shape).astype(np.float64)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    for cy, cx in ((30, 40), (80, 110), (60, 70)):
        image[..., (yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] += 30
    return image.astype(np.uint8)


def test_an_opened_dim_image_is_shown_stretched_to_its_percentiles() -> None:
    from napari.layers import Image

    from napari_ritm.napari.launch import show_stretched

    image = _dim_nuclei()
    layer = Image(image)
    assert tuple(layer.contrast_limits) == (0, 255)  # napari's uint8 default: nearly black
    assert show_stretched(layer)
    assert layer.contrast_limits == pytest.approx(list(np.percentile(image, (1.0, 99.8))))
    assert layer.contrast_limits[1] < 60

    stack = np.stack([_dim_nuclei(), _dim_nuclei() // 2])
    layer = Image(stack)
    assert show_stretched(layer, percentiles=(2.0, 98.0))
    assert layer.contrast_limits == pytest.approx(list(np.percentile(stack, (2.0, 98.0))))

    # left as they are: RGB, and an image without contrast
    rgb = Image(np.stack([image] * 3, axis=-1), rgb=True)
    flat = Image(np.full((50, 50), 7, np.uint16))
    before = (tuple(rgb.contrast_limits), tuple(flat.contrast_limits))
    assert not show_stretched(rgb) and not show_stretched(flat)
    assert (tuple(rgb.contrast_limits), tuple(flat.contrast_limits)) == before


def test_a_large_image_is_sampled_for_its_display_limits() -> None:
    from napari.layers import Image

    from napari_ritm.napari.launch import show_stretched

    class CountingArray(np.ndarray):
        """Records how many values each indexing hands out."""

        read: ClassVar[list[int]] = []

        def __getitem__(self, key):
            out = super().__getitem__(key)
            CountingArray.read.append(int(np.size(out)))
            return out

    big = np.tile(_dim_nuclei((100, 100)), (30, 30)).view(CountingArray)  # 3000 x 3000
    layer = Image(big)
    CountingArray.read.clear()
    assert show_stretched(layer)
    assert max(CountingArray.read) <= 4_000_000
    assert layer.contrast_limits == pytest.approx(
        list(np.percentile(np.asarray(big), (1.0, 99.8))), abs=2.0
    )


@pytest.mark.gui
def test_view_shows_an_opened_file_stretched(qtbot, tmp_path: Path, plain_viewer_app) -> None:
    import tifffile

    from napari_ritm.napari.launch import open_viewer

    image = _dim_nuclei()
    tifffile.imwrite(tmp_path / "dim.tif", image)
    viewer, widget = open_viewer(str(tmp_path / "dim.tif"), model="some-checkpoint.pth")
    try:
        qtbot.waitUntil(widget.wait_idle, timeout=60_000)
        layer = viewer.layers["dim"]
        assert layer.contrast_limits == pytest.approx(list(np.percentile(image, (1.0, 99.8))))
    finally:
        widget.close()
        viewer.close()
