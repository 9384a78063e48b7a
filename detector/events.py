"""Event schemas the detector produces (JSON on the wire). Alerts read them from here.

Topics and keys (key = camera id everywhere, so one camera's events stay in order):

- ``results``: one :class:`FrameResult` per processed frame;
- ``breaches``: one :class:`Breach` per anomalous frame (a result plus its defect region);
- ``dead-letters``: the original record value, unchanged, with headers from
  :func:`dead_letter_headers` (no JSON body; the bytes are kept as received).

Every event carries ``schema_version``; consumers refuse versions they do not know.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

EVENT_SCHEMA_VERSION = 1


class Latency(BaseModel):
    """Where the time went for one frame, in milliseconds."""

    queue_ms: float = Field(description="From broker append time to the batch closing.")
    decode_ms: float = Field(description="Image decode (per frame, in the decode pool).")
    inference_ms: float = Field(description="Model time of the whole batch the frame was in.")
    end_to_end_ms: float = Field(description="From capture time to the result being produced.")


class FrameResult(BaseModel):
    """The detector's verdict on one frame."""

    schema_version: int = EVENT_SCHEMA_VERSION
    camera_id: str
    line_id: str
    sequence: int
    capture_ns: int
    image_score: float = Field(description="Raw STFPM image score (max of the anomaly map).")
    normalised_score: float = Field(ge=0.0, le=1.0, description="Score in [0, 1]; the threshold maps to 0.5.")
    anomalous: bool
    threshold: float = Field(description="Image threshold the verdict used (raw score units).")
    model_version: str
    heatmap_key: str | None = Field(description="Redis key of this frame's heatmap; None when it is not written "
                                                "(Redis down, stalled or behind: the write was skipped).")
    latency: Latency
    product: str | None = Field(default=None, description="The frame's lw-product (part type), when it had one.")
    label: str | None = Field(default=None, description="Ground truth from replay/synthetic sources.")
    defect_type: str | None = None
    source_id: str | None = None
    partition: int = -1
    offset: int = -1
    processed_ns: int = 0


class DefectRegion(BaseModel):
    """Where the defect is, from the anomaly map thresholded at the pixel threshold."""

    area_fraction: float = Field(ge=0.0, le=1.0)
    bbox: tuple[int, int, int, int] | None = Field(description="x0, y0, x1, y1 in image pixels (exclusive).")
    peak_xy: tuple[int, int] = Field(description="Location of the map's maximum, image pixels.")
    peak_value: float


class Breach(FrameResult):
    """An anomalous frame: the result plus its defect region."""

    region: DefectRegion


MAX_ORIGINAL_HEADER_VALUE = 1024  # bytes kept of each original header value in a dead letter
MAX_ORIGINAL_HEADERS = 16_384  # bytes of original headers (names and values) kept in a dead letter


def dead_letter_headers(*, topic: str, partition: int, offset: int, error_class: str, message: str,
                        original: list[tuple[str, bytes | None]] | None, max_error_bytes: int = 2000,
                        max_original_bytes: int = MAX_ORIGINAL_HEADERS) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter record: where it came from and why, plus the original headers.

    Original headers are cut (each value to ``MAX_ORIGINAL_HEADER_VALUE`` bytes, all of them to
    ``max_original_bytes``; those that do not fit are left out) so that a hostile record's headers
    cannot make its dead letter too large to produce; ``dl-headers-truncated`` then says how many
    bytes they had.
    """
    headers = [
        ("dl-topic", topic.encode()[:512]), ("dl-partition", str(partition).encode()),
        ("dl-offset", str(offset).encode()), ("dl-error-class", error_class.encode()[:200]),
        ("dl-error", message.encode(errors="replace")[:max_error_bytes]),
    ]
    kept, total = 0, 0
    for name, value in original or []:
        if value is None:
            continue
        total += len(name) + len(value)
        entry = (name[:MAX_ORIGINAL_HEADER_VALUE], value[:MAX_ORIGINAL_HEADER_VALUE])
        if kept + len(entry[0]) + len(entry[1]) > max_original_bytes:
            continue
        kept += len(entry[0]) + len(entry[1])
        headers.append(entry)
    if total > kept:
        headers.append(("dl-headers-truncated", str(total).encode()))
    return headers
