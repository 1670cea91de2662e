#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment from nothing:
# Debian's libusb-1.0-0 for open3d, torch 2.13.0, the ROS 2 PyPI wheels and the
# rest of requirements.txt, then safnet_ros itself in editable mode.
# Idempotent: make calls it whenever requirements.txt or setup.py change.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  echo "[setup] installing Debian's libusb-1.0-0 (open3d needs it)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first and pinned: on our machines this takes the local CPU wheel; a
# looser requirement would pull the newest CUDA build (several GB).
$PIP install -q torch==2.13.0
$PIP install -q -r requirements.txt
$PIP install -q --no-deps --no-build-isolation -e .
echo "[setup] $VENV ready"
