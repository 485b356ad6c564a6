#!/usr/bin/env bash
# Trains default model v3 (issue 13): v2's recipe and data (scripts/train_default_model_v2.sh; the
# same folders, seed and split by file, so v2's held-out files stay held out), continued from
# the shipped v2 (napari-ritm.cells until v4 shipped) now that benchmark masks are read as one
# object each (v2 learned DAVIS as its connected pieces, median 15 px; docs/accuracy.md).
# 6 epochs x 500 steps, x0.1 for the last 2: 2-4 h on a 2-core CPU, so it spans sessions. Stop
# it with Ctrl+C (it saves resume.pth), pack it with scripts/pack_run.py and continue with
#   bash scripts/train_default_model_v3.sh --resume
# RUN_DIR (default runs/default-v3) holds the run; FROM (default runs/cells-v2.pth, v2 as shipped,
# made by scripts/train_cells_model.sh) the start; extra arguments go to napari-ritm-finetune
# (after v2's, so they win).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUN_DIR=${RUN_DIR:-runs/default-v3} exec bash scripts/train_default_model_v2.sh \
  --from "${FROM:-runs/cells-v2.pth}" --epochs 6 --milestones 4 "$@"
