"""ReportPanel: what the Fine-tune dock shows about a run (split, before -> now, curves, time).

It only displays :class:`napari_ritm_training.report.TrainingReport` objects, which the trainer
sends from its worker thread and :class:`~napari_ritm.napari.training_job.TrainingJob` relays to
the main thread. The plot is a small matplotlib canvas redrawn at most every few seconds (and at
each epoch and the end), so the UI thread does little work while training runs.
"""

from __future__ import annotations

import time
from typing import Any

from magicgui.widgets import Container
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

from napari_ritm.napari.qt_parts import wrapping_label

__all__ = ["ReportPanel", "format_remaining"]

#: Rows of the before -> now table.
METRICS = ("NoC@85", "NoC@90", "mIoU@1", "mIoU@3", "mIoU@5")
#: Least seconds between two redraws of the plot during an epoch.
PLOT_EVERY_S = 3.0


def format_remaining(seconds: float | None) -> str:
    """``"12:34 left"`` (or ``"1:02:03 left"``); empty when unknown."""
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return (f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}") + " left"


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if metric.startswith("NoC") else f"{value:.3f}"


class ReportPanel(Container):
    """Split, time, before -> now table and a loss / validation-mIoU plot.

    Attributes:
        split_label: "train N images / M objects; held back ..." once the data is read.
        time_label: stage, step and the time left.
        table: the before -> now table (rows :data:`METRICS`, columns before / now / best).
        last_report: the newest report shown (None before the first).
    """

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.split_label = wrapping_label("split: (shown when a run starts)")
        self.time_label = wrapping_label()
        self.forgetting_label = wrapping_label()
        self.table = QTableWidget(len(METRICS), 3)
        self.table.setHorizontalHeaderLabels(["before", "now", "kept"])
        self.table.setVerticalHeaderLabels(list(METRICS))
        self.table.horizontalHeaderItem(2).setToolTip("the best model so far: the one registered")
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        off = Qt.ScrollBarPolicy.ScrollBarAlwaysOff  # the table is sized to show every row
        self.table.setHorizontalScrollBarPolicy(off)
        self.table.setVerticalScrollBarPolicy(off)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        rows = self.table.verticalHeader().defaultSectionSize() * (len(METRICS) + 1)
        self.table.setFixedHeight(rows + 6)
        self.extend([self.split_label, self.time_label, self.forgetting_label])
        self.native.layout().addWidget(self.table)
        self._canvas: Any = None
        self._axes: Any = None
        self._plotted_at = 0.0
        self.last_report: Any = None
        self._make_plot()

    def _make_plot(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(3.6, 2.0), dpi=80)
        self._axes = figure.subplots(1, 2)
        self._canvas = FigureCanvasQTAgg(figure)
        self._canvas.setMinimumHeight(160)
        self.native.layout().addWidget(self._canvas)

    def clear(self) -> None:
        """Forget the previous run."""
        self.last_report = None
        self.split_label.value = "split: (shown when a run starts)"
        self.time_label.value = self.forgetting_label.value = ""
        self.table.clearContents()
        for ax in self._axes:
            ax.clear()
        self._canvas.draw_idle()

    def show_report(self, report: Any) -> None:
        """Show a :class:`~napari_ritm_training.report.TrainingReport` (main thread)."""
        self.last_report = report
        if report.split is not None:
            self.split_label.value = "split: " + report.split.describe()
        step = f"step {report.step}/{report.total_steps}" if report.total_steps else ""
        remaining = format_remaining(report.remaining_s) if report.stage != "end" else ""
        stage = "" if report.stage == "step" else report.stage
        self.time_label.value = "  ".join(x for x in (stage, step, remaining) if x)
        self._fill_table(report)
        if report.general_before is not None and report.general_now is not None:
            b, n = report.general_before, report.general_now
            self.forgetting_label.value = (
                f"general data (forgetting): NoC@85 {b.noc85:.2f} -> {n.noc85:.2f}, "
                f"mIoU@1 {b.miou.get(1, float('nan')):.3f} -> {n.miou.get(1, float('nan')):.3f}"
            )
        now = time.monotonic()
        if report.stage != "step" or now - self._plotted_at >= PLOT_EVERY_S:
            self._plotted_at = now
            self._plot(report)

    def _fill_table(self, report: Any) -> None:
        columns = [report.before, report.now, report.best]
        for row, metric in enumerate(METRICS):
            for col, scores in enumerate(columns):
                value = scores.as_rows().get(metric) if scores is not None else None
                self.table.setItem(row, col, QTableWidgetItem(_fmt(value, metric)))

    def _plot(self, report: Any) -> None:
        loss_ax, val_ax = self._axes
        loss_ax.clear()
        val_ax.clear()
        if report.losses:
            steps, losses = zip(*report.losses, strict=True)
            loss_ax.plot(steps, losses, lw=1)
        loss_ax.set_title("loss", fontsize=8)
        loss_ax.set_xlabel("step", fontsize=7)
        if report.val_miou:
            epochs, miou = zip(*report.val_miou, strict=True)
            val_ax.plot(epochs, miou, "o-", ms=3)
        val_ax.set_title("val mIoU", fontsize=8)
        val_ax.set_xlabel("epoch", fontsize=7)
        val_ax.set_ylim(0, 1)
        for ax in self._axes:
            ax.tick_params(labelsize=6)
        self._canvas.figure.tight_layout()
        self._canvas.draw_idle()
