"""Image folder source: the images of a folder in name order, optionally filtered by a glob."""

from __future__ import annotations

import time
from pathlib import Path

from linewatch.common.images import IMAGE_SUFFIXES, DataError, load_rgb
from linewatch.ingest.sources.base import CapturedFrame, FrameError, Source, SourceError


class FolderSource(Source):
    """Plays the images in ``folder`` (sorted by name). A missing or empty folder is a SourceError,
    so the camera keeps retrying until it appears; the listing is refreshed on every reopen."""

    def __init__(self, folder: str | Path, *, glob: str = "*") -> None:
        self.folder = Path(folder)
        self.glob = glob
        self._paths: list[Path] = []
        self._index = 0

    @property
    def description(self) -> str:
        return f"image folder {self.folder / self.glob}"

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.description}: folder does not exist")
        self._paths = sorted(p for p in self.folder.glob(self.glob)
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._paths:
            raise SourceError(f"{self.description}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self._index = 0

    def read(self) -> CapturedFrame | None:
        if self._index >= len(self._paths):
            return None
        path = self._paths[self._index]
        self._index += 1
        try:
            image = load_rgb(path)
        except DataError as exc:
            raise FrameError(str(exc)) from None
        return CapturedFrame(image=image, capture_ns=time.time_ns(), source_id=path.name)
