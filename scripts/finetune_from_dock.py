"""Fine-tune from the napari dock as a user does, on an image stack with labels (issue 15).

Opens a shown napari viewer (Linux without a display: run under Xvfb), adds the image and
labels files as one stack each (2D files of one size are stacked: the dock then holds back the
last slice(s)), opens the Fine-tune dock, sets it up through its own widgets, presses Start and
waits. Screenshots of the whole screen (ImageMagick ``import -window root``; falls back to a Qt
grab of the window) are taken during the run and at the end. Prints the dock's before -> now
table and where the run is.

Example (the EM chloroplast run of docs/training.md)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/finetune_from_dock.py \\
        --images ../shared/data/microscopy/Chloroplast-EM/images/{001,010}.tif \\
        --labels ../shared/data/microscopy/Chloroplast-EM/labels/{001,010}.tif \\
        --held-back 0.5 --budget 15m --register em-chloroplasts-dock \\
        --out runs/em-dock --shots docs/images/finetune
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _read_stack(paths: list[str]) -> np.ndarray:
    import tifffile

    planes = [tifffile.imread(p) for p in paths]
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise SystemExit(f"files of different shapes cannot be one stack: {sorted(shapes)}")
    return planes[0] if len(planes) == 1 else np.stack(planes)


def _screenshot(viewer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("import"):
        subprocess.run(["import", "-window", "root", str(path)], check=False)
        if path.is_file():
            return
    viewer.window._qt_window.grab().save(str(path))  # no public handle on the window


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--held-back", type=float, default=0.5, help="the dock's 'held back'")
    p.add_argument("--budget", default="15m", help="time budget (the dock's custom budget)")
    p.add_argument("--register", default="", help="name to register the result under")
    p.add_argument("--out", required=True, help="the run's output folder")
    p.add_argument("--shots", default="", help="screenshot path prefix (PREFIX_during.png ...)")
    p.add_argument("--during-after", type=float, default=0.5, help="share of the budget")
    args = p.parse_args(argv)

    from napari_ritm.napari.launch import fit_window, prefer_qt6

    prefer_qt6()
    import napari
    from napari_ritm_training.budget import parse_duration
    from qtpy.QtWidgets import QApplication

    from napari_ritm.napari.finetune_widget import FinetuneWidget

    image, labels = _read_stack(args.images), _read_stack(args.labels)
    viewer = napari.Viewer(title="napari-ritm fine-tune", show=True)
    viewer.add_image(image, name="EM")
    viewer.add_labels(labels.astype(np.int32), name="chloroplasts")
    dock = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Fine-tune", area="right")
    fit_window(viewer)
    app = QApplication.instance()
    app.processEvents()
    dock.image_layer.value, dock.labels_layer.value = "EM", "chloroplasts"
    dock.val_fraction.value = args.held_back
    dock.budget.value = "custom"
    dock.budget_custom.value = args.budget
    dock.out.value = args.out
    if args.register:
        dock.register_name.value = args.register
    print(f"start from {dock.start_from.value}, budget {dock.make_config().time_budget_s:.0f} s")
    dock.start.native.click()  # the button's own signal, as a mouse click emits it
    if dock.job is None:
        raise SystemExit(f"the run did not start: {dock.status.value}")
    budget = parse_duration(args.budget)
    t0 = time.perf_counter()
    shot_at = t0 + args.during_after * budget
    shot_taken = not args.shots
    while not (dock.job is None or dock.job.finished):
        app.processEvents()
        time.sleep(0.05)
        if not shot_taken and time.perf_counter() > shot_at:
            _screenshot(viewer, Path(f"{args.shots}_during.png"))
            shot_taken = True
    end = time.perf_counter() + 5.0
    while time.perf_counter() < end:  # the report and status after the run
        app.processEvents()
        time.sleep(0.05)
    if args.shots:
        _screenshot(viewer, Path(f"{args.shots}_after.png"))
    report = dock.report.last_report
    print(f"status: {dock.status.value}")
    print(f"ran {time.perf_counter() - t0:.0f} s; checkpoint {dock.checkpoint}")
    if report is not None and report.before is not None and report.now is not None:
        print(f"validation NoC@85 {report.before.noc85:.2f} -> {report.now.noc85:.2f}")
        print(f"validation NoC@90 {report.before.noc90:.2f} -> {report.now.noc90:.2f}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
