"""Alert rule state survives a full heatmap cache, measured on real redis-server processes started with the
options of the shipped compose file.

The compose file is rendered by docker-compose with only the Redis sizes made small (``REDIS_MAXMEMORY``,
``STATE_REDIS_MAXMEMORY``, the operator's own knobs) so that filling them takes a second; every other
redis-server option is parsed out of the services' start-up scripts. Which Redis gets the rule state and
which the heatmaps is what the rendered alerts and detector settings say. Rule state is written by the
alerts code itself (the real rules, ``StateStore``), heatmaps by the detector's ``HeatmapCache``.

What happens, measured: breach heatmaps expire after ``breach_ttl_s`` (7 d), as late as a rule state
(``state_ttl_s``, 7 d), and are never trimmed per camera, so a defect burst fills the cache with them.
``volatile-ttl`` then evicts the keys closest to expiry: the rule states written before the burst. Keys
without a TTL (outboxes, epochs, the history stream) are not evictable and stay. With the state in its
own ``noeviction`` Redis nothing is evicted; that Redis, when full itself, refuses the write instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from deploy_helpers import IMAGE_ENV, TEST_SECRETS
from redis_deploy import option, redis_server, redis_server_options, render_compose, start_up_script, url_host
from test_compose import settings_under_env

from linewatch.alerts.rules import CameraState, step
from linewatch.alerts.service import history_for
from linewatch.alerts.settings import AlertsSettings
from linewatch.alerts.state import OutboxEntry, StateStore
from linewatch.detector.events import FrameResult, Latency
from linewatch.detector.service.heatmap_cache import HeatmapCache, HeatmapEntry
from linewatch.detector.service.metrics import DetectorMetrics
from linewatch.detector.service.settings import DetectorSettings

pytestmark = pytest.mark.integration

# Small on purpose (see the module docstring); the options around them are the shipped ones.
SIZES = {"REDIS_MAXMEMORY": "8mb", "STATE_REDIS_MAXMEMORY": "2mb"}
CAMERAS = [f"cam-{i:02d}" for i in range(24)]
PARTITIONS = 4
TOPIC = "results"
DEFECT_RUN_EVERY = 3  # every third camera sees a defect run, so its alert is open when the cache fills
FILL_FACTOR = 2  # heatmap bytes written, as a multiple of the cache's maxmemory


@dataclass
class ShippedRedis:
    """What the rendered compose file says about Redis: its services and who uses which."""

    model: dict[str, Any]
    alerts: AlertsSettings
    detector: DetectorSettings

    @property
    def heatmap_service(self) -> str:
        return url_host(self.detector.redis.url)

    @property
    def state_service(self) -> str:
        return url_host(self.alerts.state_store_redis().url)

    def options(self, service: str) -> list[str]:
        return redis_server_options(start_up_script(self.model["services"][service]))

    def password(self, service: str) -> str:
        """The password the service's container writes into its requirepass (its compose secret's variable)."""
        (secret,) = self.model["services"][service]["secrets"]
        return {**TEST_SECRETS, **SIZES}[self.model["secrets"][secret["source"]]["environment"]]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> ShippedRedis:
    folder = tmp_path_factory.mktemp("compose-redis")
    model = render_compose(folder, SIZES)
    with pytest.MonkeyPatch.context() as monkeypatch:
        alerts = settings_under_env(AlertsSettings, service_env(model, "alerts"), monkeypatch, folder)
        detector = settings_under_env(DetectorSettings, service_env(model, "detector"), monkeypatch, folder)
    assert isinstance(alerts, AlertsSettings) and isinstance(detector, DetectorSettings)
    return ShippedRedis(model, alerts, detector)


def service_env(model: dict[str, Any], service: str) -> dict[str, str]:
    """A linewatch service's LINEWATCH_* settings as rendered (without the image's health-check URL)."""
    return {k: str(v) for k, v in model["services"][service]["environment"].items() if k not in IMAGE_ENV}


@pytest.fixture
def servers(shipped: ShippedRedis, tmp_path: Path) -> Iterator[dict[str, redis.Redis]]:
    """A local redis-server per compose Redis service that the heatmaps or the alert state go to (one when
    they share a service), each with that service's options and password; clients by service name."""
    services = {shipped.heatmap_service, shipped.state_service}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(redis_server(tmp_path / name, shipped.options(name), shipped.password(name)))
                for name in services}
        clients = {name: redis.Redis.from_url(url, password=shipped.password(name)) for name, url in urls.items()}
        yield clients
        for client in clients.values():
            client.close()


