"""safnet_ros: SAFNet similarity-aware 2D-3D fusion for point cloud semantic segmentation.

Architecture (the folders):
  data/      ScanNet I/O (.sens, PLY, labels tsv, scene.txt), synthetic scenes, preprocessing
  geometry/  cameras, back-projection, neighbours, chunks, view selection
  model/     2D (ResNet34-UNet), 3D (PointNet++), similarity (GSM, CSM), fusion, losses
  engine/    training, evaluation, inference
  ros/       the rclpy node, message codecs, synchronisation, TF (the only place rclpy is imported)
  tools/     rosbag2 conversion and replay, the demo, benchmarks
"""
__version__ = "0.1.0"
