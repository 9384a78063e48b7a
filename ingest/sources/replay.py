"""Dataset replay: an MVTec-layout split (good and defective images) with the truth of each frame."""

from __future__ import annotations

import random
import time
from pathlib import Path

from linewatch.common.images import DataError, ImageRecord, list_test, list_train_good, load_rgb
from linewatch.ingest.sources.base import CapturedFrame, FrameError, Source, SourceError

SPLITS = ("test", "train")


class ReplaySource(Source):
    """Plays ``root/<split>`` of an MVTec-layout data set; every frame carries label and defect type.

    The rate is set by the camera's ``fps``. ``shuffle`` interleaves good and defective images
    (reproducibly, from ``seed``) instead of the folder order, which groups them by type.
    """

    def __init__(self, root: str | Path, *, split: str = "test", shuffle: bool = False, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"replay split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.shuffle = shuffle
        self.seed = seed
        self._records: list[ImageRecord] = []
        self._index = 0

    @property
    def description(self) -> str:
        return f"replay of {self.root} ({self.split} split)"

    def records(self) -> list[ImageRecord]:
        """The images in the order they are played (the truth of a whole pass)."""
        try:
            records = list_test(self.root) if self.split == "test" else list_train_good(self.root)
        except (DataError, OSError) as exc:
            raise SourceError(f"{self.description}: {exc}") from None
        if self.shuffle:
            random.Random(self.seed).shuffle(records)
        return records

    def open(self) -> None:
        self._records = self.records()
        self._index = 0

    def read(self) -> CapturedFrame | None:
        if self._index >= len(self._records):
            return None
        record = self._records[self._index]
        self._index += 1
        try:
            image = load_rgb(record.path)
        except DataError as exc:
            raise FrameError(str(exc)) from None
        return CapturedFrame(image=image, capture_ns=time.time_ns(), label=record.label,
                             defect_type=None if record.label == "good" else record.defect_type,
                             source_id=f"{record.defect_type}/{record.path.name}")
