"""Click-to-visible-preview and finish times of the napari dock, beside the ClickSession alone.

Everything runs through a REAL viewer (``napari.Viewer(show=True)``; on Linux run it under Xvfb,
offscreen Qt cannot create GL canvases) with Qt events processed as the event loop would:

* **click to visible preview**: from ``widget.add_point(...)`` until the preview layer shows the
  result: the widget is idle, the preview's ``data_setitem`` is done and the canvas has painted
  since (a vispy ``draw`` event after the write). The same clicks on the same image are replayed
  through ``ClickSession(model)`` (``set_image`` + ``add_click``) in a process of its own (as a
  script runs it: torch on its main thread and nowhere else), each session click right after
  the widget's same click (same machine load): the ratio
  widget / session is the overhead of the dock (threads, layers, drawing). "first" is the first
  click of an object on a new image (the session's ``set_image`` included on both sides),
  "following" the median of clicks 2..N.
* **finish**: ``widget.finish_object()`` on a (100, 2048, 2048) uint16 labels stack that already
  holds objects, with the result already held (the commit itself: ROI-bounded write, next ID),
  median of a few objects; also the time until the canvas painted the new label.

The clicks are made by the evaluation clicker on one synthetic nucleus (``bench_click``'s
``synthetic_nuclei``), so they are the same in both paths. The widget and the session use the
same model (``weights.load_model()``, the shipped default) and the same precision (the
session's default resolution on this machine unless ``--precision`` is given).

Run from the repository root (Linux without a display: under Xvfb)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_widget.py
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_widget.py --quick

Prints machine information and a markdown table. Default run: 1024² and 8192², 6 clicks, 2
repeats, finish on the full stack (~2-5 min on 2 cores); ``--quick``: 1024² only, 4 clicks,
1 repeat, a (10, 1024, 1024) stack (~1 min).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# a sibling module: running this file as a script puts benchmarks/ on sys.path
from qt_clocks import PaintClock, PreviewClock, median_ms, pump, renderer_cpu_s, settle

REPO = Path(__file__).resolve().parents[1]
Clicks = list[tuple[float, float, bool]]


# -- helpers ------------------------------------------------------------------------------------
def _bench_click() -> Any:
    """The sibling ``bench_click`` module (synthetic images, clicker sequence)."""
    spec = importlib.util.spec_from_file_location("bench_click", REPO / "benchmarks/bench_click.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine_info() -> dict[str, str]:
    """CPU model, cores, torch threads and the software versions that matter here."""
    import napari
    import qtpy
    import torch

    from napari_ritm.inference.precision import cpu_model

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = "?"
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable",
        "torch threads": str(torch.get_num_threads()),
        "load average (1, 5, 15 min) at start": load,
        "software": (
            f"Python {platform.python_version()}, torch {torch.__version__}, napari "
            f"{napari.__version__}, {qtpy.API_NAME} (Qt {qtpy.QT_VERSION})"
        ),
        "platform": f"{platform.system()} {platform.release()}, "
        f"DISPLAY={os.environ.get('DISPLAY')}",
    }


# -- the session alone -------------------------------------------------------------------------
def _session_server(conn: Any, size: int, n_clicks: int, precision: str, threads: int) -> None:
    """Serve ``ClickSession`` clicks to the benchmark from a process of its own.

    The session alone runs as a user's script runs it: on the main thread of a process where
    nothing else calls torch. In the benchmark's own process it would be a second thread calling
    torch beside the dock's worker, and two OpenMP teams on 2 cores slow each other (measured:
    following clicks 1.3-1.8x slower on the thread that did not load the model).

    Protocol (``multiprocessing`` pipe): sends ``(precision, clicks)`` once ready, then answers
    ``("new",)`` (a fresh session) with None, ``("step", i)`` (click ``i``, the first one with
    ``set_image``) with its seconds, and returns on ``("close",)``.
    """
    import torch

    torch.set_num_threads(threads)
    from napari_ritm.inference.session import ClickSession
    from napari_ritm.weights import load_model

    bc = _bench_click()
    model = load_model()
    image, gt = bc.synthetic_nuclei(size, seed=0)
    session = ClickSession(model, precision=precision)
    clicks = bc._clicker_sequence(session, image, gt, n_clicks)  # also the warm-up
    conn.send((session.precision, clicks))
    while True:
        message = conn.recv()
        if message[0] == "close":
            return
        if message[0] == "new":
            session = ClickSession(model, precision=precision)
            conn.send(None)
            continue
        i = int(message[1])
        row, col, positive = clicks[i]
        t0 = time.perf_counter()
        if i == 0:
            session.set_image(image)
        session.add_click(row, col, positive)
        conn.send(time.perf_counter() - t0)


class SessionReplay:
    """The same clicks through ``ClickSession`` alone (in its own process), one at a time.

    The session's click ``i`` is timed right after the widget's click ``i``, so that both paths
    see the same machine load (on a shared machine the load changes within seconds).
    """

    def __init__(self, size: int, n_clicks: int, precision: str, threads: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs Qt
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_session_server, args=(child, size, n_clicks, precision, threads), daemon=True
        )
        self._process.start()
        self.precision, self.clicks = self._conn.recv()
        self.times: list[float] = []

    def new_object(self) -> None:
        """A fresh session for the next replay (its first click calls ``set_image`` again)."""
        self._conn.send(("new",))
        self._conn.recv()
        self.times = []

    def step(self, i: int) -> None:
        """Make click ``i`` (the first one includes ``set_image``) and record its time."""
        self._conn.send(("step", i))
        self.times.append(self._conn.recv())

    def close(self) -> None:
        """Stop the session's process."""
        self._conn.send(("close",))
        self._process.join(timeout=30)


