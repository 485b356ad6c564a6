#!/usr/bin/env bash
# Install napari-ritm into ./.venv (idempotent: a second run with nothing changed does no work).
#
#   bash scripts/install.sh          # the package + test tools (extra "test")
#   bash scripts/install.sh qt       # the package + a Qt binding, enough to run the viewer
#
# Steps: Debian packages that Qt needs under Xvfb (only as root, only those missing), a venv made
# with $PYTHON (default python3) if there is none, torch pinned to 2.13.0 FIRST (an unpinned torch
# pulls a multi-GB CUDA build), then `pip install -e ".[EXTRAS]"`.
set -euo pipefail

EXTRAS="${1:-test}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

log() { echo "[install] $*" >&2; }

# --- 1. System packages for Qt (xcb platform) under Xvfb -------------------------------------------
APT_PACKAGES=(
  xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
  libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1
  libdbus-1-3 libfontconfig1 libglib2.0-0
)
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  APT_PACKAGES+=(python3 python3-venv)
elif ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
  APT_PACKAGES+=(python3-venv)  # Debian splits venv/ensurepip out of python3
fi

if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "system packages: all present"
  elif [ "$(id -u)" -eq 0 ]; then
    log "system packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    log "WARNING: not root, so these Debian packages were not installed: ${missing[*]}"
    log "         the viewer and GUI tests need them: sudo apt-get install ${missing[*]}"
  fi
else
  log "no apt-get: skipping system packages (Qt needs an X11/xcb or native platform plugin)"
fi

# --- 2. Virtual environment ------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    log "ERROR: $PYTHON is $("$PYTHON" --version 2>&1); napari-ritm needs Python >= 3.10 (set PYTHON=...)"
    exit 1
  }
  log "creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# --- 3. torch first, pinned ------------------------------------------------------------------------
if "$VENV/bin/python" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" \
    >/dev/null 2>&1; then
  log "torch $TORCH_VERSION: present"
else
  log "installing torch==$TORCH_VERSION"
  "${PIP[@]}" install "torch==$TORCH_VERSION"
fi

# --- 4. The project (editable) ---------------------------------------------------------------------
# The stamp records what was installed; a changed pyproject.toml or other extras reinstall.
# ("test" includes napari[pyqt6], so it also covers "qt".)
STAMP="$VENV/.napari-ritm-install"
digest="$("$VENV/bin/python" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
read -r have_digest have_extras <"$STAMP" 2>/dev/null || { have_digest=""; have_extras=""; }
covered=0
if [[ "$have_digest" == "$digest" ]] && { [[ "$have_extras" == "$EXTRAS" ]] || [[ "$EXTRAS" == qt && "$have_extras" == test ]]; }; then
  "$VENV/bin/python" -c "import napari_ritm" >/dev/null 2>&1 && covered=1
fi
if [[ "$covered" == 1 ]]; then
  log "napari-ritm[$EXTRAS]: already installed"
else
  log "installing napari-ritm[$EXTRAS] (editable)"
  "${PIP[@]}" install -e ".[$EXTRAS]"
  echo "$digest $EXTRAS" >"$STAMP"
fi
log "done: $("$VENV/bin/python" -c 'import napari_ritm, torch; print("napari-ritm", napari_ritm.__version__, "torch", torch.__version__)')"
