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

if [[ "$(uname -s)" == Linux && -z "${DISPLAY:-}" && -z "${WAYLAND_DISPLAY:-}" ]]; then
  echo "[launch] no display found (DISPLAY is not set). On a remote machine use X forwarding" >&2
  echo "         (ssh -X) or run: xvfb-run -a bash scripts/launch.sh (invisible, for testing)" >&2
fi
exec "$ROOT/.venv/bin/napari-ritm" view "$@"
