"""NoC@85/90, failures, mIoU@k and seconds per click of an interactive predictor; reports.

The protocol is the official RITM one (ritm-reference §9): for each sample the evaluation
clicker (:func:`napari_ritm.inference.clicks.next_click`) places the next click on the largest
error of
the previous *binary* prediction (probs > 0.49), the predictor answers with probabilities, and
the loop stops once IoU >= ``target_iou`` (never when ``target_iou > 1``) or after
``max_clicks`` clicks.

Metrics over a data set:

* NoC@t: mean over samples of the 1-based index of the first click with IoU >= t; samples that
  never reach t count as ``max_clicks``. NoC@85 is read from the same (possibly stopped) IoU list
  as NoC@90, which is valid because 85 % is reached no later than 90 %.
* failures90: samples whose NoC@90 equals ``max_clicks`` (as in the paper's ">=20" column,
  this includes a sample that first reaches 90 % exactly at the last click).
* mIoU@k, k = 1..max_clicks: mean IoU after k clicks. A sample that stopped early (it reached
  ``target_iou``) keeps its last IoU for the remaining k ("carried forward"). That makes the
  curve a lower bound of the never-stopping one; for the paper's curves (Figs. 4, 6) evaluate
  with ``target_iou > 1`` (e.g. 1.01) so that every sample gets all clicks.
* seconds_per_click: wall time of the whole data set loop (image loading included) divided by
  the total number of clicks, as the reference's SPC.

Any object with ``set_image(image)``, ``add_click(row, col, positive) -> probs`` and
``reset()`` is an :class:`InteractivePredictor` (``ClickSession``, ``GrabCutBaseline``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from napari_ritm.errors import ImageFormatError, RitmError
from napari_ritm.fileio import to_jsonable, write_text_atomic
from napari_ritm.inference.clicks import Click, iou, next_click
from napari_ritm.inference.presets import DEFAULT_THRESHOLD
from napari_ritm.progress import ProgressCallback

__all__ = [
    "SUMMARY_KEYS",
    "InteractivePredictor",
    "Report",
    "SampleResult",
    "evaluate_dataset",
    "evaluate_sample",
    "format_table",
    "miou_curve",
    "number_of_clicks",
    "plot_miou",
]

log = logging.getLogger(__name__)

#: NoC thresholds exactly as the reference computes them: np.arange(0.8, 0.901, 0.05) in
#: float64, i.e. 0.8500000000000001 and 0.9000000000000001, compared with float32 IoUs.
_ARANGE_THRESHOLDS = np.arange(0.8, 0.901, 0.05)
NOC85_THRESHOLD = float(_ARANGE_THRESHOLDS[1])
NOC90_THRESHOLD = float(_ARANGE_THRESHOLDS[2])

#: Keys of :meth:`Report.summary` (and of the CLI's JSON), in this order.
SUMMARY_KEYS = (
    "noc85",
    "noc90",
    "failures90",
    "miou_at_k",
    "seconds_per_click",
    "n_samples",
    "model",
    "dataset",
)


@runtime_checkable
class InteractivePredictor(Protocol):
    """What evaluation needs from a predictor (``ClickSession`` and ``GrabCutBaseline`` fit)."""

    def set_image(self, image: np.ndarray) -> None:
        """Start a new object on ``image`` (H, W) or (H, W, C); forgets earlier clicks."""

    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        """Add a click at image pixel (row, col); return (H, W) float32 probabilities."""

    def reset(self) -> None:
        """Forget all clicks and the previous prediction, keep the image."""


@dataclass
class SampleResult:
    """Outcome of one sample.

    Attributes:
        name: Sample name.
        ious: (n_clicks,) float32 IoU after each click (1 <= n_clicks <= max_clicks).
        clicks: The simulated clicks, in order, at integer (row, col) pixels.
        seconds: Wall time of this sample (set_image + all clicks).
    """

    name: str
    ious: np.ndarray
    clicks: list[Click]
    seconds: float

    @property
    def n_clicks(self) -> int:
        """Number of clicks made."""
        return len(self.ious)

    def noc(self, threshold: float, max_clicks: int) -> int:
        """Number of clicks to reach ``threshold`` IoU, ``max_clicks`` if never reached."""
        return number_of_clicks(self.ious, threshold, max_clicks)

    def to_dict(self, max_clicks: int) -> dict[str, Any]:
        """JSON-ready record: name, ious, clicks [[row, col, positive]], noc85, noc90, seconds."""
        return {
            "name": self.name,
            "ious": [round(float(v), 6) for v in self.ious],
            "clicks": [[c.row, c.col, c.positive] for c in self.clicks],
            "noc85": self.noc(NOC85_THRESHOLD, max_clicks),
            "noc90": self.noc(NOC90_THRESHOLD, max_clicks),
            "seconds": round(self.seconds, 4),
        }


def number_of_clicks(ious: Sequence[float] | np.ndarray, threshold: float, max_clicks: int) -> int:
    """1-based index of the first IoU >= threshold, or ``max_clicks`` when none is.

    Args:
        ious: IoU after each click (float32 values, as stored by :func:`evaluate_sample`).
        threshold: IoU threshold, e.g. ``NOC90_THRESHOLD``.
        max_clicks: Click budget; the value for a failure.

    Returns:
        NoC of this sample, in [1, max_clicks].
    """
    # float32 IoUs compared in float64, as the reference does with its arange thresholds
    reached = np.flatnonzero(np.asarray(ious, dtype=np.float32).astype(np.float64) >= threshold)
    if reached.size == 0 or reached[0] + 1 > max_clicks:
        return max_clicks
    return int(reached[0]) + 1


def miou_curve(iou_lists: Sequence[np.ndarray], max_clicks: int) -> list[float]:
    """Mean IoU after k = 1..max_clicks clicks, carrying each list's last IoU forward.

    Args:
        iou_lists: One IoU sequence per sample, each of length 1..max_clicks.
        max_clicks: Curve length.

    Returns:
        ``max_clicks`` floats; element k-1 is mIoU@k. Empty input gives NaNs.
    """
    if not iou_lists:
        return [math.nan] * max_clicks
    table = np.empty((len(iou_lists), max_clicks), dtype=np.float64)
    for i, ious in enumerate(iou_lists):
        ious = np.asarray(ious, dtype=np.float64)[:max_clicks]
        if ious.size == 0:
            raise ValueError("every sample needs at least one IoU")
        table[i, : ious.size] = ious
        table[i, ious.size :] = ious[-1]
    return [float(v) for v in table.mean(axis=0)]


@dataclass
class Report:
    """Metrics of one predictor on one data set (see the module docstring for definitions).

    Attributes:
        noc85: Mean NoC@85 (clicks; failures count as ``max_clicks``).
        noc90: Mean NoC@90.
        failures90: Number of samples with NoC@90 == max_clicks.
        miou_at_k: mIoU after k = 1..max_clicks clicks (index k-1), early stops carried forward.
        seconds_per_click: Wall time of the loop / total clicks.
        n_samples: Number of samples evaluated.
        model: Predictor name.
        dataset: Data set name.
        max_clicks: Click budget per sample.
        target_iou: Stop IoU (> 1 = never stop: exact mIoU@k curve).
        samples: Per-sample results.
    """

    noc85: float
    noc90: float
    failures90: int
    miou_at_k: list[float]
    seconds_per_click: float
    n_samples: int
    model: str
    dataset: str
    max_clicks: int = 20
    target_iou: float = 0.90
    samples: list[SampleResult] = field(default_factory=list, repr=False)

    @classmethod
    def from_results(
        cls,
        results: Sequence[SampleResult],
        *,
        max_clicks: int,
        target_iou: float,
        seconds: float,
        model: str,
        dataset: str,
    ) -> Report:
        """Aggregate per-sample results; ``seconds`` is the wall time of the whole loop."""
        n = len(results)
        noc85 = [r.noc(NOC85_THRESHOLD, max_clicks) for r in results]
        noc90 = [r.noc(NOC90_THRESHOLD, max_clicks) for r in results]
        total_clicks = sum(r.n_clicks for r in results)
        return cls(
            noc85=float(np.mean(noc85)) if n else math.nan,
            noc90=float(np.mean(noc90)) if n else math.nan,
            failures90=int(sum(v == max_clicks for v in noc90)),
            miou_at_k=miou_curve([r.ious for r in results], max_clicks),
            seconds_per_click=seconds / total_clicks if total_clicks else math.nan,
            n_samples=n,
            model=model,
            dataset=dataset,
            max_clicks=max_clicks,
            target_iou=target_iou,
            samples=list(results),
        )

    def miou(self, k: int) -> float:
        """mIoU after ``k`` clicks (1-based); NaN when k > max_clicks."""
        return self.miou_at_k[k - 1] if 1 <= k <= len(self.miou_at_k) else math.nan

    def summary(self) -> dict[str, Any]:
        """The headline numbers, with exactly the keys of :data:`SUMMARY_KEYS`."""
        return {
            "noc85": self.noc85,
            "noc90": self.noc90,
            "failures90": self.failures90,
            "miou_at_k": list(self.miou_at_k),
            "seconds_per_click": self.seconds_per_click,
            "n_samples": self.n_samples,
            "model": self.model,
            "dataset": self.dataset,
        }

    def to_dict(self, *, include_samples: bool = False) -> dict[str, Any]:
        """:meth:`summary`, plus (when asked) max_clicks, target_iou and per-sample records."""
        out = self.summary()
        if include_samples:
            out["max_clicks"] = self.max_clicks
            out["target_iou"] = self.target_iou
            out["samples"] = [s.to_dict(self.max_clicks) for s in self.samples]
        return out

    def to_json(self, path: str | Path | None = None, *, include_samples: bool = False) -> str:
        """Serialise :meth:`to_dict` (NaN becomes null); also write it to ``path`` if given."""
        text = json.dumps(to_jsonable(self.to_dict(include_samples=include_samples)), indent=2)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text

    def format_table(self) -> str:
        """This report as a one-row text table (see :func:`format_table`)."""
        return format_table([self])


def _check_target(image: np.ndarray, gt: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ImageFormatError(f"gt must be a 2D (H, W) array, got shape {gt.shape}")
    if np.asarray(image).shape[:2] != gt.shape:
        raise ImageFormatError(
            f"image shape {np.asarray(image).shape} does not match gt shape {gt.shape}; "
            "the image must be (H, W) or (H, W, C) over the same pixels"
        )
    if not np.isin(gt, (-1, 0, 1)).all():
        raise ImageFormatError("gt may only hold -1 (ignore), 0 (background) and 1 (object)")
    if not (gt == 1).any():
        raise ImageFormatError("gt has no object pixels (value 1); nothing to segment")
    return gt.astype(np.int8, copy=False)


def evaluate_sample(
    predictor: InteractivePredictor,
    image: np.ndarray,
    gt: np.ndarray,
    *,
    max_clicks: int = 20,
    target_iou: float = 0.90,
    threshold: float = DEFAULT_THRESHOLD,
    name: str = "",
) -> SampleResult:
    """Run the simulated-click loop of ritm-reference §9.1 on one object.

    Args:
        predictor: Any :class:`InteractivePredictor`; ``set_image`` is called first.
        image: (H, W) or (H, W, C) image, any dtype the predictor accepts.
        gt: (H, W) int target: 1 object, 0 background, -1 ignore; must contain an object.
        max_clicks: Click budget (>= 1).
        target_iou: Stop after the first click whose IoU >= target_iou; > 1 never stops.
        threshold: Binary prediction = probs > threshold (0.49 in the reference).
        name: Stored in the result.

    Returns:
        SampleResult with float32 IoUs, the clicks and the wall time.

    Raises:
        ImageFormatError: gt is not 2D with values in {-1, 0, 1} and an object, or the image
            or the predictor's output does not match its shape.
    """
    if max_clicks < 1:
        raise RitmError(f"max_clicks must be >= 1, got {max_clicks}")
    gt = _check_target(image, gt)
    start = time.perf_counter()
    predictor.set_image(image)
    pred = np.zeros(gt.shape, dtype=bool)
    clicks: list[Click] = []
    ious: list[float] = []
    for _ in range(max_clicks):
        click = next_click(gt, pred, clicks)
        clicks.append(click)
        probs = np.asarray(predictor.add_click(click.row, click.col, click.positive))
        if probs.shape != gt.shape:
            raise ImageFormatError(
                f"predictor returned probabilities of shape {probs.shape} for an image of "
                f"shape {gt.shape}"
            )
        pred = probs > threshold
        ious.append(iou(gt, pred))
        if ious[-1] >= target_iou:  # float64 comparison, as in the reference loop
            break
    return SampleResult(
        name=name,
        ious=np.asarray(ious, dtype=np.float32),
        clicks=clicks,
        seconds=time.perf_counter() - start,
    )


def evaluate_dataset(
    predictor: InteractivePredictor,
    samples: Iterable[Any],
    *,
    max_clicks: int = 20,
    target_iou: float = 0.90,
    threshold: float = DEFAULT_THRESHOLD,
    model: str | None = None,
    dataset: str | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Evaluate a predictor on every sample and aggregate NoC, failures, mIoU@k and s/click.

    Args:
        predictor: Any :class:`InteractivePredictor`.
        samples: Iterable of :class:`napari_ritm.evaluation.datasets.Sample` (or any object with
            ``image``
            and ``gt`` attributes, ``name`` optional), e.g. a
            :class:`~napari_ritm.evaluation.datasets.Dataset`. Read lazily, one at a time.
        max_clicks: Click budget per sample.
        target_iou: Stop IoU per sample; use > 1 (e.g. 1.01) for exact mIoU@k curves.
        threshold: Binary prediction threshold (0.49 in the reference).
        model: Name in the report; default: the predictor's ``name`` attribute or class name.
        dataset: Name in the report; default: the ``name`` attribute of ``samples``.
        progress: Called as ``progress(done, total, message)`` after each sample; ``total`` is
            ``len(samples)`` or 0 when unknown.

    Returns:
        The :class:`Report`, including per-sample results.

    Raises:
        RitmError: No samples, or a sample with an invalid gt (see :func:`evaluate_sample`).
    """
    if model is None:
        model = str(getattr(predictor, "name", type(predictor).__name__))
    if dataset is None:
        dataset = str(getattr(samples, "name", ""))
    try:
        total = len(samples)  # type: ignore[arg-type]
    except TypeError:
        total = 0
    results: list[SampleResult] = []
    start = time.perf_counter()  # includes reading the samples, like the reference's SPC
    for i, sample in enumerate(samples):
        name = str(getattr(sample, "name", i))
        result = evaluate_sample(
            predictor,
            sample.image,
            sample.gt,
            max_clicks=max_clicks,
            target_iou=target_iou,
            threshold=threshold,
            name=name,
        )
        results.append(result)
        log.debug("%s: %d clicks, last IoU %.3f", name, result.n_clicks, result.ious[-1])
        if progress is not None:
            progress(i + 1, total, name)
    seconds = time.perf_counter() - start
    if not results:
        raise RitmError(f"data set {dataset!r} has no samples to evaluate")
    return Report.from_results(
        results,
        max_clicks=max_clicks,
        target_iou=target_iou,
        seconds=seconds,
        model=model,
        dataset=dataset,
    )


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_table(reports: Sequence[Report]) -> str:
    """Plain-text table, one row per report.

    Columns: model, dataset, n, NoC@85, NoC@90, >=max@90 (failures), mIoU@1/3/5/10, s/click.
    mIoU@k beyond the click budget shows "-".

    Args:
        reports: Reports to list (e.g. a model and the GrabCut baseline).

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    budget = max((r.max_clicks for r in reports), default=20)
    header = [
        "model",
        "dataset",
        "n",
        "NoC@85",
        "NoC@90",
        f">={budget}@90",
        "mIoU@1",
        "mIoU@3",
        "mIoU@5",
        "mIoU@10",
        "s/click",
    ]
    rows = [
        [
            r.model,
            r.dataset,
            str(r.n_samples),
            _fmt(r.noc85),
            _fmt(r.noc90),
            str(r.failures90),
            *(_fmt(r.miou(k), 3) for k in (1, 3, 5, 10)),
            _fmt(r.seconds_per_click, 3),
        ]
        for r in reports
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # names left-aligned, numbers right-aligned
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def plot_miou(reports: Sequence[Report], path: str | Path, *, title: str | None = None) -> Path:
    """Plot mIoU@k against k for several reports on one axis and save the figure.

    Uses the Agg backend through a standalone Figure (no pyplot global state, no display).

    Args:
        reports: Reports to draw, one curve each (label = model name).
        path: Output file; the format follows the suffix (.png, .pdf, .svg).
        title: Plot title; default: the data set name(s).

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for report in reports:
        k = np.arange(1, len(report.miou_at_k) + 1)
        ax.plot(k, report.miou_at_k, marker="o", markersize=3, label=report.model)
    budget = max((r.max_clicks for r in reports), default=20)
    ax.set_xlim(0.5, budget + 0.5)
    ax.set_ylim(0.0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU")
    ax.axhline(0.9, color="0.6", linewidth=0.8, linestyle="--")
    ax.axhline(0.85, color="0.8", linewidth=0.8, linestyle="--")
    ax.grid(True, alpha=0.3)
    if title is None:
        title = ", ".join(dict.fromkeys(r.dataset for r in reports if r.dataset))
    if title:
        ax.set_title(title)
    if reports:
        ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
