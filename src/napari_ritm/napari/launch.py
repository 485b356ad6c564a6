"""`napari-ritm view`: open napari with the RITM widget docked and an image (or the sample) open.

Before anything Qt is imported, :func:`main` checks that a window can be opened at all (on Linux
without ``DISPLAY``/``WAYLAND_DISPLAY`` Qt would abort with a core dump) and prefers PyQt6 when
no binding was chosen (qtpy would otherwise pick PyQt5 first when both are installed, and napari
warns that PyQt5 support is deprecated). The window is sized to ~90% of the screen so that the
image and the dock both fit.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "EXIT_NO_DISPLAY",
    "NO_DISPLAY_MESSAGE",
    "build_parser",
    "display_problem",
    "fit_window",
    "main",
    "open_viewer",
    "prefer_qt6",
    "show_stretched",
]

logger = logging.getLogger(__name__)

#: Exit code of ``napari-ritm view`` when no window can be opened (same as other user errors).
EXIT_NO_DISPLAY = 2
#: The one line printed instead of Qt's abort when there is no display.
NO_DISPLAY_MESSAGE = (
    "napari-ritm view needs a display: run it on a desktop (or ssh -X), or under Xvfb: "
    "xvfb-run -a napari-ritm view (Debian/Ubuntu: apt-get install xvfb)"
)
#: Qt platforms that draw without a window system (no DISPLAY needed).
HEADLESS_PLATFORMS = frozenset(
    {"offscreen", "minimal", "minimalegl", "eglfs", "linuxfb", "vnc", "vkkhrdisplay"}
)
#: Fraction of the screen's available area the window takes, and the size aimed at at least.
WINDOW_FRACTION = 0.9
MIN_WINDOW = (1280, 800)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``napari-ritm view`` (also used by cli.py to register the sub-command)."""
    parser = parser or argparse.ArgumentParser(
        prog="napari-ritm view",
        description="Open napari with the RITM click-segmentation widget and an image.",
    )
    parser.add_argument(
        "image",
        nargs="?",
        default=None,
        help="image file to open (default: the bundled 'cell' sample)",
    )
    parser.add_argument(
        "--sample",
        choices=("cell", "ihc"),
        default="cell",
        help="sample to open when no image is given (default: cell)",
    )
    parser.add_argument(
        "--model", default=None, help="weights name or checkpoint path to preselect in the widget"
    )
    return parser


def display_problem(
    environ: Mapping[str, str] | None = None, platform: str | None = None
) -> str | None:
    """The one-line message when Qt cannot open a window here, else None.

    Only Linux (and other X11/Wayland systems) need a display server; Qt there aborts the
    process when neither ``DISPLAY`` nor ``WAYLAND_DISPLAY`` is set, unless ``QT_QPA_PLATFORM``
    names a platform that draws without one (offscreen, minimal, eglfs...).

    Args:
        environ: the environment to judge (default ``os.environ``).
        platform: ``sys.platform`` to judge (default the running one).
    """
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform.startswith(("win", "cygwin", "darwin")):
        return None
    if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    requested = environ.get("QT_QPA_PLATFORM", "").split(":", 1)[0].strip().lower()
    if requested in HEADLESS_PLATFORMS:
        return None
    return NO_DISPLAY_MESSAGE


def prefer_qt6(environ: dict[str, str] | None = None) -> str | None:
    """Ask qtpy for PyQt6 when no binding was chosen and PyQt6 is installed.

    qtpy's own order tries PyQt5 first; napari warns that its PyQt5 support is deprecated. Does
    nothing when ``QT_API`` is set or qtpy was already imported (the binding is then fixed).

    Args:
        environ: the environment to set ``QT_API`` in (default ``os.environ``).

    Returns:
        the ``QT_API`` value now in force, or None when none is set.
    """
    environ = os.environ if environ is None else environ
    if environ.get("QT_API") or "qtpy" in sys.modules:
        return environ.get("QT_API")
    if importlib.util.find_spec("PyQt6") is not None:
        environ["QT_API"] = "pyqt6"
    return environ.get("QT_API")


