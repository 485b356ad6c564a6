"""Make evaluation folders holding only a training run's held-out (validation) images.

Reads ``split.json`` of a ``napari-ritm-finetune`` run and, for each data set with held-out
images, writes ``OUT/<data set>/`` with symbolic links to those images and labels and a
``pairs.csv``, so that ``napari-ritm evaluate --dataset OUT/<data set>`` scores exactly the
images the model never trained on.

    python scripts/make_holdout.py runs/default-nuclei /tmp/holdout --data ../shared/data/microscopy

Exits with status 2 and a message naming the folder when the run folder, its ``split.json``,
the data folder or a held-out data set is missing, or when no held-out image is found (the
data live in the shared folder, which a plain clone does not have).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


class InputError(Exception):
    """A missing or unusable input folder or file (the message names it)."""


def check_inputs(run_dir: Path, data_root: Path) -> None:
    """Refuse missing inputs with a message naming them.

    Raises:
        InputError: ``run_dir``/split.json or ``data_root`` does not exist.
    """
    if not (run_dir / "split.json").is_file():
        raise InputError(
            f"no split.json in the run folder {run_dir} (is it a napari-ritm-finetune run folder?)"
        )
    if not data_root.is_dir():
        raise InputError(
            f"data folder {data_root} not found: the held-out images live there (the default, "
            "../shared/data/microscopy, is the shared folder, absent from a plain clone); pass "
            "--data FOLDER"
        )


def make_holdout(run_dir: Path, out: Path, data_root: Path) -> list[Path]:
    """Write one folder per data set with held-out images; returns the folders written.

    Raises:
        InputError: an input is missing (see :func:`check_inputs`), a data set with held-out
            images has no ``pairs.csv`` under ``data_root``, or no held-out image was found.
    """
    check_inputs(run_dir, data_root)
    split = json.loads((run_dir / "split.json").read_text())
    written = []
    for name, parts in split["datasets"].items():
        held = {group.split("/", 1)[1] for group in parts.get("val_groups", [])}
        source = data_root / name
        if not held:
            continue
        if not (source / "pairs.csv").is_file():
            raise InputError(
                f"held-out data set {name!r} of {run_dir} has no {source / 'pairs.csv'}; pass "
                "the --data folder the run was trained from"
            )
        with open(source / "pairs.csv", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = [row for row in reader if Path(row[0]).stem in held]
        if not rows:
            raise InputError(f"none of the held-out images {sorted(held)} is in {source}")
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
    if not written:
        raise InputError(f"{run_dir}/split.json holds no held-out images: nothing to write")
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2: missing input, with a message)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/microscopy"))
    args = parser.parse_args(argv)
    try:
        folders = make_holdout(args.run_dir, args.out, args.data)
    except InputError as exc:
        print(f"make_holdout.py: error: {exc}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
