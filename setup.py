"""safnet_ros: ament_python package (colcon) that also installs with pip anywhere.

In a ROS 2 workspace ``colcon build`` installs the package, its launch files,
config and shipped models under ``share/safnet_ros`` and the node executables
under ``lib/safnet_ros`` (so ``ros2 run safnet_ros segment_node`` works).
Elsewhere ``pip install .`` installs the same Python package and the ``safnet``
command; see README.md.
"""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "safnet_ros"


def _files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern) if os.path.isfile(p))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*.py")),
        (f"share/{PACKAGE}/config", _files("config/*")),
        (f"share/{PACKAGE}/models", _files("models/*")),
    ],
    package_data={PACKAGE: ["py.typed"]},
    install_requires=[
        "setuptools",
        "numpy",
        "scipy",
        "pykdtree",  # faster CPU neighbour search; optional at run time (scipy fallback)
        "torch",
        "pyyaml",
        "pillow",
        "tqdm",
        "matplotlib",
        "open3d",
        "rosbags",
    ],
    zip_safe=False,
    maintainer="safnet_ros developers",
    maintainer_email="safnet-ros@example.org",
    description="SAFNet similarity-aware 2D-3D fusion for point cloud semantic segmentation, as a ROS 2 node",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "safnet = safnet_ros.cli:main",
            "segment_node = safnet_ros.ros.segment_node:main",
        ],
    },
)