# --- writing the way the services do -----------------------------------------------------------------------

def frame_result(camera: str, sequence: int, score: float, capture_ns: int) -> FrameResult:
    return FrameResult(camera_id=camera, line_id="line-1", sequence=sequence, capture_ns=capture_ns,
                       image_score=2 * score, normalised_score=score, anomalous=score >= 0.5, threshold=1.0,
                       model_version="stfpm-1", heatmap_key=None,
                       latency=Latency(queue_ms=1, decode_ms=1, inference_ms=5, end_to_end_ms=10))


def camera_scores(index: int) -> list[float]:
    """Ten frames: clean, or (every DEFECT_RUN_EVERY-th camera) ending in a defect run that fires the rule."""
    return [0.1] * 5 + ([0.9] * 5 if index % DEFECT_RUN_EVERY == 0 else [0.2] * 5)


class RuleStateWriter:
    """The alerts service's write path: the real rules over each camera's frames, then one ``StateStore``
    transaction (state, history, outbox entry per transition) fenced by the partition's epoch."""

    def __init__(self, settings: AlertsSettings, client: redis.Redis) -> None:
        self.settings = settings
        self.store = StateStore(client, settings.redis.key_prefix, history_for(settings, client),
                                state_ttl_s=settings.state_ttl_s)
        self.partitions = {camera: i % PARTITIONS for i, camera in enumerate(CAMERAS)}
        self.epochs = self.store.acquire(TOPIC, list(range(PARTITIONS)))

    def write(self, camera: str, scores: list[float]) -> CameraState:
        state, events = CameraState(camera_id=camera), []
        rule = self.settings.rules.for_camera("line-1", camera)
        now = time.time_ns()
        for sequence, score in enumerate(scores):
            capture_ns = now - (len(scores) - sequence) * 100_000_000
            state, transitions = step(state, frame_result(camera, sequence, score, capture_ns), rule)
            events += transitions
        entries = [OutboxEntry(channel="alertmanager", event=event) for event in events]
        self.store.commit([state], events, entries, topic=TOPIC, partitions=self.partitions, epochs=self.epochs)
        return state

    def write_all(self) -> dict[str, CameraState]:
        return {camera: self.write(camera, camera_scores(i)) for i, camera in enumerate(CAMERAS)}

    def lost(self, written: dict[str, CameraState]) -> list[str]:
        """Cameras whose saved rule state is gone or no longer what was written."""
        saved = self.store.load_many(list(written))
        return sorted(camera for camera, state in written.items() if saved.get(camera) != state)

    def pending_outbox(self) -> int:
        return sum(len(self.store.pending(TOPIC, partition)[0]) for partition in range(PARTITIONS))


def heatmap_entries(rng: np.random.Generator, first_sequence: int, count: int) -> list[HeatmapEntry]:
    """Breach frames of four cameras: a textured 256 px frame and a 64x64 anomaly map each."""
    gradient = np.linspace(40, 180, 256).astype(np.uint8)[None, :, None]
    entries = []
    for sequence in range(first_sequence, first_sequence + count):
        image = gradient + rng.integers(0, 64, (256, 256, 3), dtype=np.uint8)
        entries.append(HeatmapEntry(camera_id=f"burst-{sequence % 4}", line_id="line-1", sequence=sequence,
                                    capture_ns=time.time_ns(), image_score=1.8, normalised_score=0.9,
                                    anomalous=True, anomaly_map=rng.random((64, 64), dtype=np.float32),
                                    image=image))
    return entries


