"""Make evaluation folders holding only a training run's held-out (validation) images.

Reads ``split.json`` of a ``napari-ritm-finetune`` run and, for each data set with held-out
images, writes ``OUT/<data set>/`` with symbolic links to those images and labels and a
``pairs.csv`` (data sets in the ``images/`` + ``masks/`` layout, such as DAVIS, keep that
layout), so that ``napari-ritm evaluate --dataset OUT/<data set>`` scores exactly the images
the model never trained on.

    python scripts/make_holdout.py runs/default-nuclei /tmp/holdout --data ../shared/data/microscopy
    python scripts/make_holdout.py runs/default-v2 /tmp/holdout \
        --data ../shared/data/microscopy ../shared/data/benchmarks

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

from napari_ritm.evaluation.datasets import DatasetError, list_pairs


class InputError(Exception):
    """A missing or unusable input folder or file (the message names it)."""


def check_inputs(run_dir: Path, data_roots: list[Path]) -> None:
    """Refuse missing inputs with a message naming them.

    Raises:
        InputError: ``run_dir``/split.json or one of ``data_roots`` does not exist.
    """
    if not (run_dir / "split.json").is_file():
        raise InputError(
            f"no split.json in the run folder {run_dir} (is it a napari-ritm-finetune run folder?)"
        )
    for data_root in data_roots:
        if not data_root.is_dir():
            raise InputError(
                f"data folder {data_root} not found: the held-out images live there (the "
                "default, ../shared/data/microscopy, is the shared folder, absent from a plain "
                "clone); pass --data FOLDER"
            )


def held_out_files(source: Path, held: set[str]) -> tuple[list[str] | None, list[list[str]]]:
    """The held-out image/target files of one data set folder, as paths relative to it.

    Returns ``(header, rows)``: with a ``pairs.csv``, its header and its rows whose image stem
    is held out; in the folder layouts (``images/`` + ``masks/`` or ``labels/``, matched by
    stem), ``None`` and the matched pairs, which keep their layout when linked.
    """
    if (source / "pairs.csv").is_file():
        with open(source / "pairs.csv", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            return header, [row for row in reader if Path(row[0]).stem in held]
    try:
        _, pairs = list_pairs(source)
    except DatasetError as exc:
        raise InputError(f"cannot read the data set {source}: {exc}") from exc
    rows = [
        [str(image.relative_to(source)), str(target.relative_to(source))]
        for image, target in pairs
        if image.stem in held
    ]
    return None, rows


def make_holdout(run_dir: Path, out: Path, data_roots: list[Path]) -> list[Path]:
    """Write one folder per data set with held-out images; returns the folders written.

    Each data set is looked up by name in ``data_roots``, in order (a run may have trained on
    sets from several folders, e.g. microscopy and benchmarks).

    Raises:
        InputError: an input is missing (see :func:`check_inputs`), a data set with held-out
            images is in none of ``data_roots``, or no held-out image was found.
    """
    check_inputs(run_dir, data_roots)
    split = json.loads((run_dir / "split.json").read_text())
    written = []
    for name, parts in split["datasets"].items():
        held = {group.split("/", 1)[1] for group in parts.get("val_groups", [])}
        if not held:
            continue
        source = next((root / name for root in data_roots if (root / name).is_dir()), None)
        if source is None:
            searched = ", ".join(str(root) for root in data_roots)
            raise InputError(
                f"held-out data set {name!r} of {run_dir} is in none of the data folders "
                f"({searched}); pass the --data folders the run was trained from"
            )
        header, rows = held_out_files(source, held)
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
        if header is not None:
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
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[Path("../shared/data/microscopy")],
        help="folders holding the run's data sets by name, searched in order",
    )
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
