"""Semantic voxel mapping without ROS: labelled clouds fused over time into one map in the fixed frame.

:class:`~safnet_ros.mapping.voxel_map.SemanticVoxelMap` is the map; :mod:`~safnet_ros.mapping.map_ply`
saves and loads it, :mod:`~safnet_ros.mapping.score` scores it on a scene's mesh
(``safnet map score``), :mod:`~safnet_ros.mapping.bench` is ``safnet bench map``.
"""
from safnet_ros.mapping.voxel_map import FUSION_RULES, IntegrateStats, MapSnapshot, SemanticVoxelMap

__all__ = ["FUSION_RULES", "IntegrateStats", "MapSnapshot", "SemanticVoxelMap"]
