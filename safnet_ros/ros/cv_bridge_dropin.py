"""Drop-in for ``cv_bridge.CvBridge`` on :mod:`safnet_ros.ros.codecs` (numpy arrays; no OpenCV)."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from safnet_ros.errors import MessageDecodeError
from safnet_ros.ros import codecs
from safnet_ros.ros.codecs import MessageEncodeError


class FallbackCvBridgeError(MessageDecodeError, TypeError):
    """cv_bridge.CvBridgeError drop-in (also a MessageDecodeError)."""


_CV_DEPTH_NAMES = {"u1": "8U", "i1": "8S", "u2": "16U", "i2": "16S", "i4": "32S", "f4": "32F", "f8": "64F"}
_COLOUR = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


class FallbackCvBridge:
    """cv_bridge.CvBridge drop-in on codecs.py (numpy arrays; no OpenCV needed).

    ``imgmsg_to_cv2`` returns a writable C-contiguous copy; conversions among
    rgb8, bgr8, rgba8, bgra8 and mono8 are supported (mono8 from colour uses
    the BT.601 luma weights, alpha is 255 when added), anything else must be
    ``passthrough`` or the message's own encoding.
    """

    def imgmsg_to_cv2(self, img_msg: Image, desired_encoding: str = "passthrough") -> np.ndarray:
        try:
            arr = codecs.image_to_array(img_msg)
        except FallbackCvBridgeError:
            raise
        except MessageDecodeError as exc:
            raise FallbackCvBridgeError(str(exc)) from None
        source = str(img_msg.encoding)
        if desired_encoding in ("passthrough", source):
            return np.array(arr, copy=True, order="C")
        if source not in _COLOUR or desired_encoding not in _COLOUR:
            raise FallbackCvBridgeError(f"cannot convert {source!r} to {desired_encoding!r}")
        rgb = codecs.image_to_rgb(img_msg)
        if desired_encoding == "mono8":
            luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        out = rgb[:, :, ::-1] if desired_encoding.startswith("bgr") else rgb
        if desired_encoding.endswith("a8"):
            alpha = arr[:, :, 3:4] if source.endswith("a8") else np.full(rgb.shape[:2] + (1,), 255, np.uint8)
            out = np.concatenate([out, alpha], axis=2)
        return np.ascontiguousarray(out)

    def cv2_to_imgmsg(self, cvim: np.ndarray, encoding: str = "passthrough", header: Header | None = None) -> Image:
        cvim = np.asarray(cvim)
        if encoding == "passthrough":
            channels = 1 if cvim.ndim == 2 else (cvim.shape[2] if cvim.ndim == 3 else 0)
            depth = _CV_DEPTH_NAMES.get(cvim.dtype.str[1:])
            if depth is None or not 1 <= channels <= 4:
                raise FallbackCvBridgeError(f"cannot encode an array of dtype {cvim.dtype} and shape {cvim.shape}")
            encoding = f"{depth}C{channels}"
        try:
            return codecs.array_to_image(cvim, encoding, header)
        except MessageEncodeError as exc:
            raise FallbackCvBridgeError(str(exc)) from None
