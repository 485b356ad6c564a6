#!/usr/bin/env bash
# Install napari-ritm with a Qt binding (scripts/install.sh qt) and open napari with the RITM
# widget docked and the sample image loaded. Arguments go to `napari-ritm view`, e.g.:
#
#   bash scripts/launch.sh                 # the sample image
#   bash scripts/launch.sh my_cells.tif    # your own image
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh qt

# Without a display `napari-ritm view` says in one line what to do and exits with code 2.
exec "$ROOT/.venv/bin/napari-ritm" view "$@"
