"""Wire format of the ``frames`` topic, version 1. The only module that encodes or decodes it.

A frame is one Kafka record:

- key: camera id (UTF-8), so that one camera's frames stay in one partition, in order;
- value: the image, encoded as ``jpeg`` (default), ``png`` (lossless) or ``raw``
  (row-major uint8 RGB, H x W x C, only when asked);
- headers (ASCII values):

  ============== ======================================================== ==========
  header          meaning                                                  required
  ============== ======================================================== ==========
  lw-version      wire-format version, ``1``                               yes
  lw-camera       camera id (equals the key; :data:`CAMERA_ID_PATTERN`)    yes
  lw-line         production line id (1-64 printable characters)           yes
  lw-seq          sequence number, monotonic per camera across restarts    yes
  lw-capture-ns   capture time, ns since the Unix epoch (UTC)              yes
  lw-encoding     ``jpeg`` | ``png`` | ``raw``                             yes
  lw-width        image width in pixels                                    yes
  lw-height       image height in pixels                                   yes
  lw-channels     1 or 3                                                   yes
  lw-label        ground truth from replay/synthetic: ``good`` | ``defect`` no
  lw-defect-type  ground-truth defect type (e.g. ``crack``)                no
  lw-source-id    source-specific id of the image (file name)              no
  lw-product      product (part type) on the line now; same rule as ids    no
  ============== ======================================================== ==========

``lw-product`` chooses the model: the detector scores the frame with the model assigned to that
product in the registry (a changeover is just the next frame carrying another product). Cameras set
it from ``LINEWATCH_PRODUCT`` (their config); it follows :data:`CAMERA_ID_PATTERN`.

Decoded images are RGB uint8 arrays of shape (H, W, 3); grayscale becomes 3 channels.

Ids are part of the format: a camera id matches :data:`CAMERA_ID_PATTERN` (the one rule of the
whole system: the camera's settings, the encoder, the decoder and the alerts API all use it), the
record key equals it, and text headers are bounded (:data:`MAX_TEXT_HEADER`), so one record can
never make an output too large to produce, a Redis key unbounded, or a URL path ambiguous.
Decoding checks the dimensions stored inside the JPEG/PNG *before* decoding, so a small
file that would expand to a huge bitmap (decompression bomb) is refused cheaply.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from linewatch.errors import DataError

WIRE_VERSION = 1
Encoding = Literal["jpeg", "png", "raw"]
ENCODINGS: tuple[str, ...] = ("jpeg", "png", "raw")
LABELS = ("good", "defect")
MAX_SIDE = 8192
MAX_PIXELS = 40_000_000
# One camera id rule for every layer: starts alphanumeric, then letters, digits, ``.``, ``_``, ``-``;
# at most 64 characters. No ``/``, ``:``, spaces or control characters (Redis keys, URLs, HTML).
CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CAMERA_ID = re.compile(CAMERA_ID_PATTERN)
MAX_LINE_ID = 64
LINE_ID_PATTERN = r"^[\x20-\x7e]{1,64}$"  # printable ASCII
MAX_TEXT_HEADER = 256  # lw-defect-type, lw-source-id
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")
DEFAULT_MAX_FUTURE_SKEW_NS = 300 * 1_000_000_000  # capture clocks may run ahead of ours by this much


class WireFormatError(DataError, ValueError):
    """A record that is not a valid version-1 frame. ``reason`` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def is_valid_camera_id(camera_id: str) -> bool:
    """True when ``camera_id`` follows :data:`CAMERA_ID_PATTERN`."""
    return bool(_CAMERA_ID.fullmatch(camera_id))


def check_camera_id(camera_id: str) -> str:
    """``camera_id`` unchanged, or :class:`WireFormatError` ``bad_camera_id`` (value shown shortened)."""
    if not is_valid_camera_id(camera_id):
        raise WireFormatError("bad_camera_id", f"camera id {camera_id[:80]!r} (length {len(camera_id)}) does not "
                                               f"match {CAMERA_ID_PATTERN}")
    return camera_id