# -- the widget --------------------------------------------------------------------------------
@dataclass
class WidgetRun:
    """One replay of the clicks through the dock."""

    visible: list[float] = field(default_factory=list)  # click -> canvas painted the preview
    drawn: list[float] = field(default_factory=list)  # click -> preview data_setitem done
    compute: list[float] = field(default_factory=list)  # engine set_image + predict (worker)
    render_cpu: list[float] = field(default_factory=list)  # software GL CPU, click -> visible


@dataclass
class Dock:
    """A shown viewer with one image and the RITM dock, and the clocks watching it."""

    viewer: Any
    layer: Any
    widget: Any
    paints: PaintClock
    drawn: PreviewClock

    def close(self, app: Any) -> None:
        """Close the dock and the viewer."""
        self.paints.close()
        self.widget.close()
        self.viewer.close()
        settle(app, 0.3)


def open_dock(app: Any, image: np.ndarray, precision: str, name: str) -> Dock:
    """A shown viewer (~90% of the screen) with ``image`` and the RITM dock, the default model
    loaded and ``precision`` chosen."""
    import napari

    from napari_ritm.napari.launch import fit_window
    from napari_ritm.napari.widget import RitmWidget

    viewer = napari.Viewer(title=f"bench {name}", show=True)
    layer = viewer.add_image(image, name=name)
    widget = RitmWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RITM", area="right")
    fit_window(viewer)
    values = [v for v in widget.precision.choices if isinstance(v, str)]
    if precision not in values:
        raise SystemExit(f"the widget offers precisions {values}, not {precision!r}")
    widget.precision.value = precision
    pump(app, widget.wait_idle)  # the model loads in the background when the dock opens
    if widget.bridge.engine.model is None:
        widget.load_model()
        pump(app, widget.wait_idle)
    viewer.reset_view()
    settle(app, 0.5)
    return Dock(viewer, layer, widget, PaintClock(viewer), PreviewClock(widget))


def widget_run(
    app: Any, dock: Dock, clicks: Clicks, after_click: Callable[[int], None] | None = None
) -> WidgetRun:
    """Replay ``clicks`` as a new object on "new" pixels.

    The image gets a new data generation, so the first click pays the engine's ``set_image``
    as on a freshly opened image; ``after_click(i)`` runs after click ``i`` is visible (the
    session's own click, timed beside it). The preview and click layers stay: deleting them
    before the click crashed vispy (glDrawArrays) after a window resize under Xvfb.
    """
    widget = dock.widget
    widget.reset_clicks()
    widget.bridge.generations.bump(dock.layer)  # new pixels for the engine: set_image again
    widget.bridge.forget()
    settle(app, 0.2)
    run = WidgetRun()
    drawn, paints = dock.drawn, dock.paints
    for i, (row, col, positive) in enumerate(clicks):
        drawn.reset()
        gl0 = renderer_cpu_s()
        t0 = time.perf_counter()
        widget.add_point((row, col), positive)
        pump(app, lambda n=i + 1: widget.wait_idle() and drawn.clicks == n)
        assert drawn.done_at is not None
        t_drawn = drawn.done_at
        t_visible = t_drawn  # nothing changed on screen: visible when drawn
        if drawn.written:
            pump(app, lambda t=t_drawn: paints.painted_after(t))
            t_visible = paints.first_after(t_drawn)
        timings = widget.bridge.result.timings
        run.visible.append(t_visible - t0)
        run.drawn.append(t_drawn - t0)
        run.compute.append(timings.get("set_image", 0.0) + timings.get("predict", 0.0))
        run.render_cpu.append(renderer_cpu_s() - gl0)
        settle(app, 0.05)
        if after_click is not None:
            after_click(i)
    return run


