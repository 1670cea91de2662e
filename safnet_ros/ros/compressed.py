"""sensor_msgs/CompressedImage as image_transport sends it: JPEG / PNG colour and compressedDepth PNG depth.

Layouts as the image_transport_plugins write them (docs/ros_node.md, "Compressed images"): colour
``<topic>/compressed`` holds a complete JPEG or PNG file (a standard image: it decodes to RGB as it
stands), ``format`` ``"jpeg"`` / ``"png"`` or ``"<encoding>; <jpeg|png> compressed <bgr8|...>"``; depth
``<topic>/compressedDepth`` holds a 12-byte ConfigHeader then a 16-bit PNG, ``format``
``"<16UC1|32FC1>; compressedDepth[ png]"`` (the ``rvl`` variant is not supported).

Decoders return what :mod:`safnet_ros.ros.codecs` returns for raw images and raise
:class:`~safnet_ros.errors.MessageDecodeError` in one line; the encoders (bags, tests) raise
:class:`MessageEncodeError`. Duck-typed (rclpy and rosbags messages alike); no rclpy.
"""
from __future__ import annotations

import array
import io
import struct
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from safnet_ros.errors import MessageDecodeError, MessageEncodeError

__all__ = ["COMPRESSED_SUFFIX", "COMPRESSED_DEPTH_SUFFIX", "COLOR_JPEG_FORMAT", "COLOR_PNG_FORMAT", "DEPTH_PNG_FORMAT",
           "CONFIG_HEADER", "is_compressed", "compressed_topics", "compressed_to_rgb", "compressed_depth_to_metres",
           "encode_color", "encode_depth_mm"]

#: image_transport's topic suffixes: ``<base>/compressed`` and ``<base>/compressedDepth``.
COMPRESSED_SUFFIX = "compressed"
COMPRESSED_DEPTH_SUFFIX = "compressedDepth"
#: ``format`` strings the image_transport plugins write for an rgb8 image and a 16UC1 depth image.
COLOR_JPEG_FORMAT = "rgb8; jpeg compressed bgr8"
COLOR_PNG_FORMAT = "rgb8; png compressed bgr8"
DEPTH_PNG_FORMAT = "16UC1; compressedDepth png"
#: compressed_depth_image_transport's ConfigHeader: int32 format (0 = INV_DEPTH), float32 depthParam[2].
CONFIG_HEADER = struct.Struct("<iff")

_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: PIL modes a colour file may decode to; each becomes RGB (alpha and palette resolved by PIL).
_COLOR_MODES = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"}
#: colour encodings whose ``"<encoding>; <codec> compressed <target>"`` file compressed_image_transport's
#: subscriber reads as red/blue swapped unless ``<target>`` is bgr8 / bgr16 (its "compressed bgr" test).
_SWAPPED_UNLESS_BGR = {"rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16"}


