#!/usr/bin/env bash
# Trains the shipped napari-ritm.cells model (v4) end to end, as it was made (issue 13):
#   1. v2: 12 x 500 steps from napari-ritm.nuclei (scripts/train_default_model_v2.sh), ~6-7 h;
#   2. v2's last.pth cast to float16 as shipping does (v4 started from the shipped v2 file);
#   3. v4: 6 x 500 steps from that file, per-set object scale (scripts/train_default_model_v4.sh),
#      ~3 h; its last.pth is the model: ship it with
#      python scripts/ship_default_model.py runs/default-v4/last.pth \
#        --stages training/runs/default-nuclei training/runs/default-nuclei-stage2 runs/default-v2 runs/default-v4
# Times are for a 2-core CPU. Interrupted? Continue that stage with its own script and --resume
# (Ctrl+C saves resume.pth), then run the steps after it by hand: they are the three lines below.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
V2_FILE=runs/cells-v2.pth
bash scripts/train_default_model_v2.sh
.venv/bin/python scripts/ship_default_model.py runs/default-v2/last.pth \
  --stages runs/default-v2 --reproduce "bash scripts/train_default_model_v2.sh" --dest "$V2_FILE"
FROM=$V2_FILE bash scripts/train_default_model_v4.sh
