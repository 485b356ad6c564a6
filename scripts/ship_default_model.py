"""Copy a trained checkpoint into the package as the default model, in half precision.

    python scripts/ship_default_model.py runs/default-nuclei/best.pth [--scores a.json b.json]

The file keeps the official format plus its training metadata (command, data, split, seed,
iterations, time, machine, normalization); ``--scores`` adds the summaries of
``napari-ritm evaluate --json`` runs under ``metadata["scores"]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_ritm.model import load_checkpoint, save_checkpoint

DEST = Path(__file__).resolve().parents[1] / "src/napari_ritm/checkpoints/nuclei_hrnet18s.pth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--scores", type=Path, nargs="*", default=[])
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint)
    metadata = dict(model.metadata)
    metadata.pop("source", None)
    scores = {}
    for path in args.scores:
        summary = json.loads(path.read_text())
        scores[summary.get("dataset", path.stem)] = {
            k: summary[k]
            for k in ("noc85", "noc90", "failures90", "miou_at_k", "n_samples")
            if k in summary
        }
    if scores:
        metadata["scores"] = scores
    out = save_checkpoint(model, args.dest, metadata=metadata, half=True)
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