def check_product_id(product: str) -> str:
    """``product`` unchanged, or :class:`WireFormatError` ``bad_product`` (the camera id rule applies)."""
    if not is_valid_camera_id(product):
        raise WireFormatError("bad_product", f"product {product[:80]!r} (length {len(product)}) does not "
                                             f"match {CAMERA_ID_PATTERN}")
    return product


@dataclass(frozen=True)
class FrameMeta:
    """Everything the headers carry about one frame."""

    camera_id: str
    line_id: str
    sequence: int
    capture_ns: int
    encoding: Encoding
    width: int
    height: int
    channels: int = 3
    label: str | None = None
    defect_type: str | None = None
    source_id: str | None = None
    product: str | None = None


@dataclass(frozen=True)
class EncodedFrame:
    """A frame ready for ``Producer.produce(topic, key=..., value=..., headers=...)``."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    meta: FrameMeta


def encode_image(image: np.ndarray, encoding: Encoding = "jpeg", jpeg_quality: int = 90) -> bytes:
    """Encode an RGB (H, W, 3) or grayscale (H, W) uint8 image."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"expected a non-empty uint8 image (H, W[, 3]), got {image.dtype} {image.shape}")
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif encoding == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    if not ok:
        raise ValueError(f"OpenCV could not encode the image as {encoding}")
    return bytes(buf.tobytes())


def encode_frame(image: np.ndarray, *, camera_id: str, line_id: str, sequence: int, capture_ns: int,
                 encoding: Encoding = "jpeg", jpeg_quality: int = 90, label: str | None = None,
                 defect_type: str | None = None, source_id: str | None = None,
                 product: str | None = None) -> EncodedFrame:
    """Encode ``image`` and build the key and headers of a version-1 frame."""
    check_camera_id(camera_id)
    if product is not None:
        check_product_id(product)
    if not re.fullmatch(LINE_ID_PATTERN, line_id):
        raise WireFormatError("bad_header", f"line id {line_id[:80]!r} does not match {LINE_ID_PATTERN}")
    value = encode_image(image, encoding, jpeg_quality)
    height, width = image.shape[:2]
    meta = FrameMeta(camera_id=camera_id, line_id=line_id, sequence=sequence, capture_ns=capture_ns,
                     encoding=encoding, width=width, height=height,
                     channels=1 if image.ndim == 2 else image.shape[2], label=label,
                     defect_type=defect_type, source_id=source_id, product=product)
    return EncodedFrame(key=camera_id.encode(), value=value, headers=meta_to_headers(meta), meta=meta)


def meta_to_headers(meta: FrameMeta) -> list[tuple[str, bytes]]:
    """Headers for ``meta`` (optional fields only when set)."""
    headers = [
        ("lw-version", str(WIRE_VERSION)), ("lw-camera", meta.camera_id), ("lw-line", meta.line_id),
        ("lw-seq", str(meta.sequence)), ("lw-capture-ns", str(meta.capture_ns)),
        ("lw-encoding", meta.encoding), ("lw-width", str(meta.width)), ("lw-height", str(meta.height)),
        ("lw-channels", str(meta.channels)),
    ]
    for name, value in (("lw-label", meta.label), ("lw-defect-type", meta.defect_type),
                        ("lw-source-id", meta.source_id), ("lw-product", meta.product)):
        if value is not None:
            headers.append((name, value))
    return [(name, value.encode()) for name, value in headers]


