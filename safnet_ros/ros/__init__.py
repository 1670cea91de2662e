"""ROS 2 integration. The only sub-package that imports rclpy."""
