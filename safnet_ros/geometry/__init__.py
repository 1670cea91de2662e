"""Geometry: cameras, back-projection, neighbour search, chunks and view selection (numpy/torch, no ROS)."""
