"""Print the Markdown tables of docs/accuracy.md from ``scripts/evaluate_default_model.sh`` output.

    python scripts/accuracy_tables.py runs/accuracy
    python scripts/accuracy_tables.py runs/accuracy-v2 runs/accuracy-v1   # models side by side
    python scripts/accuracy_tables.py runs/accuracy-v2 runs/accuracy-v1 --plot docs/images/miou.png

One row per predictor for every ``<set>.json`` written by ``napari-ritm evaluate --json``: the
model of each folder, in the order given, then the GrabCut baseline (from the first folder that
ran it on that set). With several folders, a set is printed where any of them has it.
``--plot`` also draws mIoU against clicks, one panel per set, the same curves as the rows.
``--labels`` names each folder's model (default: the model name in its summaries).
Where every folder has two or more of the same sets, a last "all (pooled)" block gives each
model's and the baseline's scores over all those objects together (the mixed held-out set).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KS = (1, 3, 5, 10, 20)


def row(label: str, name: str, summary: dict) -> str:
    """One Markdown row of an ``evaluate --json`` summary (the model's or the baseline's)."""
    miou = summary["miou_at_k"]
    cells = [f"{miou[k - 1]:.3f}" if k <= len(miou) else "-" for k in KS]
    return (
        f"| {label} | {name} | {summary['n_samples']} | {summary['noc85']:.2f} | "
        f"{summary['noc90']:.2f} | {summary['failures90']} | " + " | ".join(cells) + " | "
        f"{summary['seconds_per_click']:.2f} |"
    )


def first_baseline(summaries: list[dict]) -> dict | None:
    """The GrabCut baseline of the first summary that ran it, else None."""
    return next((s["baseline"] for s in summaries if s.get("baseline")), None)


def set_rows(name: str, summaries: list[dict]) -> list[str]:
    """Rows of one data set: each folder's model, then the first GrabCut baseline found."""
    out = [row(name if i == 0 else "", s["model"], s) for i, s in enumerate(summaries)]
    baseline = first_baseline(summaries)
    if baseline is not None:
        out.append(row("", "GrabCut baseline", baseline))
    return out


def pooled(summaries: list[dict]) -> dict:
    """One summary over the objects of several: every score is a per-object mean (or a count),
    so the pooled value is the mean weighted by ``n_samples`` (the failures are summed)."""
    n = [s["n_samples"] for s in summaries]
    total = sum(n)

    def mean(values: list[float]) -> float:
        return sum(v * w for v, w in zip(values, n, strict=True)) / total

    k_max = min(len(s["miou_at_k"]) for s in summaries)
    return {
        "model": summaries[0]["model"],
        "n_samples": total,
        "noc85": mean([s["noc85"] for s in summaries]),
        "noc90": mean([s["noc90"] for s in summaries]),
        "failures90": sum(s["failures90"] for s in summaries),
        "miou_at_k": [mean([s["miou_at_k"][k] for s in summaries]) for k in range(k_max)],
        "seconds_per_click": mean([s["seconds_per_click"] for s in summaries]),
    }


def pooled_rows(by_set: dict[str, list[dict]], n_folders: int) -> list[str]:
    """The "all (pooled)" block over the sets every folder has (none if fewer than two)."""
    common = [summaries for summaries in by_set.values() if len(summaries) == n_folders]
    if len(common) < 2:
        return []
    per_folder = [pooled([summaries[i] for summaries in common]) for i in range(n_folders)]
    baselines = [first_baseline(summaries) for summaries in common]
    if all(b is not None for b in baselines):
        per_folder[0]["baseline"] = pooled(baselines)
    return set_rows(f"all {len(common)} sets (pooled)", per_folder)


def summary_files(folder: Path) -> list[Path]:
    """The ``<set>.json`` summaries of a folder (not the per-object ``.samples.json``)."""
    return [p for p in sorted(folder.glob("*.json")) if not p.name.endswith(".samples.json")]


def summaries_by_set(folders: list[Path], labels: list[str] | None = None) -> dict[str, list[dict]]:
    """``{set name: [summary of each folder that has it, in folder order]}``, sets sorted.

    ``labels`` (one per folder) replace the summaries' model names: two files of one model name
    (a model before and after a new version shipped) need names that tell them apart.
    """
    found: dict[str, list[dict]] = {}
    for i, folder in enumerate(folders):
        for path in summary_files(folder):
            summary = json.loads(path.read_text())
            if labels:
                summary["model"] = labels[i]
            found.setdefault(path.stem, []).append(summary)
    return dict(sorted(found.items()))


def plot_curves(by_set: dict[str, list[dict]], path: Path) -> Path:
    """mIoU@k against k, one panel per data set: each model's curve, then GrabCut's (dashed)."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(by_set))
    rows_ = math.ceil(len(by_set) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows_), dpi=110)
    FigureCanvasAgg(fig)
    for i, (name, summaries) in enumerate(by_set.items()):
        ax = fig.add_subplot(rows_, cols, i + 1)
        curves = [(s["model"], s["miou_at_k"], "-") for s in summaries]
        baseline = first_baseline(summaries)
        if baseline is not None:
            curves.append(("GrabCut baseline", baseline["miou_at_k"], "--"))
        for label, miou, style in curves:
            ax.plot(range(1, len(miou) + 1), miou, style, marker="o", markersize=2.5, label=label)
        n = summaries[0]["n_samples"]
        ax.set(title=f"{name} ({n} objects)", xlabel="clicks", ylabel="mIoU", ylim=(0.0, 1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", metavar="folder")
    parser.add_argument("--plot", type=Path, default=None, help="also save mIoU-vs-clicks curves")
    parser.add_argument(
        "--labels", nargs="+", default=None, help="one name per folder for its model's rows"
    )
    args = parser.parse_args()
    if args.labels is not None and len(args.labels) != len(args.folders):
        sys.exit(
            f"accuracy_tables.py: error: {len(args.labels)} --labels for "
            f"{len(args.folders)} folders; give one per folder"
        )
    for folder in args.folders:
        if not folder.is_dir() or not summary_files(folder):
            what = "has no <set>.json files" if folder.is_dir() else "does not exist"
            sys.exit(
                f"accuracy_tables.py: error: {folder} {what}; run "
                "scripts/evaluate_default_model.sh first (OUT=folder)"
            )
    ks = " | ".join(f"mIoU@{k}" for k in KS)
    print(f"| data | predictor | n | NoC@85 | NoC@90 | ≥20@90 | {ks} | s/click |")
    print("|---" * (7 + len(KS)) + "|")
    by_set = summaries_by_set(args.folders, args.labels)
    for name, summaries in by_set.items():
        for line in set_rows(name, summaries):
            print(line)
    for line in pooled_rows(by_set, len(args.folders)):
        print(line)
    if args.plot is not None:
        print(f"\nplot written to {plot_curves(by_set, args.plot)}", file=sys.stderr)


if __name__ == "__main__":
    main()
