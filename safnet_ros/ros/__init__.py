"""ROS 2 integration. The only sub-package that imports rclpy."""
# [robot hook: clean stop] started as the node: Ctrl-C/SIGTERM while Python imports is one line, exit 0
from safnet_ros.ros import early_signals as _early_signals

if _early_signals.node_program():
    _early_signals.install()