def fit_window(
    viewer: Any, fraction: float = WINDOW_FRACTION, minimum: tuple[int, int] = MIN_WINDOW
) -> tuple[int, int]:
    """Resize the viewer's main window to ``fraction`` of the screen and centre it.

    The size is at least ``minimum`` (width, height) where the screen's available area allows,
    and never more than that area.

    Returns:
        the (width, height) asked for.
    """
    from qtpy.QtGui import QGuiApplication

    window = viewer.window._qt_window  # napari has no public handle on its QMainWindow
    screen = window.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return window.width(), window.height()
    area = screen.availableGeometry()
    width = min(area.width(), max(int(area.width() * fraction), minimum[0]))
    height = min(area.height(), max(int(area.height() * fraction), minimum[1]))
    if window.isMaximized() or window.isFullScreen():
        window.showNormal()
    window.resize(width, height)
    window.move(area.x() + (area.width() - width) // 2, area.y() + (area.height() - height) // 2)
    return width, height


#: Values sampled at most for display limits (a regular subsample of larger images).
_DISPLAY_SAMPLE = 4_000_000


def show_stretched(layer: Any, percentiles: tuple[float, float] | None = None) -> bool:
    """Set a grayscale image layer's contrast limits to its 1st/99.8th percentiles.

    napari shows uint8 images on 0-255 and others on their minimum-maximum, so a dim
    fluorescence image opens nearly black. The percentiles are those the model normalizes uint16
    and float images with ("as trained"), so for them the user sees what the model sees. This is
    display only: with the default normalization the model's input does not depend on it (uint8
    is always divided by 255, as in training). RGB and multiscale layers, and images whose
    percentiles are equal, are left as they are. Reads a regular subsample (at most ~4 M values)
    so that large or lazy images stay cheap.

    Returns:
        True when the limits were changed.
    """
    import numpy as np

    from napari_ritm.inference.preprocess import DEFAULT_PERCENTILES, percentile_limits

    if getattr(layer, "rgb", False) or getattr(layer, "multiscale", False):
        return False
    data = layer.data
    # subsample rows and columns before reading, so that a lazy (dask) image is read sparsely
    step = max(1, int(np.ceil((data.size / _DISPLAY_SAMPLE) ** 0.5)))
    sample = np.asarray(data[..., ::step, ::step], dtype=np.float64)
    low, high = percentile_limits(sample, percentiles or DEFAULT_PERCENTILES)
    if not high > low:
        return False
    layer.contrast_limits = (low, high)
    return True


def open_viewer(image: str | None = None, *, sample: str = "cell", model: str | None = None):
    """Create a viewer with the widget docked and the image (or sample) open; returns both.

    An opened grayscale image is shown stretched to its 1st/99.8th percentiles
    (:func:`show_stretched`).

    The window takes ~90% of the screen (:func:`fit_window`) and the view is reset to the
    resized canvas.

    Raises:
        RitmError: the image file cannot be opened by napari.
    """
    import napari

    from napari_ritm.errors import ImageFormatError
    from napari_ritm.napari.widget import RitmWidget

    viewer = napari.Viewer(title="napari-ritm")
    if image:
        try:
            opened = viewer.open(image)
        except Exception as exc:  # napari readers raise many types; say what to do
            raise ImageFormatError(
                f"napari could not open {image!r} ({exc}); check the path or convert it to TIFF"
            ) from exc
        for layer in opened:
            if isinstance(layer, napari.layers.Image):
                show_stretched(layer)
    else:
        viewer.open_sample("napari-ritm", sample)
    widget = RitmWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RITM click segmentation", area="right")
    if model:
        if model not in list(widget.model.choices):
            widget.model.set_choice(model, model)
        widget.model.value = model
    size = fit_window(viewer)
    logger.info("window %dx%d", *size)
    from qtpy.QtCore import QTimer

    # once the resize reached the canvas: fit the image into the larger view
    QTimer.singleShot(0, viewer.reset_view)
    return viewer, widget


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, open the viewer, run napari's event loop.

    Returns:
        0, or :data:`EXIT_NO_DISPLAY` (after one line on stderr) when no window can be opened.
    """
    args = build_parser().parse_args(argv)
    problem = display_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_NO_DISPLAY
    prefer_qt6()
    import napari

    open_viewer(args.image, sample=args.sample, model=args.model)
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
