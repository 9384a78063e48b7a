"""Per-camera sequence numbers that continue across producer restarts and never repeat.

The state file (``<state_dir>/<camera>.seq.json``) holds ``next``: the first number not yet
handed out *or reserved*. Numbers are reserved in blocks: before handing out number ``n`` the
store makes sure the file already says ``next >= n + 1`` (written atomically: temp file, fsync,
rename, fsync of the folder). So:

- clean stop (``close``): the file gets the exact next number; the restart continues without a gap;
- crash (kill -9, power loss): the restart begins at the end of the reserved block, so numbers
  skip at most ``block`` values but are never reused. Consumers must expect gaps, not repeats.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from linewatch.errors import DataError


class SequenceStateError(DataError, RuntimeError):
    """The state file exists but cannot be read; refusing to guess and risk repeating numbers."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SequenceStore:
    """Hands out monotonic sequence numbers for one camera, persisted in ``state_dir``."""

    def __init__(self, state_dir: str | Path, camera_id: str, block: int = 1000) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.path = Path(state_dir) / f"{camera_id}.seq.json"
        self.camera_id = camera_id
        self.block = block
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._next = self._load()
        self._reserved = self._next  # nothing reserved by this process yet

    def _load(self) -> int:
        if not self.path.exists():
            return 0
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            value = int(data["next"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SequenceStateError(f"cannot read sequence state {self.path}: {exc}; fix or remove it "
                                     f"(removing restarts camera {self.camera_id} at 0)") from None
        if value < 0:
            raise SequenceStateError(f"sequence state {self.path} has a negative next number {value}")
        return value

    def _write(self, value: int) -> None:
        _atomic_write(self.path, json.dumps({"camera": self.camera_id, "next": value}) + "\n")

    @property
    def peek(self) -> int:
        """The number the next call to :meth:`next` returns."""
        return self._next

    def next(self) -> int:
        """The next sequence number (reserving a new block on disk first when needed)."""
        with self._lock:
            if self._next >= self._reserved:
                self._reserved = self._next + self.block
                self._write(self._reserved)
            number = self._next
            self._next += 1
            return number

    def close(self) -> None:
        """Record the exact next number so a restart continues without a gap."""
        with self._lock:
            self._write(self._next)
            self._reserved = self._next
