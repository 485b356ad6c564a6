#!/usr/bin/env bash
# Trains the shipped default model (docs/accuracy.md). Run from the repository root; extra
# arguments go to napari-ritm-finetune (e.g. --resume to continue a stopped run).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/napari-ritm-finetune \
  --data ../shared/data/microscopy/stardist_2d ../shared/data/microscopy/N2DH-GOWT1 ../shared/data/microscopy/napari_nuclei_3d ../shared/data/microscopy/stardist_3d ../shared/data/microscopy/NIH3T3 \
  --data-weights 0.25 0.2 0.2 0.1 0.25 \
  --synthetic-fraction 0.2 --synthetic-images 300 --invert-prob 0.25 \
  --variant hrnet18s --epochs 40 --iters-per-epoch 500 --batch-size 12 --crop 192 192 \
  --lr 5e-4 --val-fraction 0.2 --val-max-objects 24 --val-max-clicks 5 \
  --seed 0 --threads 2 --checkpoint-every 100 --out "${RUN_DIR:-runs/default-nuclei}" "$@"
