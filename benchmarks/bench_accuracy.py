"""Accuracy side by side: session presets x precisions on held-out data, same clicks protocol.

Runs the evaluation protocol (ritm-reference §9: the evaluation clicker, stop at IoU 0.90,
``max_clicks`` clicks) with the shipped default model on files the model was not trained on,
for each configuration ``PRESET:PRECISION`` (default: interactive and evaluation, each in float32
and bfloat16), and prints NoC@85/90, failures, mIoU@k and the first / following click times. A
configuration may end in ``:noflip`` (flip test-time augmentation off: half the network work per
click), e.g. ``interactive:float32:noflip``. ``--json`` also keeps each object's NoC@85/90
(``objects``), for paired comparisons of two configurations object by object.

Default sets (held out for ``napari-ritm.nuclei``; see its checkpoint metadata "split"):
N2DH-GOWT1 t72 and NIH3T3 dna-28/29/32/33 (fluorescence nuclei, validation groups of the
training run), ``u16`` (the same GOWT1 frame as 16-bit: value * 180 + 400 + Poisson-like noise,
so that the percentile normalization path runs), Chloroplast-EM (EM), CPM15-HE (H&E), NeurIPS-
CellSeg (whole cells), GrabCut and DAVIS (natural images; not microscopy). Run from the repository
root, preferably niced and on an otherwise idle machine::

    nice -n 10 .venv/bin/python benchmarks/bench_accuracy.py --per-set 50 --json acc.json

For another model, give its held-out folders with ``--folders`` (``PATH:u16`` adds a uint16 copy
of a set); the default model ``napari-ritm.cells`` on the held-out files of its training run
(folders written by ``scripts/make_holdout.py``; docs/performance.md)::

    H=runs/accuracy-v2/holdout
    .venv/bin/python scripts/make_holdout.py training/runs/default-v2 $H \
        --data ../shared/data/microscopy ../shared/data/benchmarks
    .venv/bin/python benchmarks/bench_accuracy.py --model napari-ritm.cells --per-set 40 \
        --configs interactive:float32 evaluation:float32 \
        --folders $H/N2DH-GOWT1 $H/N2DH-GOWT1:u16 $H/NIH3T3 $H/CPM15-HE $H/Chloroplast-EM \
        $H/NeurIPS-CellSeg $H/DAVIS ../shared/data/benchmarks/GrabCut
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MICRO = DATA / "microscopy"
# name -> (folder, files of pairs.csv to keep (None: all), uint16 conversion)
SETS: dict[str, tuple[Path, tuple[str, ...] | None, bool]] = {
    "GOWT1": (MICRO / "N2DH-GOWT1", ("t72",), False),
    "GOWT1-u16": (MICRO / "N2DH-GOWT1", ("t72",), True),
    "NIH3T3": (MICRO / "NIH3T3", ("dna-28", "dna-29", "dna-32", "dna-33"), False),
    "EM": (MICRO / "Chloroplast-EM", None, False),
    "HE": (MICRO / "CPM15-HE", None, False),
    "cells": (MICRO / "NeurIPS-CellSeg", None, False),
    "GrabCut": (DATA / "benchmarks" / "GrabCut", None, False),
    "DAVIS": (DATA / "benchmarks" / "DAVIS", None, False),
}
DEFAULT_CONFIGS = (
    "evaluation:float32",
    "interactive:float32",
    "evaluation:bfloat16",
    "interactive:bfloat16",
)


def _subset(folder: Path, keep: tuple[str, ...] | None, tmp: Path) -> Path:
    """A folder whose pairs.csv lists only the files whose image name starts with ``keep``."""
    if keep is None:
        return folder
    with open(folder / "pairs.csv", newline="") as f:
        rows = list(csv.reader(f))
    out = tmp / folder.name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0])
        for row in rows[1:]:
            if Path(row[0]).stem in keep:
                writer.writerow([str(folder / p) for p in row])
    return out


def _to_uint16(image: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    wide = image.astype(np.float64) * 180.0 + 400.0
    return np.clip(wide + rng.normal(0.0, 1.0, image.shape) * np.sqrt(wide), 0, 65535).astype(
        np.uint16
    )


def folder_sets(specs: list[str]) -> dict[str, tuple[Path, tuple[str, ...] | None, bool]]:
    """``--folders`` entries as :data:`SETS` entries: ``PATH`` is the set named after the folder,
    ``PATH:u16`` the same files converted to uint16 (named ``<folder>-u16``).

    Raises:
        ValueError: a folder does not exist.
    """
    sets = {}
    for spec in specs:
        u16 = spec.endswith(":u16")
        folder = Path(spec[: -len(":u16")] if u16 else spec)
        if not folder.is_dir():
            raise ValueError(f"data set folder {folder} not found")
        sets[folder.name + ("-u16" if u16 else "")] = (folder, None, u16)
    return sets


def load_samples(
    name: str,
    per_set: int,
    max_per_image: int | None,
    tmp: Path,
    sets: dict[str, tuple[Path, tuple[str, ...] | None, bool]] = SETS,
) -> list[Any]:
    """Seeded subset of the set's samples (uint16-converted for ``*-u16``)."""
    from napari_ritm.evaluation.datasets import load_dataset

    folder, keep, u16 = sets[name]
    dataset = load_dataset(_subset(folder, keep, tmp), max_samples=max_per_image, limit=per_set)
    samples = list(dataset)
    if u16:
        converted: dict[int, np.ndarray] = {}
        samples = [
            replace(s, image=converted.setdefault(id(s.image), _to_uint16(s.image)))
            for s in samples
        ]
    return samples


