#!/usr/bin/env bash
# Trains the shipped default model (docs/accuracy.md) with napari-ritm-finetune, in two stages:
#   1. from scratch, objects scaled to 14-90 px equivalent diameter, constant learning rate;
#   2. from stage 1's last.pth, objects scaled to 14-160 px (large nuclei and cells at high
#      magnification), learning rate x0.1 for the last 3 epochs.
# Run from anywhere; RUN_DIR (default runs/default-nuclei) holds stage 1, RUN_DIR-stage2 stage 2.
# STAGE=1 or STAGE=2 runs one stage only; extra arguments go to that stage (e.g. --resume to
# continue a stopped one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUN_DIR=${RUN_DIR:-runs/default-nuclei}
STAGE=${STAGE:-all}
M=${DATA:-../shared/data}/microscopy
if [[ ! -d $M ]]; then
  echo "train_default_model.sh: error: data folder $M not found (the shared data folder, absent" \
    "from a plain clone); set DATA to the folder holding microscopy/" >&2
  exit 2
fi
COMMON=(
  --data "$M/stardist_2d" "$M/N2DH-GOWT1" "$M/napari_nuclei_3d" "$M/stardist_3d" "$M/NIH3T3"
  --data-weights 0.25 0.2 0.2 0.1 0.25
  --synthetic-fraction 0.2 --synthetic-images 300 --invert-prob 0.25
  --iters-per-epoch 500 --batch-size 12 --crop 192 192 --lr 5e-4
  --val-fraction 0.2 --val-max-objects 24 --val-max-clicks 5
  --seed 0 --threads 2 --checkpoint-every 100
)
if [[ $STAGE == all || $STAGE == 1 ]]; then
  .venv/bin/napari-ritm-finetune "${COMMON[@]}" --variant hrnet18s --epochs 12 --milestones \
    --diameter-range 14 90 --out "$RUN_DIR" "$@"
fi
if [[ $STAGE == all || $STAGE == 2 ]]; then
  .venv/bin/napari-ritm-finetune "${COMMON[@]}" --from "$RUN_DIR/last.pth" --backbone-lr-mult 1.0 \
    --epochs 11 --milestones 8 --diameter-range 14 160 --out "$RUN_DIR-stage2" "$@"
fi
