"""Pack a training run folder into a small, resumable copy that can be committed.

The long default-model run spans several sessions on fresh machines, so its state must travel
in the repository: the logs and split as they are, and ``resume.pth`` in half precision (model
weights float16; Adam's second moments bfloat16, whose float32 range keeps tiny values from
underflowing to 0; Adam's first moments are left out, ``--resume`` starts them at zero: a 0.9
running mean that refills within ~20 steps, and 40% of the file). ``--resume`` casts everything
back to float32.

    python scripts/pack_run.py runs/default-nuclei-stage2 training/runs/default-nuclei-stage2
    mkdir -p runs && cp -r training/runs/default-nuclei-stage2 runs/
    STAGE=2 bash scripts/train_default_model.sh --resume
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

KEEP = ("config.json", "split.json", "data.json", "log.csv", "log.json", "train.log", "curves.png")


def _half(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 1:
        return value.to(dtype)
    if isinstance(value, dict):
        return {k: _half(v, dtype) for k, v in value.items()}
    return value


def pack(run_dir: Path, dest: Path) -> Path:
    """Copy ``run_dir``'s logs and a half-precision ``resume.pth`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)
    state = torch.load(run_dir / "resume.pth", map_location="cpu", weights_only=True)
    state["state_dict"] = _half(state["state_dict"], torch.float16)
    moments = state["optimizer"]["state"]
    for param_state in moments.values():
        param_state.pop("exp_avg", None)  # restored as zeros (checkpointing.restore)
    state["optimizer"]["state"] = _half(moments, torch.bfloat16)
    if "precision" not in state and (run_dir / "config.json").is_file():
        # states saved before resumes kept their precision: take the one the run recorded
        recorded = json.loads((run_dir / "config.json").read_text()).get("precision")
        if recorded:
            state["precision"] = recorded
    out = dest / "resume.pth"
    torch.save(state, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    if not (args.run_dir / "resume.pth").is_file():
        sys.exit(
            f"pack_run.py: error: no resume.pth in {args.run_dir} (not a napari-ritm-finetune "
            "run folder, or the run has not saved a resumable state yet)"
        )
    out = pack(args.run_dir, args.dest)
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
