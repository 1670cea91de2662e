"""Synthetic ScanNet scenes: procedural furnished rooms rendered to RGB-D, written in ScanNet's format.

Modules, one job each: :mod:`.rooms` (layout of parts and objects),
:mod:`.meshes` (parts -> triangle meshes), :mod:`.appearance` (procedural
textures and lighting), :mod:`.render` (open3d ray casting -> RGB-D),
:mod:`.trajectory` (handheld scan path in free space), :mod:`.perturb` (sensor
models, pose errors, moved objects, lost tracking), :mod:`.fusion` (TSDF fusion,
decimation and labels of the scanned mesh), :mod:`.writer` (scene files),
:mod:`.generate` (the pipeline) and :mod:`.command` (``safnet data synth``).
"""
from __future__ import annotations
