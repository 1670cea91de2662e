"""Where the node may write and read its maps: one directory, fixed when the node starts.

A peer on the DDS domain can call ``~/save_map`` and ``~/load_map`` and may set
``map_save_path``; none of that may make the node write outside the directory it
was started with, or overwrite a file that is not one of its maps.
:class:`MapStore` is that rule (no rclpy here); docs/reliability.md ("Security:
what a DDS peer can do") lists the guarantees. Saves are atomic (temp file +
rename in the directory) and overwrite only our map PLYs (:func:`is_map_file`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from safnet_ros.data.ply import read_ply_comments
from safnet_ros.errors import DataFormatError, SafnetError
from safnet_ros.mapping.map_ply import MAGIC_COMMENT, MapSaveError, comment_value, load_map, save_map
from safnet_ros.mapping.voxel_map import MapSnapshot, SemanticVoxelMap

#: Sub-folder of $ROS_HOME (or ~/.ros) that holds the node's maps by default.
DEFAULT_SUBDIR = "safnet_maps"


class MapPathError(SafnetError, ValueError):
    """A requested map file lies outside the map directory, or is not a map we may overwrite."""


def default_map_directory() -> Path:
    """``$ROS_HOME/safnet_maps`` (ROS 2's per-user folder), else ``~/.ros/safnet_maps``; absolute."""
    ros_home = os.environ.get("ROS_HOME")
    base = Path(os.path.expanduser(ros_home)) if ros_home else Path(os.path.expanduser("~")) / ".ros"
    return Path(os.path.abspath(base / DEFAULT_SUBDIR))


def is_map_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular file whose PLY header says it is a safnet semantic voxel map."""
    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return False
    try:
        return MAGIC_COMMENT in read_ply_comments(p)
    except (SafnetError, OSError):
        return False


def map_frame(path: str | os.PathLike) -> Optional[str]:
    """The ``comment frame ...`` of a map PLY (None when the file has none)."""
    return comment_value(read_ply_comments(path), "frame")


def check_overwritable(path: str | os.PathLike, what: str = "map file") -> None:
    """MapPathError unless ``path`` is absent or one of our map PLYs (never a user's file, a folder or a link)."""
    p = Path(path)
    if p.is_symlink():
        raise MapPathError(f"{p}: the {what} is a symbolic link; not overwritten")
    if p.is_dir():
        raise MapPathError(f"{p}: the {what} is a folder; give a file name ending in .ply")
    if p.exists() and not p.is_file():
        raise MapPathError(f"{p}: the {what} exists and is not a regular file; not overwritten")
    if p.exists() and not is_map_file(p):
        raise MapPathError(f"{p}: the {what} exists and is not a safnet map PLY; not overwritten")


class MapStore:
    """The node's map directory (see the module docstring). ``directory`` '' = the default."""

    def __init__(self, directory: str | os.PathLike = ""):
        text = os.fspath(directory).strip() if directory is not None else ""
        self.directory = Path(os.path.abspath(os.path.expanduser(text))) if text else default_map_directory()

    def resolve(self, name: str | os.PathLike) -> Path:
        """The path of map ``name`` inside the directory; MapPathError when it would lie outside it
        (``..``, an absolute path elsewhere, a symbolic link leading out) or is not a ``.ply`` name."""
        text = os.fspath(name).strip()
        if not text or "\x00" in text:
            raise MapPathError(f"map file name {text!r} is empty or invalid")
        candidate = Path(os.path.expanduser(text))
        if not candidate.is_absolute():
            candidate = self.directory / candidate
        root = Path(os.path.realpath(self.directory))
        real = Path(os.path.realpath(candidate))
        if real == root or root not in real.parents:
            raise MapPathError(f"{text}: map files are read and written only inside the map directory "
                               f"{self.directory} (map_directory, fixed at start); this path leads to {real}")
        if real.suffix.lower() != ".ply":
            raise MapPathError(f"{text}: a map file name must end in .ply")
        return real

    def save(self, snap: MapSnapshot, name: str | os.PathLike, frame_id: str) -> Path:
        """Write ``snap`` as ``name`` in the directory (creating it); MapPathError / MapSaveError with the reason."""
        path = self.resolve(name)
        check_overwritable(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MapSaveError(f"{path}: cannot save the map: its folder {path.parent} cannot be created "
                               f"({exc.strerror or exc})") from None
        self.resolve(path)  # a link planted meanwhile in a parent still cannot lead out
        return save_map(path, snap, frame_id=frame_id)

    def load(self, name: str | os.PathLike, frame_id: str, voxel_size: Optional[float] = None,
             max_voxels: Optional[int] = None, anywhere: bool = False) -> SemanticVoxelMap:
        """The map ``name`` (inside the directory, unless ``anywhere``: the operator's ``map_file``).

        DataFormatError naming the file when it was saved in another frame than ``frame_id``, or
        with another voxel size than ``voxel_size`` (when given): its voxels would be misplaced.
        """
        path = Path(os.path.abspath(os.path.expanduser(os.fspath(name)))) if anywhere else self.resolve(name)
        saved_in = map_frame(path) or "map"
        if saved_in != frame_id:
            raise DataFormatError(path, f"the map was saved in frame {saved_in!r}; this node maps in {frame_id!r} "
                                        "(fixed_frame): its voxels would be misplaced")
        vmap = load_map(path, max_voxels=max_voxels)
        if voxel_size is not None and abs(vmap.voxel_size - float(voxel_size)) > 1e-9 * max(1.0, float(voxel_size)):
            raise DataFormatError(path, f"voxel size {vmap.voxel_size:g} m, the node's map_voxel_size is "
                                        f"{float(voxel_size):g} m")
        return vmap