def fill_with_breach_heatmaps(detector: DetectorSettings, client: redis.Redis) -> dict[str, int]:
    """Write breach heatmaps through the detector's HeatmapCache (TTLs and per-camera cap as rendered) until
    FILL_FACTOR x the server's maxmemory went in. Breaches, because they are what accumulates: ordinary
    heatmaps are trimmed to heatmaps_per_camera per camera, breach heatmaps stay for breach_ttl_s."""
    url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
    cache = HeatmapCache(detector.redis.model_copy(update={"url": url}), DetectorMetrics(),
                         per_camera=detector.heatmaps_per_camera, ttl_s=detector.heatmap_ttl_s,
                         breach_ttl_s=detector.breach_ttl_s, map_size=detector.heatmap_map_size,
                         overlay_max_side=detector.overlay_max_side, camera_ttl_s=detector.camera_key_ttl_s)
    maxmemory = int(str(client.config_get("maxmemory")["maxmemory"]))
    rng, batch = np.random.default_rng(25), 8
    first = heatmap_entries(rng, 0, batch)
    cache.write(first)  # far below maxmemory: nothing is evicted yet, so its size can be read back
    key = f"{detector.redis.key_prefix}:hm:{first[0].camera_id}:{first[0].sequence}"
    size = int(client.memory_usage(key, samples=0) or 0)  # every field: one JPEG field outweighs the others
    assert size > 0, "the detector's heatmap was not stored"
    frames = -(-FILL_FACTOR * maxmemory // size)  # a heatmap's size varies little: the frames are alike
    for sequence in range(batch, frames, batch):
        cache.write(heatmap_entries(rng, sequence, batch))
    memory, stats = client.info("memory"), client.info("stats")
    return {"heatmaps": frames, "heatmap_bytes": size, "maxmemory": maxmemory,
            "used_memory": int(memory["used_memory"]), "evicted_keys": int(stats["evicted_keys"])}


# --- the measurements ----------------------------------------------------------------------------------

def test_rule_state_survives_a_full_heatmap_cache_in_the_shipped_compose(
        shipped: ShippedRedis, servers: dict[str, redis.Redis]) -> None:
    writer = RuleStateWriter(shipped.alerts, servers[shipped.state_service])
    written = writer.write_all()
    open_alerts = sorted(a.alert_id for a in writer.store.history.open_alerts())
    pending = writer.pending_outbox()
    assert len(open_alerts) == len(CAMERAS[::DEFECT_RUN_EVERY]) and pending >= len(open_alerts)

    fill = fill_with_breach_heatmaps(shipped.detector, servers[shipped.heatmap_service])

    lost = writer.lost(written)
    assert not lost, (f"{len(lost)} of {len(written)} rule states lost after filling the heatmap cache "
                      f"({fill}); alert state is in compose service {shipped.state_service!r}, heatmaps in "
                      f"{shipped.heatmap_service!r}")
    assert sorted(a.alert_id for a in writer.store.history.open_alerts()) == open_alerts
    assert writer.pending_outbox() == pending
    # The cache kept its bound by evicting (heatmaps only: nothing else lives there).
    assert fill["evicted_keys"] > 0 and fill["used_memory"] <= 1.1 * fill["maxmemory"], fill


def test_one_shared_volatile_ttl_redis_evicts_rule_state_when_the_cache_fills(
        shipped: ShippedRedis, servers: dict[str, redis.Redis]) -> None:
    """The old deployment: alert state in the heatmap cache's Redis (its shipped options)."""
    cache = servers[shipped.heatmap_service]
    assert option(shipped.options(shipped.heatmap_service), "maxmemory-policy") == "volatile-ttl"
    writer = RuleStateWriter(shipped.alerts, cache)
    written = writer.write_all()
    pending = writer.pending_outbox()
    ttl_free_keys = [writer.store.epoch_key(TOPIC, p) for p in range(PARTITIONS)] + [writer.store.history.stream_key]

    fill = fill_with_breach_heatmaps(shipped.detector, cache)

    lost = writer.lost(written)
    print(f"shared volatile-ttl Redis: {len(lost)} of {len(written)} rule states lost; fill {fill}")
    assert lost, f"expected the fill to evict rule states (they expire, like breach heatmaps): {fill}"
    # Keys without a TTL are never candidates for volatile-ttl: outboxes, epochs and history stay.
    assert writer.pending_outbox() == pending
    assert all(cache.exists(key) for key in ttl_free_keys)


def test_a_full_state_redis_refuses_writes_and_evicts_nothing(shipped: ShippedRedis,
                                                              servers: dict[str, redis.Redis]) -> None:
    state = servers[shipped.state_service]
    if shipped.state_service == shipped.heatmap_service:
        pytest.fail(f"alert state shares the heatmap cache's Redis ({shipped.state_service!r})")
    assert option(shipped.options(shipped.state_service), "maxmemory") == SIZES["STATE_REDIS_MAXMEMORY"]
    writer = RuleStateWriter(shipped.alerts, state)
    written: dict[str, CameraState] = {}
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        for index in range(100_000):  # far more than 2 MB of state: the loop ends by the refused write
            camera = f"cam-{index:05d}"
            writer.partitions[camera] = index % PARTITIONS
            written[camera] = writer.write(camera, camera_scores(index))
    assert written, "the state Redis refused the very first write"
    assert writer.lost(written) == [] and int(state.info("stats")["evicted_keys"]) == 0
