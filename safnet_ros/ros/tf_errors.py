"""The tf2 exception classes: ``tf2_ros``'s where it imports, else drop-ins (SafnetError subclasses).

The drop-in buffer raises whatever is bound here, so ``except
compat.ExtrapolationException`` catches its errors on both paths.
``SAFNET_FORCE_ROS_FALLBACK=1`` (before the import) binds the drop-ins even
where tf2_ros exists.
"""
from __future__ import annotations

import os
from typing import Any

from safnet_ros.errors import SafnetError

FORCE_FALLBACK = os.environ.get("SAFNET_FORCE_ROS_FALLBACK", "").strip().lower() in ("1", "true", "yes")


class FallbackTransformException(SafnetError):
    """Base of the drop-in tf2 errors (tf2_ros.TransformException)."""


class FallbackLookupException(FallbackTransformException):
    """A frame is unknown to the buffer."""


class FallbackConnectivityException(FallbackTransformException):
    """The two frames are in different trees."""


class FallbackExtrapolationException(FallbackTransformException):
    """The requested time lies outside the data of some link of the chain."""


class FallbackInvalidArgumentException(FallbackTransformException):
    """An empty frame id or a malformed transform."""


class FallbackTimeoutException(FallbackTransformException):
    """Reserved for API parity (tf2_ros raises it from async waits)."""


TransformException: Any = FallbackTransformException
LookupException: Any = FallbackLookupException
ConnectivityException: Any = FallbackConnectivityException
ExtrapolationException: Any = FallbackExtrapolationException
InvalidArgumentException: Any = FallbackInvalidArgumentException
TimeoutException: Any = FallbackTimeoutException

if not FORCE_FALLBACK:
    try:
        import tf2_ros as _tf2_ros

        TransformException = _tf2_ros.TransformException
        LookupException = _tf2_ros.LookupException
        ConnectivityException = _tf2_ros.ConnectivityException
        ExtrapolationException = _tf2_ros.ExtrapolationException
        InvalidArgumentException = _tf2_ros.InvalidArgumentException
        TimeoutException = _tf2_ros.TimeoutException
    except ImportError:
        pass
