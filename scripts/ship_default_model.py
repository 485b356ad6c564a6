"""Copy a trained checkpoint into the package as the default model, in half precision.

    python scripts/ship_default_model.py runs/default-v2/last.pth --stages runs/default-v2 \
        --reproduce "bash scripts/train_default_model_v2.sh" --scores runs/accuracy-v2/*.json
    python scripts/ship_default_model.py runs/default-nuclei-stage2/last.pth \
        --dest src/napari_ritm/weights/checkpoints/nuclei_hrnet18s.pth \
        --stages runs/default-nuclei runs/default-nuclei-stage2 --scores runs/accuracy/*.json

The file keeps the official format plus its training metadata (command, data, split, seed,
iterations, time, machine, normalization of the last stage); ``--stages`` adds every training
stage's command, epochs, steps and time under ``metadata["training"]`` (the model is trained in
stages, scripts/train_default_model.sh), and ``--scores`` adds the summaries of
``napari-ritm evaluate --json`` runs under ``metadata["scores"]``.

Beside the checkpoint (``--dest``, default: the default model's ``cells_hrnet18s.pth``) it writes
its record ``<stem>.json`` (sha256, size, architecture, and the listing texts generated from the
metadata: what it was trained on and from what start), which ``napari-ritm weights list`` shows
and every load checks. ``--record-only`` rewrites the record of the checkpoint already at
``--dest`` without changing the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_ritm.inference.precision import cpu_model
from napari_ritm.model import load_checkpoint, save_checkpoint
from napari_ritm.weights.shipping import write_shipped_record

DEST = (
    Path(__file__).resolve().parents[1] / "src/napari_ritm/weights/checkpoints/cells_hrnet18s.pth"
)


def stage_record(run_dir: Path) -> dict:
    """Command, length and time of one napari-ritm-finetune run folder."""
    config = json.loads((run_dir / "config.json").read_text())
    rows = json.loads((run_dir / "log.json").read_text())
    if not rows:
        raise SystemExit(f"{run_dir} has no finished epoch in log.json: not a training stage")
    seconds = sum(r.get("train_seconds") or 0.0 for r in rows)
    seconds += sum(r.get("val_seconds") or 0.0 for r in rows)
    return {
        "run": run_dir.name,
        "command": config["command"],
        "init": config.get("init"),
        "epochs": len(rows),
        "iterations": rows[-1]["step"],
        "batch_size": config["config"]["batch_size"],
        "hours": round(seconds / 3600, 2),
        "last_validation": {k: v for k, v in rows[-1].items() if k.startswith("val_")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", help="trained checkpoint to ship")
    parser.add_argument("--scores", type=Path, nargs="*", default=[])
    parser.add_argument("--stages", type=Path, nargs="*", default=[], help="run folders, in order")
    parser.add_argument("--note", default=None, help="free text on how it was trained")
    parser.add_argument("--dest", type=Path, default=DEST)
    parser.add_argument(
        "--reproduce",
        default="bash scripts/train_default_model.sh",
        help="the command that trains it end to end (recorded in the metadata)",
    )
    parser.add_argument(
        "--record-only",
        action="store_true",
        help="only (re)write the record (sha256, texts) of the checkpoint at --dest",
    )
    args = parser.parse_args()
    if args.record_only:
        print(write_shipped_record(args.dest))
        return
    if args.checkpoint is None:
        parser.error("give the checkpoint to ship (or --record-only)")
    model = load_checkpoint(args.checkpoint)
    metadata = dict(model.metadata)
    metadata.pop("source", None)
    scores = {}
    keys = ("noc85", "noc90", "failures90", "miou_at_k", "n_samples")
    for path in args.scores:
        if path.name.endswith(".samples.json"):
            continue
        summary = json.loads(path.read_text())
        entry = {k: summary[k] for k in keys if k in summary}
        if "baseline" in summary:
            entry["baseline"] = {k: summary["baseline"][k] for k in (*keys, "model")}
        scores[summary.get("dataset", path.stem)] = entry
    if scores:
        metadata["scores"] = scores
    if args.stages:
        stages = [stage_record(d) for d in args.stages]
        metadata["training"] = {
            "reproduce": args.reproduce,
            "stages": stages,
            "iterations": sum(st["iterations"] for st in stages),
            "hours": round(sum(st["hours"] for st in stages), 2),
            "cpu": cpu_model(),
        }
        if args.note:
            metadata["training"]["note"] = args.note
    out = save_checkpoint(model, args.dest, metadata=metadata, half=True)
    record = write_shipped_record(out)
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB), record {record}")


if __name__ == "__main__":
    main()
