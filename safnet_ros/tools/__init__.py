"""Tools: rosbag2 conversion and replay, the demo and benchmarks."""
