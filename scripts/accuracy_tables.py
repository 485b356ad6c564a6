"""Print the Markdown tables of docs/accuracy.md from ``scripts/evaluate_default_model.sh`` output.

    python scripts/accuracy_tables.py runs/accuracy

One row per predictor (the model, then the GrabCut baseline of the same run) for every
``<set>.json`` written by ``napari-ritm evaluate --json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KS = (1, 3, 5, 10, 20)


def rows(summary: dict, label: str) -> list[str]:
    """Markdown rows for one ``evaluate --json`` file: model first, baseline second."""
    out = []
    for name, s in ((summary["model"], summary), ("GrabCut baseline", summary.get("baseline"))):
        if s is None:
            continue
        miou = s["miou_at_k"]
        cells = [f"{miou[k - 1]:.3f}" if k <= len(miou) else "-" for k in KS]
        out.append(
            f"| {label} | {name} | {s['n_samples']} | {s['noc85']:.2f} | {s['noc90']:.2f} | "
            f"{s['failures90']} | " + " | ".join(cells) + f" | {s['seconds_per_click']:.2f} |"
        )
        label = ""
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    jsons = [p for p in sorted(args.folder.glob("*.json")) if not p.name.endswith(".samples.json")]
    if not jsons:
        what = "has no <set>.json files" if args.folder.is_dir() else "does not exist"
        sys.exit(
            f"accuracy_tables.py: error: {args.folder} {what}; run "
            "scripts/evaluate_default_model.sh first (OUT=folder)"
        )
    ks = " | ".join(f"mIoU@{k}" for k in KS)
    print(f"| data | predictor | n | NoC@85 | NoC@90 | ≥20@90 | {ks} | s/click |")
    print("|---" * (7 + len(KS)) + "|")
    for path in jsons:
        for line in rows(json.loads(path.read_text()), path.stem):
            print(line)


if __name__ == "__main__":
    main()
