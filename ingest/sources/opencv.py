"""OpenCV VideoCapture source: a device index, an RTSP/HTTP(S) URL or a video file."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import cv2

from linewatch.ingest.sources.base import CapturedFrame, Source, SourceError

log = logging.getLogger(__name__)

# Passed to VideoCapture so a dead stream fails instead of blocking forever (FFmpeg backend).
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 10_000


def redact(url: str) -> str:
    """``url`` without a password (``rtsp://user:***@host``) for log lines."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", url)


class OpenCVSource(Source):
    """Frames from ``cv2.VideoCapture``. Files end (read returns None); devices and streams are live."""

    def __init__(self, target: int | str | Path, *, width: int | None = None, height: int | None = None) -> None:
        self.target: int | str = target if isinstance(target, int) else str(target)
        self.live = isinstance(target, int) or "://" in str(target)
        self.width, self.height = width, height
        self._capture: cv2.VideoCapture | None = None
        self._frames = 0

    @property
    def description(self) -> str:
        if isinstance(self.target, int):
            return f"camera device {self.target}"
        return f"stream {redact(self.target)}" if self.live else f"video file {self.target}"

    def open(self) -> None:
        self.close()
        if not self.live and not Path(str(self.target)).is_file():
            raise SourceError(f"{self.description}: no such file")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        capture = cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.description}: OpenCV could not open it")
        if self.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._capture = capture
        self._frames = 0

    def read(self) -> CapturedFrame | None:
        if self._capture is None:
            raise SourceError(f"{self.description}: read before open")
        ok, frame = self._capture.read()
        capture_ns = time.time_ns()
        if not ok or frame is None:
            if self.live:
                raise SourceError(f"{self.description}: read failed after {self._frames} frames (stalled or dropped)")
            return None
        self._frames += 1
        rgb = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB if frame.ndim == 2 else cv2.COLOR_BGR2RGB)
        source_id = None if self.live else f"{Path(str(self.target)).name}#{self._frames - 1}"
        return CapturedFrame(image=rgb, capture_ns=capture_ns, source_id=source_id)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
