"""Make evaluation folders holding only a training run's held-out (validation) images.

Reads ``split.json`` of a ``napari-ritm-finetune`` run and, for each data set with held-out
images, writes ``OUT/<data set>/`` with symbolic links to those images and labels and a
``pairs.csv``, so that ``napari-ritm evaluate --dataset OUT/<data set>`` scores exactly the
images the model never trained on.

    python scripts/make_holdout.py runs/default-nuclei /tmp/holdout --data ../shared/data/microscopy
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def make_holdout(run_dir: Path, out: Path, data_root: Path) -> list[Path]:
    """Write one folder per data set with held-out images; returns the folders written."""
    split = json.loads((run_dir / "split.json").read_text())
    written = []
    for name, parts in split["datasets"].items():
        held = {group.split("/", 1)[1] for group in parts.get("val_groups", [])}
        source = data_root / name
        if not held or not (source / "pairs.csv").is_file():
            continue
        with open(source / "pairs.csv", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = [row for row in reader if Path(row[0]).stem in held]
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        for row in rows:
            for rel in row:
                link = target / rel
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to((source / rel).resolve())
        with open(target / "pairs.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/microscopy"))
    args = parser.parse_args()
    for folder in make_holdout(args.run_dir, args.out, args.data):
        print(folder)


if __name__ == "__main__":
    main()
