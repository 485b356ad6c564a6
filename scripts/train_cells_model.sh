#!/usr/bin/env bash
# Trains the shipped napari-ritm.cells model (v5) end to end, as it was made (issue 13):
#   1. v2: 12 x 500 steps from napari-ritm.nuclei (scripts/train_default_model_v2.sh), ~6-7 h;
#   2. v2's last.pth cast to float16 as shipping does (v4 started from the shipped v2 file);
#   3. v4: 6 x 500 steps from that file, per-set object scale (scripts/train_default_model_v4.sh),
#      ~3 h; cast to float16 as shipped (v5 started from the shipped v4 file);
#   4. v5: 4 x 500 steps from that file, DAVIS at 20-240 px (scripts/train_default_model_v5.sh),
#      ~1 h with native bfloat16 (2-3 h without); its last.pth is the model: ship it with
#      python scripts/ship_default_model.py runs/default-v5/last.pth \
#        --stages runs/default-v2 runs/default-v4 runs/default-v5
# Times are for a 2-core CPU. Interrupted? Continue that stage with its own script and --resume
# (Ctrl+C saves resume.pth), then run the steps after it by hand: they are the lines below.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
V2_FILE=runs/cells-v2.pth
V4_FILE=runs/cells-v4.pth
bash scripts/train_default_model_v2.sh
.venv/bin/python scripts/ship_default_model.py runs/default-v2/last.pth \
  --stages runs/default-v2 --reproduce "bash scripts/train_default_model_v2.sh" --dest "$V2_FILE"
FROM=$V2_FILE bash scripts/train_default_model_v4.sh
.venv/bin/python scripts/ship_default_model.py runs/default-v4/last.pth \
  --stages runs/default-v2 runs/default-v4 --reproduce "bash scripts/train_default_model_v4.sh" \
  --dest "$V4_FILE"
FROM=$V4_FILE bash scripts/train_default_model_v5.sh
