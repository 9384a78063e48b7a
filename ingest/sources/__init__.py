"""Camera sources and ``open_source``, which turns a SOURCE string into one.

SOURCE syntax (options may also be passed as keyword arguments, which win over the query):

=========================================== ===============================================
``0``, ``1``, ...                            camera device index (OpenCV VideoCapture)
``rtsp://...``, ``http(s)://...``            network stream (OpenCV VideoCapture)
``video.mp4`` or ``video:PATH``              video file
``DIR``, ``DIR/*.png`` or ``folder:DIR[?glob=*.png]``  image folder, sorted by name
``replay:PATH[?split=test&shuffle=1&seed=0]`` MVTec-layout data set with ground truth
``synthetic:[?defect_probability=0.2&size=256&seed=0&count=N]``  rendered parts with truth
=========================================== ===============================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from linewatch.errors import ConfigurationError
from linewatch.ingest.sources.base import CapturedFrame, FrameError, Source, SourceError
from linewatch.ingest.sources.folder import FolderSource
from linewatch.ingest.sources.opencv import OpenCVSource
from linewatch.ingest.sources.replay import ReplaySource
from linewatch.ingest.sources.synthetic import SyntheticSource

__all__ = ["CapturedFrame", "FolderSource", "FrameError", "OpenCVSource", "ReplaySource", "Source",
           "SourceError", "SourceSpecError", "SyntheticSource", "open_source"]

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg", ".ts")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
GLOB_CHARS = set("*?[")


class SourceSpecError(ConfigurationError, ValueError):
    """A SOURCE string or option that cannot be understood; the message says what is expected."""


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _optional_int(value: Any) -> int | None:
    return None if value is None or str(value).lower() in ("", "none") else int(value)


OPTION_TYPES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "device": {"width": int, "height": int},
    "video": {},
    "folder": {"glob": str},
    "replay": {"split": str, "shuffle": _bool, "seed": int},
    "synthetic": {"defect_probability": float, "size": int, "seed": int, "count": _optional_int},
}


def _options(kind: str, query: str, extra: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    raw.update(extra)
    allowed = OPTION_TYPES[kind]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise SourceSpecError(f"unknown option(s) {', '.join(unknown)} for a {kind} source (known: {known})")
    try:
        return {name: allowed[name](value) for name, value in raw.items()}
    except (TypeError, ValueError) as exc:
        raise SourceSpecError(f"bad option for a {kind} source: {exc}") from None


def _split_query(rest: str) -> tuple[str, str]:
    target, _, query = rest.partition("?")
    return target, query


def open_source(spec: str | int, **options: Any) -> Source:
    """Build the Source that ``spec`` names (not opened yet: the camera opens it, with retries).

    Raises:
        SourceSpecError: the string or an option is not valid.
    """
    text = str(spec).strip()
    if not text:
        raise SourceSpecError("empty SOURCE; expected a device index, URL, video file, folder, "
                              "replay:PATH or synthetic:")
    try:
        return _build(text, options)
    except SourceSpecError:
        raise
    except ValueError as exc:
        raise SourceSpecError(f"SOURCE {text!r}: {exc}") from None


def _build(text: str, options: dict[str, Any]) -> Source:
    if text.isdigit():
        return OpenCVSource(int(text), **_options("device", "", options))
    if text.lower().startswith(STREAM_SCHEMES):
        return OpenCVSource(text, **_options("device", "", options))
    prefix, colon, rest = text.partition(":")
    if colon and prefix in ("replay", "synthetic", "folder", "video"):
        target, query = _split_query(rest)
        kind = prefix
        opts = _options(kind, query, options)
        if kind == "synthetic":
            if target:
                raise SourceSpecError(f"synthetic: takes options only (synthetic:?size=256), got {target!r}")
            return SyntheticSource(**opts)
        if not target:
            raise SourceSpecError(f"{kind}: needs a path, e.g. {kind}:/data/parts")
        if kind == "replay":
            return ReplaySource(target, **opts)
        if kind == "folder":
            return FolderSource(target, **opts)
        return OpenCVSource(Path(target))
    path = Path(text)
    if GLOB_CHARS & set(path.name):
        return FolderSource(path.parent, **_options("folder", "", {"glob": path.name, **options}))
    if path.is_dir():
        return FolderSource(path, **_options("folder", "", options))
    if path.suffix.lower() in VIDEO_SUFFIXES:
        _options("video", "", options)
        return OpenCVSource(path)
    if path.exists():
        raise SourceSpecError(f"{text!r} is neither a folder nor a video file ({', '.join(VIDEO_SUFFIXES)})")
    raise SourceSpecError(f"{text!r} does not exist; use folder:{text} for a folder that will appear later")