def check_preview(widget: Any) -> bool:
    """Whether the preview layer shows exactly ``held result > threshold`` in the result's box."""
    result = widget.bridge.result
    layer = widget.preview.layer
    if result is None or layer is None or result.roi is None:
        return False
    r0, r1, c0, c1 = result.roi
    shown = np.asarray(layer.data).reshape(layer.data.shape[-2:])[r0 : r1 + 1, c0 : c1 + 1]
    return bool(np.array_equal(shown > 0, result.crop > float(widget.threshold.value)))


# -- finish on a stack -------------------------------------------------------------------------
def stack_data(shape: tuple[int, int, int], plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (D, H, W) image (``plane`` on every slice, no memory) and uint16 labels holding 30
    square objects on each of 20 slices (distinct IDs)."""
    depth, h, w = shape
    image = np.broadcast_to(plane[:h, :w], shape)
    labels = np.zeros(shape, dtype=np.uint16)
    rng = np.random.default_rng(0)
    next_id = 1
    for z in range(0, depth, max(1, depth // 20)):
        for _ in range(30):
            r, c = rng.integers(0, h - 40), rng.integers(0, w - 40)
            labels[z, r : r + 30, c : c + 30] = next_id
            next_id += 1
    return image, labels


def finish_times(
    app: Any, precision: str, shape: tuple[int, int, int], repeats: int, bc: Any
) -> dict[str, Any]:
    """``finish_object`` with the result held, on a labels stack of ``shape`` with objects.

    Each finish is one positive click on the brightest pixel of a nucleus of the middle slice
    (one 64 x 64 tile of the synthetic image per object), the prediction waited for, then the
    commit timed alone; also until the canvas painted the new label.
    """
    depth, h, w = shape
    plane, _ = bc.synthetic_nuclei(max(h, w), seed=3)
    image, labels = stack_data(shape, plane)
    n_objects = int(labels.max())
    dock = open_dock(app, image, precision, "stack")
    widget, viewer, paints = dock.widget, dock.viewer, dock.paints
    labels_layer = viewer.add_labels(labels, name="stack labels")
    widget.labels.reset_choices()
    widget.labels.value = labels_layer
    z = depth // 2
    viewer.dims.set_point(0, z)
    settle(app, 0.5)
    cell = 64
    commits, visible, pixels = [], [], []
    for k in range(repeats):
        r0, c0 = (h // 2 // cell + k) * cell, (w // 2 // cell + k) * cell
        tile = plane[r0 : r0 + cell, c0 : c0 + cell]
        dr, dc = np.unravel_index(int(np.argmax(tile)), tile.shape)
        point = (float(z), float(r0 + dr), float(c0 + dc))
        widget.add_point(point, True)
        pump(app, lambda: widget.wait_idle() and widget.bridge.result is not None)
        settle(app, 0.1)
        before = int(np.count_nonzero(labels_layer.data[z]))
        t0 = time.perf_counter()
        written = widget.finish_object()
        t1 = time.perf_counter()
        if written is None:
            print(f"  finish at {point} wrote nothing: {widget.status.value}", file=sys.stderr)
            widget.reset_clicks()
            continue
        pump(app, lambda t=t1: paints.painted_after(t))
        commits.append(t1 - t0)
        visible.append(paints.first_after(t1) - t0)
        pixels.append(int(np.count_nonzero(labels_layer.data[z])) - before)
        settle(app, 0.1)
    dock.close(app)
    return {
        "shape": shape,
        "commit": commits,
        "visible": visible,
        "pixels": pixels,
        "objects": n_objects,
    }


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,8192", help="image sizes (default 1024,8192)")
    p.add_argument("--clicks", type=int, default=6, help="clicks per object (default 6)")
    p.add_argument("--repeats", type=int, default=2, help="measured replays (default 2)")
    p.add_argument("--stack", default="100,2048,2048", help="labels stack D,H,W for finish")
    p.add_argument("--finishes", type=int, default=5, help="objects finished (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument(
        "--precision",
        default="auto",
        help="precision of both paths (default: what ClickSession(model) resolves to here)",
    )
    p.add_argument("--quick", action="store_true", help="1024² only, short sequences, small stack")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.clicks, args.repeats = "1024", 4, 1
        args.stack, args.finishes = "10,1024,1024", 3
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the machine and the table."""
    args = parse_args(argv)
    from napari_ritm.napari.launch import prefer_qt6

    prefer_qt6()  # before qtpy is imported (napari warns about PyQt5)
    import torch

    torch.set_num_threads(args.threads)  # the dock's worker thread (torch runs only there)
    from qtpy.QtWidgets import QApplication

    from napari_ritm.weights import DEFAULT_MODEL

    bc = _bench_click()
    start = time.perf_counter()
    app = QApplication.instance() or QApplication([])
    info = machine_info()
    print("## Machine")
    for key, value in info.items():
        print(f"- {key}: {value}")

    rows: list[str] = []
    notes: list[str] = []
    precision = args.precision
    for size in [int(s) for s in args.sizes.split(",") if s]:
        t_size = time.perf_counter()
        image, _ = bc.synthetic_nuclei(size, seed=0)
        # the session alone, in its own process: resolves the precision (both paths use it)
        # and makes the clicks (evaluation clicker)
        replay = SessionReplay(size, args.clicks, precision, args.threads)
        precision, clicks = replay.precision, replay.clicks
        dock = open_dock(app, image, precision, f"{size}²")
        session_runs, widget_runs, shown = [], [], []
        for r in range(args.repeats + 1):  # run 0 warms the widget's own session up, unreported
            replay.new_object()
            wrun = widget_run(app, dock, clicks, replay.step)
            shown.append(check_preview(dock.widget))
            if r > 0:
                widget_runs.append(wrun)
                session_runs.append(replay.times)
        replay.close()
        dock.close(app)
        for label, pick in (("first", lambda xs: xs[:1]), ("following", lambda xs: xs[1:])):
            s = median_ms([t for run in session_runs for t in pick(run)])
            vis = median_ms([t for run in widget_runs for t in pick(run.visible)])
            drw = median_ms([t for run in widget_runs for t in pick(run.drawn)])
            cmp_ = median_ms([t for run in widget_runs for t in pick(run.compute)])
            gl = median_ms([t for run in widget_runs for t in pick(run.render_cpu)])
            rows.append(
                f"| {size}² | {label} | {s:.0f} | {cmp_:.0f} | {drw:.0f} | {vis:.0f} "
                f"| {vis / s:.2f}x | {gl:.0f} |"
            )
        if not all(shown):
            notes.append(f"{size}²: the preview did NOT match the held result")
        print(f"[{size}²: {time.perf_counter() - t_size:.0f} s]", file=sys.stderr, flush=True)

    shape = tuple(int(v) for v in args.stack.split(","))
    assert len(shape) == 3, "--stack needs D,H,W"
    t_fin = time.perf_counter()
    fin = finish_times(app, precision, shape, args.finishes, bc)  # type: ignore[arg-type]
    print(f"[finish: {time.perf_counter() - t_fin:.0f} s]", file=sys.stderr, flush=True)
    print(f"- model: {DEFAULT_MODEL} (weights.load_model()), precision {precision}\n")

    n = args.repeats * (args.clicks - 1)
    print(
        f"## Click to visible preview ({args.clicks} clicks per object, {args.repeats} repeat(s): "
        f"first = median of {args.repeats}, following = median of {n})\n"
    )
    print(
        "| image (uint16) | click | session alone (ms) | widget: model work in the worker (ms) "
        "| widget: preview written (ms) | widget: preview visible (ms) | widget / session "
        "| software GL CPU per click (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for note in notes:
        print(f"\nWARNING: {note}")
    d, h, w = fin["shape"]
    print(
        f"\n## Finish on a {d} x {h} x {w} uint16 labels stack ({fin['objects']} objects in it)\n"
    )
    print("| finish_object() with the result held (ms) | until the canvas painted (ms) | objects |")
    print("|---|---|---|")
    commit, vis = fin["commit"], fin["visible"]
    print(
        f"| median {median_ms(commit):.1f} (max {1000 * max(commit, default=float('nan')):.1f})"
        f" | median {median_ms(vis):.0f} | {len(commit)} of {args.finishes} "
        f"({int(np.median(fin['pixels'])) if fin['pixels'] else 0} px each, median) |"
    )
    print(f"\n[total {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
