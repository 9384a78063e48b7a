"""The Source interface every camera input implements, and the frame it yields."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

import numpy as np


class SourceError(RuntimeError):
    """The source failed (cannot open, stalled, dropped its connection); the camera reopens it."""


class FrameError(RuntimeError):
    """One frame could not be read (e.g. a corrupt file); it is skipped, counted and logged."""


@dataclass(frozen=True)
class CapturedFrame:
    """One captured image (RGB uint8, H x W x 3) with its capture time and optional truth."""

    image: np.ndarray
    capture_ns: int = field(default_factory=time.time_ns)
    label: str | None = None  # "good" | "defect" for replay/synthetic sources
    defect_type: str | None = None
    source_id: str | None = None  # e.g. the file name


class Source(abc.ABC):
    """A camera input. ``open`` then ``read`` until it returns None (end of stream), then ``close``.

    ``read`` raises :class:`SourceError` for a fault (the caller closes and reopens with backoff)
    and :class:`FrameError` for one bad frame. ``live`` sources (devices, streams) keep producing
    whether or not anyone reads; recorded ones (files, folders, replay, synthetic) wait for the reader.
    """

    live: bool = False

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Short human description for log lines (no credentials)."""

    @abc.abstractmethod
    def open(self) -> None:
        """Open (or reopen from the start) the source; raise SourceError when that fails."""

    @abc.abstractmethod
    def read(self) -> CapturedFrame | None:
        """The next frame, or None at the end of a recorded stream."""

    def close(self) -> None:  # noqa: B027 - optional for sources without resources
        """Release the source's resources; safe to call more than once."""

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
