"""Print the Markdown tables of docs/accuracy.md from ``scripts/evaluate_default_model.sh`` output.

    python scripts/accuracy_tables.py runs/accuracy
    python scripts/accuracy_tables.py runs/accuracy-v2 runs/accuracy-v1   # models side by side

One row per predictor for every ``<set>.json`` written by ``napari-ritm evaluate --json``: the
model of each folder, in the order given, then the GrabCut baseline (from the first folder that
ran it on that set). With several folders, a set is printed where any of them has it.
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


def set_rows(name: str, summaries: list[dict]) -> list[str]:
    """Rows of one data set: each folder's model, then the first GrabCut baseline found."""
    out = [row(name if i == 0 else "", s["model"], s) for i, s in enumerate(summaries)]
    baseline = next((s["baseline"] for s in summaries if s.get("baseline")), None)
    if baseline is not None:
        out.append(row("", "GrabCut baseline", baseline))
    return out


def summaries_by_set(folders: list[Path]) -> dict[str, list[dict]]:
    """``{set name: [summary of each folder that has it, in folder order]}``, sets sorted."""
    found: dict[str, list[dict]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            if not path.name.endswith(".samples.json"):
                found.setdefault(path.stem, []).append(json.loads(path.read_text()))
    return dict(sorted(found.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", metavar="folder")
    args = parser.parse_args()
    for folder in args.folders:
        if not folder.is_dir() or not any(
            not p.name.endswith(".samples.json") for p in folder.glob("*.json")
        ):
            what = "has no <set>.json files" if folder.is_dir() else "does not exist"
            sys.exit(
                f"accuracy_tables.py: error: {folder} {what}; run "
                "scripts/evaluate_default_model.sh first (OUT=folder)"
            )
    ks = " | ".join(f"mIoU@{k}" for k in KS)
    print(f"| data | predictor | n | NoC@85 | NoC@90 | ≥20@90 | {ks} | s/click |")
    print("|---" * (7 + len(KS)) + "|")
    for name, summaries in summaries_by_set(args.folders).items():
        for line in set_rows(name, summaries):
            print(line)


if __name__ == "__main__":
    main()
