"""Shared builders for the alerts tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from linewatch.detector.events import FrameResult, Latency

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # Standard Webhooks form (base64 key)
API_TOKEN = "Vq3-Rk8sWm2_Lp9xTz4bNc7yHd1fJg6aQe5uKo0iZr2"  # 43 chars, like secrets.token_urlsafe(32)
DANA_TOKEN = "Xb7_Nq2wEr5tYu8iOp1aSd4fGh6jKl9zXc3vBn0mQw5"

T0 = 1_700_000_000_000_000_000
FRAME_NS = 100_000_000  # 10 frames per second


def frame(camera: str, sequence: int, score: float, *, line: str = "line-1", heatmap: str | None = None,
          capture_ns: int | None = None) -> FrameResult:
    """A detector result; anomalous when the normalised score reaches 0.5."""
    return FrameResult(
        camera_id=camera, line_id=line, sequence=sequence,
        capture_ns=capture_ns if capture_ns is not None else T0 + sequence * FRAME_NS,
        image_score=score * 2, normalised_score=score, anomalous=score >= 0.5, threshold=1.0,
        model_version="test", heatmap_key=heatmap,
        latency=Latency(queue_ms=1, decode_ms=1, inference_ms=1, end_to_end_ms=3),
    )


def scores_stream(camera: str, scores: list[float], *, line: str = "line-1", first: int = 0) -> list[FrameResult]:
    """Consecutive frames of one camera with the given normalised scores."""
    return [frame(camera, first + i, s, line=line) for i, s in enumerate(scores)]


@dataclass
class Webhook:
    """A tiny real HTTP receiver that checks signatures and records what it got."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    status_when_failing: int = 503
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict[str, Any]]:
        """Parsed bodies of the requests that were accepted."""
        with self.lock:
            return [r["body"] for r in self.received if r["accepted"]]


def png(width: int = 64, height: int = 48, hot: tuple[int, int] = (20, 10)) -> bytes:
    """A small colour PNG with a red hot spot, like a heatmap overlay."""
    import cv2
    import numpy as np

    image = np.full((height, width, 3), 40, np.uint8)
    cv2.circle(image, hot, 6, (0, 0, 255), -1)
    ok, data = cv2.imencode(".png", image)
    assert ok
    return bytes(data)


def heatmap_fields(width: int = 64, height: int = 48, hot: tuple[int, int] = (20, 10)) -> dict[str, Any]:
    """What the detector stores for a frame (common.heatmap_codec): a grey frame as JPEG and a 16x16
    map that is 1 around ``hot`` (x, y in frame pixels) and 0 elsewhere, drawn with colour scale 1."""
    import cv2
    import numpy as np

    from linewatch.common import cache_keys as ck
    from linewatch.common.heatmap_codec import encode_frame_jpeg, encode_map_png

    anomaly = np.zeros((height, width), np.float32)
    cv2.circle(anomaly, hot, 8, 1.0, -1)
    map_png, scale = encode_map_png(anomaly, 16)
    return {ck.FIELD_FRAME: encode_frame_jpeg(np.full((height, width, 3), 40, np.uint8)), ck.FIELD_MAP: map_png,
            ck.FIELD_MAP_SCALE: repr(scale), ck.FIELD_COLOUR_SCALE: "1.0"}


def hot_spot(overlay_png: bytes) -> tuple[float, float, tuple[int, int]]:
    """(x, y) centre of the red (hot) pixels of an overlay PNG, and its (width, height)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(overlay_png, np.uint8), cv2.IMREAD_COLOR).astype(int)
    ys, xs = np.nonzero(image[..., 2] > image[..., 0] + 30)  # BGR: red well above blue
    assert len(xs), "no hot pixel in the overlay"
    return float(xs.mean()), float(ys.mean()), (image.shape[1], image.shape[0])


def seed_redis(client: Any, prefix: str, camera: str = "cam-7", line: str = "line-3",
               unhealthy: tuple[str, ...] = ()) -> str:
    """Write a camera's latest frame and heatmaps the detector's way, and one alert (suspect when the camera
    has ``unhealthy`` checks); returns its id."""
    from linewatch.alerts.history import AlertHistory
    from linewatch.alerts.rules import CameraState, step
    from linewatch.alerts.settings import RuleConfig
    from linewatch.common import cache_keys

    rule = RuleConfig(k=2, n=3, resolve_after=2, cooldown_s=0)
    history = AlertHistory(client, prefix)
    state, pipe = CameraState(camera_id=camera), client.pipeline(transaction=True)
    for seq, score in enumerate([0.2, 0.8, 0.95, 0.7]):
        key = cache_keys.heatmap_key(prefix, camera, seq)
        pipe.hset(key, mapping={**heatmap_fields(hot=(10 + 10 * seq, 20)), "normalised_score": score,
                                "anomalous": int(score >= 0.5), "capture_ns": T0 + seq * FRAME_NS, "line_id": line})
        pipe.expire(key, 600)
        state, events = step(state, frame(camera, seq, score, line=line, heatmap=key), rule, unhealthy=unhealthy)
        for event in events:
            history.stage_event(pipe, event)
    pipe.sadd(cache_keys.cameras_key(prefix), camera)
    pipe.hset(cache_keys.latest_key(prefix, camera), mapping={
        "line_id": line, "sequence": 3, "capture_ns": T0 + 3 * FRAME_NS, "image_score": 1.4,
        "normalised_score": 0.7, "anomalous": 1, "heatmap_key": cache_keys.heatmap_key(prefix, camera, 3),
        "updated_ns": T0 + 4 * FRAME_NS})
    pipe.execute()
    assert state.alert is not None
    return state.alert.alert_id