def _header_map(headers: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, raw in headers or []:
        if raw is None:
            continue
        try:
            result[name] = raw.decode("ascii") if name != "lw-camera" and name != "lw-line" else raw.decode()
        except UnicodeDecodeError:
            raise WireFormatError("bad_header", f"header {name} is not valid text") from None
    return result


def _int_header(values: dict[str, str], name: str, low: int, high: int) -> int:
    if name not in values:
        raise WireFormatError("missing_header", f"header {name} is missing")
    try:
        number = int(values[name])
    except ValueError:
        raise WireFormatError("bad_header", f"header {name}={values[name]!r} is not an integer") from None
    if not low <= number <= high:
        raise WireFormatError("bad_header", f"header {name}={number} is outside [{low}, {high}]")
    return number


def _check_text(values: dict[str, str], name: str, limit: int) -> None:
    value = values.get(name)
    if value is not None and (len(value) > limit or not _PRINTABLE.fullmatch(value)):
        raise WireFormatError("bad_header", f"header {name} ({len(value)} characters) must be 1-{limit} "
                                            "printable ASCII characters")


def decode_headers(headers: list[tuple[str, bytes | None]] | None, max_side: int = MAX_SIDE,
                   max_pixels: int = MAX_PIXELS) -> FrameMeta:
    """Parse and validate the headers of a frame record (ids, bounds, dimensions within the limits)."""
    values = _header_map(headers)
    if "lw-version" not in values:
        raise WireFormatError("missing_header", "header lw-version is missing")
    if values["lw-version"] != str(WIRE_VERSION):
        raise WireFormatError("unsupported_version",
                              f"wire-format version {values['lw-version']!r}; this build reads {WIRE_VERSION}")
    for name in ("lw-camera", "lw-line", "lw-encoding"):
        if not values.get(name):
            raise WireFormatError("missing_header", f"header {name} is missing or empty")
    check_camera_id(values["lw-camera"])
    _check_text(values, "lw-line", MAX_LINE_ID)
    _check_text(values, "lw-defect-type", MAX_TEXT_HEADER)
    _check_text(values, "lw-source-id", MAX_TEXT_HEADER)
    if "lw-product" in values:
        check_product_id(values["lw-product"])
    encoding = values["lw-encoding"]
    if encoding not in ENCODINGS:
        raise WireFormatError("bad_header", f"unknown encoding {encoding!r}")
    label = values.get("lw-label")
    if label is not None and label not in LABELS:
        raise WireFormatError("bad_header", f"header lw-label={label!r}; expected one of {LABELS}")
    width = _int_header(values, "lw-width", 1, 1 << 31)
    height = _int_header(values, "lw-height", 1, 1 << 31)
    if width > max_side or height > max_side or width * height > max_pixels:
        raise WireFormatError("oversized", f"{width}x{height} exceeds the limit of {max_side} px a side, "
                                           f"{max_pixels} pixels")
    return FrameMeta(
        camera_id=values["lw-camera"], line_id=values["lw-line"],
        sequence=_int_header(values, "lw-seq", 0, (1 << 63) - 1),
        capture_ns=_int_header(values, "lw-capture-ns", 0, (1 << 63) - 1),
        encoding=encoding,  # type: ignore[arg-type]
        width=width, height=height, channels=_int_header(values, "lw-channels", 1, 3),
        label=label, defect_type=values.get("lw-defect-type"), source_id=values.get("lw-source-id"),
        product=values.get("lw-product"),
    )


def probe_dimensions(value: bytes, encoding: str) -> tuple[int, int]:
    """(width, height) stored in a JPEG or PNG stream, read without decoding pixels."""
    if encoding == "png":
        if len(value) < 24 or value[:8] != b"\x89PNG\r\n\x1a\n" or value[12:16] != b"IHDR":
            raise WireFormatError("undecodable", "not a PNG stream")
        width, height = struct.unpack(">II", value[16:24])
        return int(width), int(height)
    if len(value) < 4 or value[:2] != b"\xff\xd8":
        raise WireFormatError("undecodable", "not a JPEG stream (no SOI marker)")
    pos = 2
    while pos + 4 <= len(value):
        if value[pos] != 0xFF:
            raise WireFormatError("undecodable", f"corrupt JPEG marker at byte {pos}")
        marker = value[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", value[pos + 2:pos + 4])[0]
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(value):
                break
            height, width = struct.unpack(">HH", value[pos + 5:pos + 9])
            return int(width), int(height)
        pos += 2 + length
    raise WireFormatError("undecodable", "truncated JPEG: no frame header found")


def check_stream(value: bytes, meta: FrameMeta, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS) -> None:
    """Check an encoded (JPEG/PNG) value against ``meta`` and the size limits before anything decodes it.

    Reads only the stream's header (decompression bombs never reach a decoder). Used by
    :func:`decode_image` and by the detector's GPU path before nvJPEG sees the bytes.
    """
    if not value:
        raise WireFormatError("empty", "the record has no image bytes")
    width, height = probe_dimensions(value, meta.encoding)
    if width == 0 or height == 0:
        raise WireFormatError("empty", f"the {meta.encoding} stream is {width}x{height}")
    if width > max_side or height > max_side or width * height > max_pixels:
        raise WireFormatError("oversized", f"the {meta.encoding} stream is {width}x{height} "
                                           f"(limit {max_side} px a side); refusing to decode")
    if (width, height) != (meta.width, meta.height):
        raise WireFormatError("dimension_mismatch",
                              f"stream is {width}x{height}, headers say {meta.width}x{meta.height}")


def decode_image(value: bytes, meta: FrameMeta, max_side: int = MAX_SIDE,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a frame's value to an RGB uint8 (H, W, 3) array, checking it against ``meta``."""
    if not value:
        raise WireFormatError("empty", "the record has no image bytes")
    if meta.encoding == "raw":
        expected = meta.width * meta.height * meta.channels
        if len(value) != expected:
            raise WireFormatError("dimension_mismatch", f"raw frame has {len(value)} bytes, headers say {expected}")
        image: np.ndarray = np.frombuffer(value, dtype=np.uint8).reshape(meta.height, meta.width, meta.channels)
    else:
        check_stream(value, meta, max_side, max_pixels)
        decoded = cv2.imdecode(np.frombuffer(value, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            raise WireFormatError("undecodable", f"OpenCV could not decode the {meta.encoding} stream")
        if decoded.shape[:2] != (meta.height, meta.width):
            raise WireFormatError("dimension_mismatch", f"decoded {decoded.shape[1]}x{decoded.shape[0]}, "
                                                        f"headers say {meta.width}x{meta.height}")
        if decoded.dtype != np.uint8:
            raise WireFormatError("undecodable", f"{decoded.dtype} images are not supported, only 8-bit")
        image = decoded
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if meta.encoding == "raw":
        return np.ascontiguousarray(image)
    if image.flags.c_contiguous and image.flags.writeable:
        # In place: a second full-size copy would double the memory of the largest frames.
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class NoKey:
    """Type of :data:`NO_KEY`: "no record around these headers", distinct from a record without a key."""


NO_KEY = NoKey()


def check_record(meta: FrameMeta, key: bytes | None, now_ns: int,
                 max_future_skew_ns: int = DEFAULT_MAX_FUTURE_SKEW_NS) -> None:
    """Checks that need the record around the headers: key == ``lw-camera``; capture time not in the future.

    A record keyed by another camera would land in that camera's partition and results; a capture
    time far ahead would make every later real frame look old to per-camera ordering rules.
    """
    if key != meta.camera_id.encode():
        shown = key[:80] if key is not None else None
        raise WireFormatError("key_mismatch", f"record key {shown!r} is not the lw-camera id {meta.camera_id!r}")
    if meta.capture_ns > now_ns + max_future_skew_ns:
        ahead_s = (meta.capture_ns - now_ns) / 1e9
        raise WireFormatError("future_capture", f"capture time is {ahead_s:.0f}s in the future "
                                                f"(allowed skew {max_future_skew_ns / 1e9:.0f}s)")


def decode_frame(value: bytes | None, headers: list[tuple[str, bytes | None]] | None,
                 max_side: int = MAX_SIDE, *, key: bytes | NoKey | None = NO_KEY, now_ns: int | None = None,
                 max_future_skew_ns: int = DEFAULT_MAX_FUTURE_SKEW_NS,
                 max_pixels: int = MAX_PIXELS) -> tuple[FrameMeta, np.ndarray]:
    """Validate headers, the record key and capture time, and decode the image of one frame record.

    Consumers pass the record's ``key`` (None for a record without one); :data:`NO_KEY` skips the
    record checks, for tools that only hold a value and headers.
    """
    meta = decode_headers(headers, max_side, max_pixels)
    image = decode_image(value or b"", meta, max_side, max_pixels)
    if not isinstance(key, NoKey):
        check_record(meta, key, time.time_ns() if now_ns is None else now_ns, max_future_skew_ns)
    return meta, image
