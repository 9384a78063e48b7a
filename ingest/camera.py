"""The camera run loop: capture thread -> bounded queue -> encode, size guard, sequence, produce.

Capture and publishing run in separate threads so a slow broker never stalls a live camera: the
bounded queue between them either drops its oldest frame (counted as ``queue_full``) or blocks the
capture, as configured. Source faults are retried with exponential backoff (full jitter); the loop never exits on
one. ``run_camera`` is the public, blocking entry point.
"""

from __future__ import annotations

import enum
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from linewatch.common.topics import TopicError, ensure_topics
from linewatch.ingest.metrics import DROP_ENCODE_ERROR, DROP_OVERSIZE, DROP_QUEUE_FULL, DROP_UNSENT, CameraMetrics
from linewatch.ingest.producer import FrameProducer, fit_to_limit
from linewatch.ingest.product_sources import ProductFollower, product_follower, wait_for_product
from linewatch.ingest.product_timeline import ProductTimeline
from linewatch.ingest.sequence import SequenceStore
from linewatch.ingest.settings import CameraSettings
from linewatch.ingest.sources import CapturedFrame, FrameError, Source, SourceError, open_source
from linewatch.ingest.wire import EncodedFrame, encode_frame

__all__ = ["Camera", "CameraSettings", "CameraStats", "run_camera"]

log = logging.getLogger(__name__)


@dataclass
class CameraStats:
    """What one run did. ``sent`` counts frames the broker acknowledged."""

    camera_id: str
    captured: int = 0
    sent: int = 0
    bytes_sent: int = 0
    delivery_errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    open_failures: int = 0
    reopens: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    elapsed_s: float = 0.0
    late_stamped: int = 0  # frames sent with the old product because its changeover was announced late

    @property
    def dropped_total(self) -> int:
        """Frames captured but not sent, all reasons."""
        return sum(self.dropped.values())


class CaptureState(enum.Enum):
    """Where the capture thread is: CLOSED (open the source next), OPEN (read frames), DONE (exit)."""

    CLOSED = "closed"
    OPEN = "open"
    DONE = "done"


@dataclass
class _Capture:
    """The capture thread's mutable state: the source's state, the retry ceiling, and the frame schedule."""

    delay: float  # current backoff ceiling (s); reset by the first frame after a fault
    interval: float  # seconds between frames, 0 for as fast as the source gives them
    next_due: float  # monotonic time the next frame is due
    state: CaptureState = CaptureState.CLOSED
    failing: bool = False  # a fault happened since the last good frame (to log the recovery)
    frames_this_pass: int = 0  # frames read since the source was (re)opened


