"""Regenerate the user-guide screenshots in docs/images/ from the real plugin.

Run under a virtual display (the screenshots need a real Qt window)::

    xvfb-run -s "-screen 0 1600x1000x24" python docs/make_screenshots.py --model napari-ritm.nuclei

``--model`` takes any weights name or checkpoint path (default: the package's default model).
The clicks are placed from the data (the centre of the brightest object, of a labelled nucleus),
so the same script works with any model; what the masks look like depends on the model.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "microscopy" / "napari_nuclei_3d"
MAX_BYTES = 300_000


def _wait(widget, app, timeout: float = 300.0) -> None:
    end = time.time() + timeout
    while widget.runner.busy and time.time() < end:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the canvas redraw
        app.processEvents()
        time.sleep(0.01)


def _save(viewer, name: str) -> Path:
    """Grab the whole window and save it as a PNG under MAX_BYTES (palette, then downscale)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from PIL import Image as PILImage

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # startup toasts (e.g. Qt backend notices) would hide the canvas
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    img = PILImage.fromarray(np.asarray(rgba)[..., :3])
    path = HERE / "images" / name
    path.parent.mkdir(exist_ok=True)
    for scale in (1.0, 0.85, 0.7, 0.6, 0.5):
        size = (int(img.width * scale), int(img.height * scale))
        small = img.resize(size, PILImage.LANCZOS) if scale < 1 else img
        buf = io.BytesIO()
        small.quantize(colors=256, method=PILImage.Quantize.MEDIANCUT).save(
            buf, format="PNG", optimize=True
        )
        if buf.tell() <= MAX_BYTES:
            break
    path.write_bytes(buf.getvalue())
    print(f"{path} {small.size} {buf.tell() // 1024} KB")
    return path


def _brightest_object_centre(image: np.ndarray) -> tuple[int, int]:
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image.astype(float), 4)
    fg = smooth > np.percentile(smooth, 90)
    lab, _ = ndimage.label(fg)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    rows, cols = np.nonzero(lab == int(np.argmax(sizes)))
    return int(np.median(rows)), int(np.median(cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="weights name or checkpoint path")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_ritm.napari.launch import open_viewer
    from napari_ritm.weights import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    viewer, widget = open_viewer(sample="cell", model=model)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.window._qt_window.show()
    app = QApplication.instance()
    widget.device.value = "cpu"
    image = viewer.layers[0]
    r, c = _brightest_object_centre(np.asarray(image.data))
    # 1) clicks: two positives on the cell, one negative beside it
    widget.add_point((r, c), positive=True)
    widget.add_point((r + 25, c - 20), positive=True)
    widget.add_point((max(r - 120, 5), c), positive=False)
    _wait(widget, app)
    viewer.reset_view()
    _wait(widget, app)
    _save(viewer, "widget_clicks.png")
    # 2) finish, then refine the committed object with a negative click
    widget.finish_object()
    _wait(widget, app)
    widget.refine_label(1)
    widget.add_point((r - 30, c + 30), positive=False)
    _wait(widget, app)
    _save(viewer, "widget_refine.png")
    widget.finish_object()

    # 3) a 3D stack: segment a nucleus and propagate it through the slices
    if (SHARED / "images" / "nuclei.tif").is_file():
        import tifffile

        from napari_ritm.napari.widget import RitmWidget

        volume = tifffile.imread(SHARED / "images" / "nuclei.tif")
        labels = tifffile.imread(SHARED / "labels" / "nuclei_label.tif")
        viewer.close()
        viewer = napari.Viewer(title="napari-ritm")
        viewer.add_image(volume, name="nuclei (3D)", colormap="gray")
        widget = RitmWidget(viewer)
        viewer.window.add_dock_widget(widget, name="RITM click segmentation", area="right")
        if model not in list(widget.model.choices):
            widget.model.set_choice(model, model)
        widget.model.value = model
        widget.device.value = "cpu"
        viewer.window._qt_window.resize(1600, 1000)
        viewer.window._qt_window.show()
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        target = int(ids[np.argmax(counts)])
        zs = np.nonzero((labels == target).any(axis=(1, 2)))[0]
        z = int(zs[len(zs) // 3])
        rows, cols = np.nonzero(labels[z] == target)
        viewer.dims.set_point(0, z)
        widget.add_point((z, int(np.median(rows)), int(np.median(cols))))
        _wait(widget, app)
        for _ in range(3):
            widget.propagate()
            _wait(widget, app)
        viewer.reset_view()
        _wait(widget, app)
        _save(viewer, "widget_stack.png")
    viewer.close()


if __name__ == "__main__":
    main()
