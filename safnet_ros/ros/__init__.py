"""ROS 2 integration. The only sub-package that imports rclpy."""
# [robot hook: clean stop] started as the node: Ctrl-C/SIGTERM while Python imports is one line, exit 0
from safnet_ros.engine.cpu_allocator import tune_cpu_allocator as _tune_cpu_allocator
from safnet_ros.ros import early_signals as _early_signals

if _early_signals.node_program():
    _early_signals.install()
    # Before numpy, torch and rclpy start threads: glibc hands a new thread one of the arenas that
    # exist by then, so tuned later, the inference worker can still get one of its own (engine/cpu_allocator.py)
    _tune_cpu_allocator()
