"""Frame decoding off the inference path: a thread pool (OpenCV releases the GIL) or nvJPEG on CUDA.

A closed batch is submitted here at once, so its frames decode while the model still runs the
previous batch. Every record ends up either a :class:`DecodedFrame` or a :class:`Rejected`
(dead letter with the wire-format reason); nothing raises out of a batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from linewatch.errors import InvalidValueError
from linewatch.ingest.wire import (
    DEFAULT_MAX_FUTURE_SKEW_NS,
    MAX_PIXELS,
    MAX_SIDE,
    FrameMeta,
    WireFormatError,
    check_record,
    check_stream,
    decode_headers,
    decode_image,
)

DecodeBackend = Literal["cpu", "gpu"]


@dataclass
class Record:
    """One consumed Kafka record, detached from librdkafka's message object."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None
    timestamp_ms: int  # broker/producer timestamp, for queue latency
    received_ns: int
    generation: int = 0  # the partition's assignment generation when consumed (CommitGate)


@dataclass(frozen=True)
class RecordPolicy:
    """What a record must satisfy beyond the wire format: size limits, clock skew, allowed cameras."""

    max_side: int = MAX_SIDE
    max_pixels: int = MAX_PIXELS
    max_future_skew_ns: int = DEFAULT_MAX_FUTURE_SKEW_NS
    allowed_cameras: frozenset[str] | None = None  # None: every camera id that follows the id rule

    def headers(self, record: Record) -> FrameMeta:
        """The record's headers, validated against the wire format and the size limits."""
        return decode_headers(record.headers, self.max_side, self.max_pixels)

    def check(self, record: Record, meta: FrameMeta) -> None:
        """The record around the headers: key == camera id, capture time, allow-list."""
        check_record(meta, record.key, record.received_ns, self.max_future_skew_ns)
        if self.allowed_cameras is not None and meta.camera_id not in self.allowed_cameras:
            raise WireFormatError("camera_not_allowed", f"camera {meta.camera_id!r} is not on the allow-list")


def header_pixels(headers: list[tuple[str, bytes | None]] | None) -> int:
    """lw-width x lw-height as claimed (0 when absent or unparseable): decode enforces that the stream agrees."""
    values = dict(headers or [])
    try:
        return max(0, int(values.get("lw-width") or b"0")) * max(0, int(values.get("lw-height") or b"0"))
    except ValueError:
        return 0


@dataclass
class DecodedFrame:
    """A frame ready for the model: ``image`` is uint8 RGB (H, W, 3), a numpy array or a CUDA tensor."""

    record: Record
    meta: FrameMeta
    image: Any
    decode_ms: float


@dataclass
class Rejected:
    """A record that cannot be processed, with a short stable reason and a message."""

    record: Record
    reason: str
    message: str


Outcome = DecodedFrame | Rejected


def select_decode_backend(mode: str, device_type: str) -> DecodeBackend:
    """Pick where JPEG decoding runs: ``cpu``, ``gpu`` (needs the model on CUDA) or ``auto``."""
    if mode == "cpu":
        return "cpu"
    if mode == "gpu":
        if device_type != "cuda":
            raise InvalidValueError(f"decode_mode=gpu needs the model on a CUDA device, but it runs on {device_type}; "
                             "use decode_mode=cpu or auto")
        return "gpu"
    if mode == "auto":
        return "gpu" if device_type == "cuda" else "cpu"
    raise ValueError(f"unknown decode_mode {mode!r}; expected cpu, gpu or auto")


def _decode_cpu(record: Record, policy: RecordPolicy) -> Outcome:
    start = time.perf_counter()
    try:
        meta = policy.headers(record)
        image = decode_image(record.value or b"", meta, policy.max_side, policy.max_pixels)
        policy.check(record, meta)
    except WireFormatError as exc:
        return Rejected(record, exc.reason, str(exc))
    except Exception as exc:
        return Rejected(record, "decode_error", f"{type(exc).__name__}: {exc}")
    return DecodedFrame(record, meta, image, (time.perf_counter() - start) * 1000)