class TimedPredictor:
    """Wraps a predictor and records first-click and following-click times."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.first: list[float] = []
        self.following: list[float] = []
        self._n = 0

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)
        self._n = 0

    def reset(self) -> None:
        self.predictor.reset()
        self._n = 0

    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        t0 = time.perf_counter()
        probs = self.predictor.add_click(row, col, positive)
        (self.first if self._n == 0 else self.following).append(time.perf_counter() - t0)
        self._n += 1
        return probs


def parse_config(config: str) -> tuple[str, str, bool]:
    """``"PRESET:PRECISION[:noflip]"`` -> (preset, precision, flip).

    Raises:
        ValueError: ``config`` is not of that form.
    """
    preset, _, rest = config.partition(":")
    precision, _, option = rest.partition(":")
    if preset not in ("evaluation", "interactive") or not precision or option not in ("", "noflip"):
        raise ValueError(f"{config!r} is not PRESET:PRECISION[:noflip]")
    return preset, precision, option != "noflip"


def run(
    args: argparse.Namespace, sets: dict[str, tuple[Path, tuple[str, ...] | None, bool]]
) -> list[dict[str, Any]]:
    """Evaluate every configuration on every set of ``sets``; one row per (set, config)."""
    import torch

    from napari_ritm.evaluation.evaluator import evaluate_dataset
    from napari_ritm.inference.session import ClickSession
    from napari_ritm.weights import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sets:
            samples = load_samples(name, args.per_set, args.max_per_image, Path(tmp), sets)
            for config in args.configs:
                preset, precision, flip = parse_config(config)
                session = ClickSession(
                    model, preset=preset, precision=precision, flip=flip, device="cpu"
                )
                timed = TimedPredictor(session)
                report = evaluate_dataset(
                    timed, samples, max_clicks=args.max_clicks, model=config, dataset=name
                )
                row = {
                    "set": name,
                    "config": config,
                    "n": report.n_samples,
                    "noc85": report.noc85,
                    "noc90": report.noc90,
                    "failures90": report.failures90,
                    "miou_at_k": list(report.miou_at_k),
                    "first_ms": 1000 * float(np.median(timed.first)),
                    "following_ms": 1000 * float(np.median(timed.following or [np.nan])),
                    # per object, to tell a set-wide shift from one diverging click sequence
                    "objects": {
                        s.name: [s.noc(0.85, args.max_clicks), s.noc(0.90, args.max_clicks)]
                        for s in report.samples
                    },
                }
                rows.append(row)
                print(_format_row(row), file=sys.stderr, flush=True)
    return rows


def _format_row(r: dict[str, Any]) -> str:
    m = r["miou_at_k"]
    at = " | ".join(f"{m[k - 1]:.3f}" for k in (1, 3, 5, 10, 20) if k <= len(m))
    return (
        f"| {r['set']} | {r['n']} | {r['config']} | {r['noc85']:.2f} | {r['noc90']:.2f} | "
        f"{r['failures90']} | {at} | {r['first_ms']:.0f} | {r['following_ms']:.0f} |"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`run`'s rows, with an all-sets mean per configuration."""
    head = (
        "| set | N | preset:precision | NoC@85 | NoC@90 | fail@90 | mIoU@1 | mIoU@3 | mIoU@5 "
        "| mIoU@10 | mIoU@20 | first click ms | following ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head] + [_format_row(r) for r in rows]
    for config in dict.fromkeys(r["config"] for r in rows):
        sub = [r for r in rows if r["config"] == config]
        n = sum(r["n"] for r in sub)

        def wmean(key: str, rows_: list[dict[str, Any]] = sub, total: int = n) -> float:
            return sum(r[key] * r["n"] for r in rows_) / total

        miou = np.sum([np.asarray(r["miou_at_k"]) * r["n"] for r in sub], axis=0) / n
        total = {
            "set": "all (object-weighted)",
            "config": config,
            "n": n,
            "noc85": wmean("noc85"),
            "noc90": wmean("noc90"),
            "failures90": sum(r["failures90"] for r in sub),
            "miou_at_k": list(miou),
            "first_ms": float(np.median([r["first_ms"] for r in sub])),
            "following_ms": float(np.median([r["following_ms"] for r in sub])),
        }
        lines.append(_format_row(total))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default="napari-ritm.nuclei",
        help="registered weights name or checkpoint (napari-ritm.nuclei: the default --sets are "
        "its held-out files)",
    )
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument(
        "--folders",
        nargs="+",
        default=None,
        help="evaluate these data set folders instead of --sets (e.g. the held-out folders that "
        "scripts/make_holdout.py writes for a training run); PATH:u16 adds a uint16 copy",
    )
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    p.add_argument("--per-set", type=int, default=40, help="objects per set (seeded subset)")
    p.add_argument("--max-per-image", type=int, default=None, help="objects per image at most")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for config in args.configs:
        try:
            parse_config(config)
        except ValueError as exc:
            p.error(f"--configs: {exc}")
    try:
        sets = folder_sets(args.folders) if args.folders else {n: SETS[n] for n in args.sets}
    except ValueError as exc:
        p.error(f"--folders: {exc}")
    start = time.perf_counter()
    rows = run(args, sets)
    print(format_table(rows))
    print(f"\n{time.perf_counter() - start:.0f} s, {args.threads} threads, model {args.model}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
