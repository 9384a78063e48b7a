"""Which product the line makes at a given capture time: the changeovers a plant's PLC announces, in order.

A camera stamps each frame's ``lw-product`` with :meth:`ProductTimeline.product_at` of the frame's capture
time, so a frame captured before a changeover is scored by the old product's model even when it is published
after it. A changeover can be announced late (the PLC's timestamp is earlier than the moment the camera hears of
it); frames captured after that timestamp and already sent with the old product cannot be recalled, so they are
counted (:attr:`ProductTimeline.late_stamped`) and logged with the change, never silently mislabelled.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from linewatch.ingest.wire import WireFormatError, check_product_id

log = logging.getLogger(__name__)

KEEP_CHANGES = 64  # changeovers remembered: frames older than the oldest one kept get the oldest product
KEEP_STAMPS = 4096  # recent (capture time, product) stamps kept to count frames a late change mislabelled


@dataclass(frozen=True)
class Changeover:
    """The line makes ``product`` from ``since_ns`` (the PLC's clock when it says, else the time we heard)."""

    product: str
    since_ns: int


class ProductTimeline:
    """Thread-safe: a follower thread calls :meth:`change`, the camera's publishing thread :meth:`stamp`."""

    def __init__(self, fallback: str | None = None) -> None:
        self.fallback = fallback  # LINEWATCH_PRODUCT: in force until the plant has said anything
        self._changes: list[Changeover] = []
        self._stamps: deque[tuple[int, str | None]] = deque(maxlen=KEEP_STAMPS)
        self._lock = threading.Lock()
        self._heard = threading.Event()
        self.late_stamped = 0
        self.rejected = 0

    @property
    def changes(self) -> list[Changeover]:
        with self._lock:
            return list(self._changes)

    def wait_for_first(self, timeout_s: float) -> bool:
        """True once the plant has announced a product (or at once when it did before)."""
        return self._heard.wait(timeout_s)

    def change(self, product: str, since_ns: int | None = None) -> Changeover | None:
        """Record that the line makes ``product`` from ``since_ns`` (default: now); a bad product id is refused."""
        try:
            check_product_id(product)
        except WireFormatError as exc:
            self.rejected += 1
            log.error("product source: %s; keeping the product in force", exc)
            return None
        change = Changeover(product, time.time_ns() if since_ns is None else since_ns)
        with self._lock:
            if self._changes and self._changes[-1].product == product:
                self._heard.set()
                return None  # a repeat (retained message on reconnect, a PLC rewriting the same value)
            bisect.insort(self._changes, change, key=lambda c: c.since_ns)
            del self._changes[:-KEEP_CHANGES]
            late = sum(1 for at, stamped in self._stamps if at >= change.since_ns and stamped != product)
            self.late_stamped += late
        self._heard.set()
        log.info("changeover to %s at %d", product, change.since_ns)
        if late:
            log.warning("changeover to %s heard late: %d frames captured after it were already sent as the previous "
                        "product", product, late)
        return change

    def product_at(self, capture_ns: int) -> str | None:
        """The product in force at ``capture_ns``: the last change at or before it, else the fallback."""
        with self._lock:
            index = bisect.bisect_right(self._changes, capture_ns, key=lambda c: c.since_ns)
            if index:
                return self._changes[index - 1].product
            # before every change we know of: the oldest known product when we have forgotten older ones
            return self._changes[0].product if len(self._changes) >= KEEP_CHANGES else self.fallback

    def stamp(self, capture_ns: int) -> str | None:
        """:meth:`product_at` for a frame about to be sent, remembered so a late change can count it."""
        product = self.product_at(capture_ns)
        with self._lock:
            self._stamps.append((capture_ns, product))
        return product
