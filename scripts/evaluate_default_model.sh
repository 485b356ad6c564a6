#!/usr/bin/env bash
# Reproduces the tables and plots of docs/accuracy.md: one `napari-ritm evaluate --baseline` run
# (model and GrabCut baseline on the same clicks) on each held-out microscopy set of the default
# model's training run and on the GrabCut benchmark, 20 clicks, standard clicker.
#   bash scripts/evaluate_default_model.sh            # MODEL, RUN, OUT and DATA may be overridden
# Writes OUT/<set>.json (metrics), OUT/<set>.png (mIoU against clicks) and OUT/<set>.txt (table).
# LIMIT (default 60) caps the objects per set (a seeded random subset) to keep a 2-core CPU run
# under half an hour; SETS limits the run to some sets by folder name (default: all);
# BASELINE=0 skips GrabCut (for a second model on the same sets: the baseline does not change).
# Two models side by side (default model v2 against v1, on v2's held-out files):
#   MODEL=runs/default-v2/best.pth RUN=runs/default-v2 OUT=runs/accuracy-v2 bash scripts/evaluate_default_model.sh
#   MODEL=napari-ritm.nuclei RUN=runs/default-v2 OUT=runs/accuracy-v1 BASELINE=0 bash scripts/evaluate_default_model.sh
#   python scripts/accuracy_tables.py runs/accuracy-v2 runs/accuracy-v1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL=${MODEL:-napari-ritm.nuclei}
RUN=${RUN:-training/runs/default-nuclei}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/accuracy}
LIMIT=${LIMIT:-60}
SETS=${SETS:-}
BASELINE=${BASELINE:-1}
baseline=()
[[ $BASELINE == 0 ]] || baseline=(--baseline)
for need in "$DATA/microscopy" "$DATA/benchmarks/GrabCut" "$RUN"; do
  if [[ ! -d $need ]]; then
    echo "evaluate_default_model.sh: error: folder $need not found (DATA=$DATA is the shared" \
      "data folder, absent from a plain clone; RUN=$RUN the training run); set DATA/RUN" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
.venv/bin/python scripts/make_holdout.py "$RUN" "$OUT/holdout" --data "$DATA/microscopy" "$DATA/benchmarks"
sets=("$OUT"/holdout/*/ "$DATA/benchmarks/GrabCut/")
for folder in "${sets[@]}"; do
  name=$(basename "$folder")
  [[ -z $SETS || " $SETS " == *" $name "* ]] || continue
  echo "== $name"
  .venv/bin/napari-ritm evaluate --model "$MODEL" --dataset "$folder" --max-clicks 20 --limit "$LIMIT" "${baseline[@]}" \
    --json "$OUT/$name.json" --plot "$OUT/$name.png" --per-sample "$OUT/$name.samples.json" \
    --no-progress "$@" | tee "$OUT/$name.txt"
done