def is_compressed(msg: Any) -> bool:
    """True for a sensor_msgs/CompressedImage (it has ``format``; an Image has ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def compressed_topics(rgb_topic: str, depth_topic: str) -> tuple[str, str]:
    """The image_transport topics of a raw colour and depth topic: ``(<rgb>/compressed, <depth>/compressedDepth)``."""
    return f"{rgb_topic.rstrip('/')}/{COMPRESSED_SUFFIX}", f"{depth_topic.rstrip('/')}/{COMPRESSED_DEPTH_SUFFIX}"


def message_bytes(data: Any, what: str) -> np.ndarray:
    """``msg.data`` (array.array('B'), bytes, memoryview, uint8 ndarray or list) as a flat uint8 array: how
    these decoders and those of :mod:`safnet_ros.ros.codecs` read every message's bytes."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise MessageDecodeError(f"{what}: data must be uint8 bytes, got dtype {data.dtype}")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        try:
            return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        except (TypeError, ValueError) as exc:
            raise MessageDecodeError(f"{what}: data is not a byte buffer ({exc})") from None
    try:
        out = np.asarray(data)
        if out.size and (out.dtype.kind not in "ui" or out.min() < 0 or out.max() > 255):
            raise ValueError("values outside 0..255")
        return out.astype(np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageDecodeError(f"{what}: data is not a sequence of bytes ({exc})") from None


def _open_image(payload: bytes, what: str) -> Image.Image:
    """The decoded PIL image of a complete JPEG / PNG file (pixels loaded)."""
    try:
        img = Image.open(io.BytesIO(payload))
        img.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MessageDecodeError(f"{what}: data is not a readable image ({exc})") from None
    return img


def _color_codec(fmt: str, what: str) -> str:
    """``"jpeg"`` or ``"png"`` from a colour ``format`` string (plain or image_transport style)."""
    text = fmt.lower()
    if "compresseddepth" in text:
        raise MessageDecodeError(f"{what}: format {fmt!r} is a compressedDepth image, not a colour image "
                                 "(use the <topic>/compressed topic for colour)")
    codec = text.split(";", 1)[1] if ";" in text else text
    for name, aliases in (("jpeg", ("jpeg", "jpg")), ("png", ("png",))):
        if any(alias in codec for alias in aliases):
            return name
    raise MessageDecodeError(f"{what}: format {fmt!r} names no supported codec (jpeg, png)")


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """A colour sensor_msgs/CompressedImage as C-contiguous ``(H, W, 3)`` uint8 RGB.

    JPEG or PNG as ``format`` says; the bytes must be of that kind.  Grey,
    palette and alpha images become RGB; 16-bit colour PNGs keep the high byte.
    Channel order as compressed_image_transport's subscriber reads it: a
    standard file for a plain format or ``... compressed bgr8``; red and blue
    swapped for a colour encoding whose target is another (``rgb8; jpeg compressed rgb8``).
    """
    what = "CompressedImage"
    fmt = str(msg.format)
    codec = _color_codec(fmt, what)
    payload = message_bytes(msg.data, what).tobytes()
    magic = _JPEG_MAGIC if codec == "jpeg" else _PNG_MAGIC
    if not payload.startswith(magic):
        raise MessageDecodeError(f"{what}: format {fmt!r} but the {len(payload)} data bytes are not a "
                                 f"{codec.upper()} file")
    img = _open_image(payload, what)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey PNG
        grey = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode not in _COLOR_MODES:
        raise MessageDecodeError(f"{what}: image mode {img.mode!r} is not a colour image")
    if img.mode != "RGB":
        img = img.convert("RGB")
    rgb = np.asarray(img)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise MessageDecodeError(f"{what}: image is {rgb.shape[1]}x{rgb.shape[0]} (no pixels)")
    encoding, _, target = fmt.partition(";")
    if target and encoding in _SWAPPED_UNLESS_BGR and "compressed bgr" not in target:
        rgb = rgb[:, :, ::-1]  # e.g. "rgb8; jpeg compressed rgb8": an RGB buffer given to cv::imencode as BGR
    return np.ascontiguousarray(rgb)


def _depth_layout(fmt: str, what: str) -> str:
    """The raw encoding (``16UC1`` / ``32FC1``) of a compressedDepth ``format``; only its png variant is read."""
    if ";" not in fmt or "compresseddepth" not in fmt.lower():
        raise MessageDecodeError(f"{what}: format {fmt!r} is not a compressedDepth image "
                                 f"(expected e.g. {DEPTH_PNG_FORMAT!r})")
    encoding, rest = (part.strip() for part in fmt.split(";", 1))
    codec = rest[len("compressedDepth"):].strip().lower() if rest.lower().startswith("compresseddepth") else "?"
    if codec not in ("", "png"):
        raise MessageDecodeError(f"{what}: compressedDepth codec {codec!r} is not supported (png only)")
    if encoding not in ("16UC1", "mono16", "32FC1"):
        raise MessageDecodeError(f"{what}: compressedDepth of {encoding!r}; depth must be 16UC1 (mm) or 32FC1 (m)")
    return encoding


def compressed_depth_to_metres(msg: Any) -> np.ndarray:
    """A compressedDepth sensor_msgs/CompressedImage as ``(H, W)`` float32 metres; 0 marks invalid pixels.

    16UC1: the PNG's millimetres / 1000.  32FC1: the PNG holds quantised inverse depth ``q``, metres =
    ``depthParam[0] / (q - depthParam[1])`` (q == 0: no return); non-finite or non-positive depths become 0.
    """
    what = "CompressedImage (compressedDepth)"
    encoding = _depth_layout(str(msg.format), what)
    payload = message_bytes(msg.data, what).tobytes()
    if len(payload) <= CONFIG_HEADER.size:
        raise MessageDecodeError(f"{what}: data holds {len(payload)} bytes; a {CONFIG_HEADER.size}-byte "
                                 "ConfigHeader and a PNG are needed")
    _, quant_a, quant_b = CONFIG_HEADER.unpack_from(payload)
    png = payload[CONFIG_HEADER.size:]
    if not png.startswith(_PNG_MAGIC):
        raise MessageDecodeError(f"{what}: the data after the {CONFIG_HEADER.size}-byte ConfigHeader is not a PNG")
    img = _open_image(png, what)
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise MessageDecodeError(f"{what}: the PNG is mode {img.mode!r}; compressedDepth needs a 16-bit "
                                 "single-channel PNG")
    raw = np.asarray(img)
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise MessageDecodeError(f"{what}: image is {raw.shape[1]}x{raw.shape[0]} (no pixels)")
    if encoding != "32FC1":
        return raw.astype(np.float32) * np.float32(0.001)
    q = raw.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(quant_a) / (q - np.float32(quant_b))
    depth[(q == 0) | ~np.isfinite(depth) | (depth <= 0)] = 0.0
    return depth.astype(np.float32, copy=False)


def encode_color(rgb: np.ndarray, codec: str = "jpeg", quality: int = 90) -> tuple[str, bytes]:
    """``(format, data)`` of a colour CompressedImage from ``(H, W, 3)`` uint8 RGB, as the plugin writes an rgb8 image.

    codec ``"jpeg"`` (``quality`` 1..100) or ``"png"``.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or 0 in arr.shape[:2]:
        raise MessageEncodeError(f"colour must be a non-empty (H, W, 3) uint8 array, got {arr.shape} {arr.dtype}")
    if codec not in ("jpeg", "png"):
        raise MessageEncodeError(f"colour codec must be jpeg or png, got {codec!r}")
    if not 1 <= int(quality) <= 100:
        raise MessageEncodeError(f"JPEG quality must be 1..100, got {quality}")
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(arr))
    if codec == "jpeg":
        img.save(buf, format="JPEG", quality=int(quality))
        return COLOR_JPEG_FORMAT, buf.getvalue()
    img.save(buf, format="PNG", compress_level=1)
    return COLOR_PNG_FORMAT, buf.getvalue()


def encode_depth_mm(mm: np.ndarray, png_level: int = 1) -> tuple[str, bytes]:
    """``(format, data)`` of a compressedDepth CompressedImage from ``(H, W)`` uint16 millimetres.

    The 16UC1 layout: a zeroed ConfigHeader (format 0, depthParam unused) then a
    16-bit PNG at zlib level ``png_level`` (0..9; 1 is fast and decodes as fast).
    """
    arr = np.asarray(mm)
    if arr.ndim != 2 or arr.dtype != np.uint16 or 0 in arr.shape:
        raise MessageEncodeError(f"depth must be a non-empty (H, W) uint16 millimetre array, got {arr.shape} {arr.dtype}")
    if not 0 <= int(png_level) <= 9:
        raise MessageEncodeError(f"PNG level must be 0..9, got {png_level}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16)).save(
        buf, format="PNG", compress_level=int(png_level))
    return DEPTH_PNG_FORMAT, CONFIG_HEADER.pack(0, 0.0, 0.0) + buf.getvalue()