def _check_headers_gpu(record: Record, policy: RecordPolicy) -> Outcome:
    """Headers and the stream's own dimensions, checked on CPU before nvJPEG sees the bytes."""
    start = time.perf_counter()
    try:
        meta = policy.headers(record)
        if meta.encoding != "jpeg":
            return _decode_cpu(record, policy)
        check_stream(record.value or b"", meta, policy.max_side, policy.max_pixels)
        policy.check(record, meta)
    except WireFormatError as exc:
        return Rejected(record, exc.reason, str(exc))
    return DecodedFrame(record, meta, None, (time.perf_counter() - start) * 1000)


class PendingBatch:
    """Decode futures of one batch; :meth:`result` waits for them (and runs nvJPEG on the GPU path)."""

    def __init__(self, futures: list[Future[Outcome]], backend: DecodeBackend, device: Any) -> None:
        self._futures = futures
        self._backend = backend
        self._device = device

    def result(self) -> list[Outcome]:
        """Outcomes in record order."""
        outcomes = [future.result() for future in self._futures]
        if self._backend == "gpu":
            outcomes = _decode_jpeg_gpu(outcomes, self._device)
        return outcomes


def _decode_jpeg_gpu(outcomes: list[Outcome], device: Any) -> list[Outcome]:
    """Decode every header-checked JPEG in one nvJPEG call; on failure, one by one to find the bad ones."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    todo = [i for i, o in enumerate(outcomes) if isinstance(o, DecodedFrame) and o.image is None]
    if not todo:
        return outcomes
    start = time.perf_counter()
    datas = [torch.frombuffer(bytearray(outcomes[i].record.value or b""), dtype=torch.uint8) for i in todo]
    try:
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        per_frame = (time.perf_counter() - start) * 1000 / len(todo)
        for i, image in zip(todo, images, strict=True):
            frame = outcomes[i]
            assert isinstance(frame, DecodedFrame)
            frame.image, frame.decode_ms = image.permute(1, 2, 0), frame.decode_ms + per_frame
        return outcomes
    except RuntimeError:
        pass  # at least one stream is corrupt: retry one at a time below
    for i, data in zip(todo, datas, strict=True):
        frame = outcomes[i]
        assert isinstance(frame, DecodedFrame)
        try:
            frame.image = decode_jpeg(data, mode=ImageReadMode.RGB, device=device).permute(1, 2, 0)
        except RuntimeError as exc:
            outcomes[i] = Rejected(frame.record, "undecodable", f"nvJPEG could not decode the stream: {exc}")
    return outcomes


class Decoder:
    """Thread pool that decodes batches; one instance per service."""

    def __init__(self, workers: int, backend: DecodeBackend = "cpu", device: Any = None,
                 policy: RecordPolicy | None = None) -> None:
        self.backend = backend
        self._device = device
        self._policy = policy or RecordPolicy()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detector-decode")

    def submit(self, records: Sequence[Record]) -> PendingBatch:
        """Start decoding ``records``; returns at once."""
        work = _check_headers_gpu if self.backend == "gpu" else _decode_cpu
        futures = [self._pool.submit(work, record, self._policy) for record in records]
        return PendingBatch(futures, self.backend, self._device)

    def close(self) -> None:
        """Wait for running work and stop the threads."""
        self._pool.shutdown(wait=True)


def group_by_size(frames: Sequence[DecodedFrame]) -> list[list[DecodedFrame]]:
    """Frames of equal (height, width) and kind, so each group runs as one stacked batch."""
    groups: dict[tuple[int, int, bool], list[DecodedFrame]] = {}
    for frame in frames:
        height, width = frame.image.shape[:2]
        # On the GPU path PNG/raw frames are numpy arrays and JPEGs CUDA tensors: keep them apart.
        groups.setdefault((int(height), int(width), isinstance(frame.image, np.ndarray)), []).append(frame)
    return list(groups.values())


def stack_images(frames: Sequence[DecodedFrame]) -> Any:
    """(N, H, W, 3) uint8: a numpy array, or a CUDA tensor on the GPU decode path."""
    first = frames[0].image
    if isinstance(first, np.ndarray):
        return np.stack([frame.image for frame in frames])
    import torch

    return torch.stack([frame.image for frame in frames])
