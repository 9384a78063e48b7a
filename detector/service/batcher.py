"""Micro-batch closing rule: a batch closes at ``max_size`` items or ``max_wait_s`` after its first item.

With ``max_weight`` it also closes before its items' total weight (the detector: pixels) would
exceed the budget; an item heavier than the whole budget still forms a batch of its own.

This is the rule of Triton's dynamic batcher, DeepStream and Morpheus: a lone frame waits at
most ``max_wait_s``; under load, batches fill up and the wait disappears.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items into batches; pure logic, the clock is injectable for tests."""

    def __init__(self, max_size: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic,
                 max_weight: int | None = None) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_weight = max_weight
        self._clock = clock
        self._items: list[T] = []
        self._weights: list[int] = []
        self._opened_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def room(self) -> int:
        """How many more items fit before the batch is full."""
        return self.max_size - len(self._items)

    @property
    def weight(self) -> int:
        """Total weight of the open batch."""
        return sum(self._weights)

    def fits(self, weight: int) -> bool:
        """Whether an item of ``weight`` may join the open batch (always, when it is empty)."""
        if not self._items:
            return True
        return bool(self.room) and (self.max_weight is None or self.weight + weight <= self.max_weight)

    def add(self, item: T, weight: int = 0) -> None:
        """Add an item; the first item of a batch starts its clock."""
        if not self.fits(weight):
            raise OverflowError("batch is full; take() it first")
        if self._opened_at is None:
            self._opened_at = self._clock()
        self._items.append(item)
        self._weights.append(weight)

    def time_left(self) -> float | None:
        """Seconds until the open batch must close (0 when it must close now); None when empty."""
        if self._opened_at is None:
            return None
        if not self.room or (self.max_weight is not None and self.weight >= self.max_weight):
            return 0.0
        return max(0.0, self._opened_at + self.max_wait_s - self._clock())

    def ready(self) -> bool:
        """True when the batch is full or its first item has waited ``max_wait_s``."""
        left = self.time_left()
        return left is not None and left <= 0.0

    def take(self) -> list[T]:
        """Return the items and start a new, empty batch."""
        items, self._items, self._weights, self._opened_at = self._items, [], [], None
        return items

    def drop(self, keep: Callable[[T], bool]) -> list[T]:
        """Remove the items ``keep`` rejects (e.g. of revoked partitions); return them."""
        dropped = [item for item in self._items if not keep(item)]
        kept = [(item, weight) for item, weight in zip(self._items, self._weights, strict=True) if keep(item)]
        self._items, self._weights = [item for item, _ in kept], [weight for _, weight in kept]
        if not self._items:
            self._opened_at = None
        return dropped
