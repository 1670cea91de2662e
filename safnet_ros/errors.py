"""The package's own exception types.

Every error we raise on bad input derives from :class:`SafnetError`, so callers
(the CLI, the node) can report it as one clear line instead of a traceback.
"""
from __future__ import annotations

import os


class SafnetError(Exception):
    """Base class for every documented error of safnet_ros."""


class DataFormatError(SafnetError, ValueError):
    """A file does not follow the format we read (ScanNet .sens, PLY, tsv, ...).

    The message always names the file and says what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class MissingDataError(SafnetError, FileNotFoundError):
    """A file or folder that the operation needs does not exist."""

    def __init__(self, path: str | os.PathLike, what: str = "required file"):
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {what} is missing")


class MessageDecodeError(SafnetError, ValueError):
    """A ROS message (PointCloud2, Image, CameraInfo) cannot be decoded as it stands."""


class MessageEncodeError(SafnetError, ValueError):
    """An array cannot be encoded as the requested ROS message (wrong shape, dtype, encoding)."""


class ModelLoadError(SafnetError, RuntimeError):
    """A model file is missing, corrupt, or was saved for another configuration."""


class ConfigError(SafnetError, ValueError):
    """A configuration value is out of range or inconsistent."""