class Camera:
    """One camera: a source, its capture thread, and the publishing loop (see module docstring)."""

    def __init__(self, settings: CameraSettings, source: Source | str | None = None, *,
                 metrics: CameraMetrics | None = None, producer: FrameProducer | None = None,
                 stop_event: threading.Event | None = None, products: ProductTimeline | None = None) -> None:
        self.settings = settings
        # the product each frame carries: the PLC's changeovers when a product source is set, else settings.product
        self.products = products or ProductTimeline(fallback=settings.product)
        self.source = open_source(settings.source if source is None else source) \
            if not isinstance(source, Source) else source
        self.metrics = metrics or CameraMetrics()
        self.stop_event = stop_event or threading.Event()
        self.stats = CameraStats(camera_id=settings.camera_id)
        policy = settings.queue_policy
        self.drop_oldest = policy == "drop-oldest" or (policy == "auto" and self.source.live)
        self._queue: queue.Queue[CapturedFrame] = queue.Queue(maxsize=settings.queue_size)
        self._capture_done = threading.Event()
        self._abort = threading.Event()  # ours only: the caller's stop_event may be shared by cameras
        self._producer = producer
        self._max_frames: int | None = None
        self._labels = {"camera": settings.camera_id}
        self._rng = random.Random()

    def _drop(self, reason: str) -> None:
        self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1
        self.metrics.dropped.labels(camera=self.settings.camera_id, reason=reason).inc()

    # ---- capture thread -------------------------------------------------------------------------
    def _stopped(self) -> bool:
        return self.stop_event.is_set() or self._abort.is_set()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopped():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._abort.wait(min(left, 0.05))

    def _wait_backoff(self, delay: float) -> float:
        """Wait a full-jitter time in [0, delay] (cameras that lost the same server do not retry in lockstep);
        returns the next ceiling, doubled up to ``reopen_max_s``."""
        self._sleep(self._rng.uniform(0.0, delay))
        return min(delay * 2, self.settings.reopen_max_s)

    def _enqueue(self, frame: CapturedFrame) -> None:
        if self.drop_oldest:
            while True:
                try:
                    self._queue.put_nowait(frame)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self._drop(DROP_QUEUE_FULL)
                    except queue.Empty:
                        pass
        # A frame read just as the stop came is still queued while there is room: the publisher drains the
        # queue before it stops. Only a full queue at stop loses it (counted). Checking the stop before the put
        # dropped such frames with the queue empty (the demo test saw captured 61, sent 60).
        while True:
            try:
                self._queue.put(frame, timeout=0.1)
                return
            except queue.Full:
                if self._stopped():
                    break
        self._drop(DROP_UNSENT)

    def _capture(self) -> None:
        """Capture thread: open the source, read frames at the set rate, reopen it after faults (see _Capture)."""
        interval = 1.0 / self.settings.fps if self.settings.fps else 0.0
        run = _Capture(delay=self.settings.reopen_initial_s, interval=interval, next_due=time.monotonic())
        try:
            while not self._stopped() and run.state is not CaptureState.DONE:
                if run.state is CaptureState.CLOSED:
                    self._open_source(run)
                else:
                    self._read_frame(run)
        finally:
            self.source.close()
            self._capture_done.set()

    def _back_off(self, run: _Capture) -> None:
        """After a fault: wait a full-jitter time below the current ceiling, then double the ceiling."""
        run.failing = True
        run.delay = self._wait_backoff(run.delay)

    def _open_source(self, run: _Capture) -> None:
        """CLOSED -> OPEN, or stay CLOSED and back off when the source cannot be opened."""
        try:
            self.source.open()
        except Exception as exc:  # any open failure is retried, the process stays up
            self.stats.open_failures += 1
            log.warning("camera %s: cannot open %s: %s; retrying in %.1fs", self.settings.camera_id,
                        self.source.description, exc, run.delay)
            self._back_off(run)
            return
        run.state, run.frames_this_pass = CaptureState.OPEN, 0
        if run.failing:
            log.info("camera %s: %s is open again", self.settings.camera_id, self.source.description)

    def _pace(self, run: _Capture) -> bool:
        """Wait until the next frame is due at the set fps; False when stopped meanwhile."""
        if not run.interval:
            return True
        now = time.monotonic()
        if run.next_due > now:
            self._sleep(run.next_due - now)
            if self._stopped():
                return False
        # A late frame moves the schedule, so a stall is not followed by a burst of catch-up frames.
        run.next_due = max(run.next_due + run.interval, time.monotonic() - run.interval)
        return True

    def _read_frame(self, run: _Capture) -> None:
        """In state OPEN: read one frame and queue it, or handle an unreadable frame, a fault or the end."""
        if not self._pace(run):
            return
        try:
            frame = self.source.read()
        except FrameError as exc:
            self._drop("unreadable")
            log.warning("camera %s: skipped an unreadable frame: %s", self.settings.camera_id, exc)
            return
        except Exception as exc:  # SourceError or anything unexpected from a driver
            self._source_failed(run, exc)
            return
        if frame is None:
            self._end_of_pass(run)
        else:
            self._captured(run, frame)

    def _source_failed(self, run: _Capture, exc: Exception) -> None:
        """OPEN -> CLOSED after a source fault; back off before reopening."""
        kind = "" if isinstance(exc, SourceError) else f" ({type(exc).__name__})"
        log.warning("camera %s: %s failed%s: %s; reopening in %.1fs", self.settings.camera_id,
                    self.source.description, kind, exc, run.delay)
        self.source.close()
        run.state = CaptureState.CLOSED
        self.stats.reopens += 1
        self._back_off(run)

    def _end_of_pass(self, run: _Capture) -> None:
        """OPEN -> DONE at the end of a source that does not loop, else -> CLOSED (reopened for the next pass)."""
        self.source.close()
        run.state = CaptureState.CLOSED
        if not self.settings.loop:
            log.info("camera %s: end of %s", self.settings.camera_id, self.source.description)
            run.state = CaptureState.DONE
        elif run.frames_this_pass == 0:  # an empty pass would spin: treat as a fault
            log.warning("camera %s: %s gave no frames; retrying in %.1fs", self.settings.camera_id,
                        self.source.description, run.delay)
            run.delay = self._wait_backoff(run.delay)

    def _captured(self, run: _Capture, frame: CapturedFrame) -> None:
        """A frame was read: the fault streak is over; queue it; DONE once ``max_frames`` are captured."""
        run.frames_this_pass += 1
        run.failing, run.delay = False, self.settings.reopen_initial_s
        self.stats.captured += 1
        self.metrics.captured.labels(**self._labels).inc()
        self._enqueue(frame)
        if self._max_frames is not None and self.stats.captured >= self._max_frames:
            run.state = CaptureState.DONE

    # ---- publishing (caller's thread) ---------------------------------------------------------
    def _encode(self, frame: CapturedFrame, image: np.ndarray, sequence: int) -> EncodedFrame:
        s = self.settings
        return encode_frame(image, camera_id=s.camera_id, line_id=s.line_id, sequence=sequence,
                            capture_ns=frame.capture_ns, encoding=s.encoding, jpeg_quality=s.jpeg_quality,
                            label=frame.label, defect_type=frame.defect_type, source_id=frame.source_id,
                            product=self.products.stamp(frame.capture_ns))

    def _publish(self, frame: CapturedFrame, producer: FrameProducer, sequences: SequenceStore) -> None:
        cam = self.settings.camera_id
        started = time.perf_counter()
        image = frame.image
        if self.settings.resize and (image.shape[1], image.shape[0]) != self.settings.resize:
            image = cv2.resize(image, self.settings.resize, interpolation=cv2.INTER_AREA)
        sequence = sequences.peek
        try:
            encoded, note = fit_to_limit(image, lambda img: self._encode(frame, img, sequence),
                                         self.settings.max_message_bytes, self.settings.oversize_policy)
        except ValueError as exc:
            self._drop(DROP_ENCODE_ERROR)
            log.error("camera %s: cannot encode frame %s: %s", cam, frame.source_id or "", exc)
            return
        self.metrics.encode_seconds.labels(**self._labels).observe(time.perf_counter() - started)
        if encoded is None:
            self._drop(DROP_OVERSIZE)
            log.error("camera %s: frame %s dropped by the size guard: %s", cam, frame.source_id or "", note)
            return
        if note:
            log.warning("camera %s: size guard: %s", cam, note)
        if producer.send(encoded, self.stop_event, self.settings.flush_timeout_s):
            number = sequences.next()  # consumed only once the frame is queued for delivery
            if self.stats.first_sequence is None:
                self.stats.first_sequence = number
            self.stats.last_sequence = number
        producer.poll(0)

    def _follow_products(self) -> ProductFollower | None:
        """Start following the PLC's product (``product_source``) and wait for its first word, bounded."""
        s = self.settings
        if s.product_source is None:
            return None
        follower = product_follower(s.product_source, self.products, client_id=f"linewatch-camera-{s.camera_id}")
        follower.start()
        wait_for_product(self.products, follower, s.product_source_wait_s)
        return follower

    def run(self, max_frames: int | None = None) -> CameraStats:
        """Capture and publish until the source ends, ``max_frames`` are captured or the stop event is set."""
        s = self.settings
        started = time.monotonic()
        if s.create_topics:
            try:
                ensure_topics(s.kafka, [s.topics.frames], s.topics.partitions, s.topics.replication_factor)
            except TopicError as exc:
                log.warning("camera %s: %s; publishing anyway (delivery errors will show if it is missing)",
                            s.camera_id, exc)
        # "is None", not "or": a FrameProducer with nothing in flight has len() 0 and is falsy, which silently
        # replaced a caller's producer with a new one (and made the back-pressure test flaky).
        owned = self._producer is None
        producer = self._producer if self._producer is not None else FrameProducer(
            s.kafka, s.topics.frames, self.metrics, client_id=f"linewatch-camera-{s.camera_id}",
            max_message_bytes=s.max_message_bytes)
        sequences = SequenceStore(s.state_dir, s.camera_id, s.sequence_block)
        acked0, bytes0, failed0 = producer.acked, producer.acked_bytes, producer.failed
        self._max_frames = max_frames
        follower = self._follow_products()
        log.info("camera %s: publishing %s to %s (policy %s, queue %d)", s.camera_id, self.source.description,
                 s.topics.frames, "drop-oldest" if self.drop_oldest else "block", s.queue_size)
        capture = threading.Thread(target=self._capture, name=f"capture-{s.camera_id}", daemon=True)
        capture.start()
        try:
            while True:
                try:
                    frame = self._queue.get(timeout=0.05)
                except queue.Empty:
                    producer.poll(0)
                    if self._capture_done.is_set() and self._queue.empty():
                        break
                    continue
                self._publish(frame, producer, sequences)
        finally:
            self._abort.set()  # no-op when capture already ended; stops it when publishing failed
            capture.join(timeout=5)
            left = producer.flush(s.flush_timeout_s)
            if left:
                for _ in range(left):
                    self._drop(DROP_UNSENT)
                log.error("camera %s: %d frames still undelivered after %.0fs flush", s.camera_id, left,
                          s.flush_timeout_s)
            sequences.close()
            if follower is not None:
                follower.stop()
            if owned:  # now, not whenever the garbage collector breaks the client's callback cycle
                producer.close()
        self.stats.sent = producer.acked - acked0
        self.stats.bytes_sent = producer.acked_bytes - bytes0
        self.stats.delivery_errors = producer.failed - failed0
        self.stats.elapsed_s = time.monotonic() - started
        self.stats.late_stamped = self.products.late_stamped
        log.info("camera %s: captured %d, sent %d, dropped %s, delivery errors %d", s.camera_id,
                 self.stats.captured, self.stats.sent, self.stats.dropped or 0, self.stats.delivery_errors)
        return self.stats


def run_camera(settings: CameraSettings, source: Source | str | None = None, *, max_frames: int | None = None,
               stop_event: threading.Event | None = None, metrics: CameraMetrics | None = None,
               producer: FrameProducer | None = None) -> CameraStats:
    """Run one camera until its source ends, ``max_frames`` frames are captured or ``stop_event`` is set.

    Blocking. ``source`` is a Source, a SOURCE string (see :func:`ingest.sources.open_source`) or None
    for ``settings.source``. Returns the counts of this run; every frame is flushed before it returns.
    """
    return Camera(settings, source, metrics=metrics, producer=producer, stop_event=stop_event).run(max_frames)
