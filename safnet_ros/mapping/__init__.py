"""Semantic voxel mapping without ROS: labelled clouds fused over time into one map in the fixed frame.

:class:`~safnet_ros.mapping.voxel_map.SemanticVoxelMap` fuses per-point class
probabilities into voxels (bounded memory, eviction farthest from the sensor);
:mod:`safnet_ros.mapping.map_ply` saves and loads it as a PLY;
:mod:`safnet_ros.mapping.score` transfers its labels to a scene mesh and scores
them with the evaluator's metrics; :mod:`safnet_ros.mapping.commands` is
``safnet map score`` and :mod:`safnet_ros.mapping.bench` ``safnet bench map``.
"""
from safnet_ros.mapping.voxel_map import FUSION_RULES, IntegrateStats, MapSnapshot, SemanticVoxelMap

__all__ = ["FUSION_RULES", "IntegrateStats", "MapSnapshot", "SemanticVoxelMap"]
