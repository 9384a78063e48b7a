"""One demo run: model, detector and alerts subprocesses, cameras for a bounded time, drain, summary."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.deploy.demo_processes import PortTakenError, Processes, model_summary, wait_http
from linewatch.deploy.local import LocalStack, free_port
from linewatch.ingest.settings import CameraSettings

if TYPE_CHECKING:
    from linewatch.deploy.demo_model import DemoModel
    from linewatch.ingest.camera import CameraStats

T = TypeVar("T")
# A port that free_port() found free can be taken before the child binds it (any process's bind(0) or outgoing
# connection draws from the same ephemeral range); the child then exits at once, and a new port is tried.
PORT_ATTEMPTS = 3
TRAIN_BUDGET_S = 330.0  # 20 epochs at 128 px took 287 s in a fresh-clone `make demo` (7 min 49 s in all)


@dataclass(frozen=True)
class DemoOptions:
    """What one demo run is asked to do (built once from the command line by :func:`deploy.demo.demo_options`).

    ``data``: the MVTec-layout set to replay, None for synthetic parts.
    """

    data: Path | None
    out: Path
    cache_dir: Path
    cameras: int
    fps: float
    duration: float
    drain_timeout: float
    epochs: int
    image_size: int | None
    train_images: int
    retrain: bool
    device: str
    backend: str
    port: int
    # detector/model/training/recipes.py; the demo pins one (training every candidate would double its time)
    recipe: str = "fine"

@dataclass(frozen=True)
class CameraTotals:
    """What the cameras did, all together, and when they ran."""

    sent: int
    captured: int
    dropped: int
    started_ns: int
    stopped_ns: int

    @classmethod
    def of(cls, stats: list[CameraStats], started_ns: int, stopped_ns: int) -> CameraTotals:
        """Totals of the cameras that returned stats (one that raised has none)."""
        return cls(sent=sum(s.sent for s in stats), captured=sum(s.captured for s in stats),
                   dropped=sum(s.dropped_total for s in stats), started_ns=started_ns, stopped_ns=stopped_ns)


class DemoRun:
    """State of one ``linewatch demo`` run (see :func:`deploy.demo.run_demo`)."""

    def __init__(self, options: DemoOptions, stack: LocalStack, processes: Processes) -> None:
        self.options, self.data, self.stack, self.processes = options, options.data, stack, processes
        self.run_id = uuid.uuid4().hex[:8]
        # Names unique to the run, so a reused Redis or an external broker never mixes two runs.
        self.topics = TopicSettings(frames=f"frames-{self.run_id}", results=f"results-{self.run_id}",
                                    breaches=f"breaches-{self.run_id}", dead_letters=f"dead-letters-{self.run_id}",
                                    alerts=f"alerts-{self.run_id}",
                                    alert_dead_letters=f"alert-dead-letters-{self.run_id}",
                                    partitions=max(8, options.cameras))
        self.kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
        self.prefix = f"demo-{self.run_id}"
        self.detector_group, self.alerts_group = f"linewatch-detector-{self.run_id}", f"linewatch-alerts-{self.run_id}"
        self.alerts_url = ""
        self.promotion: Any = None  # registry.demo.DemoPromotion: the version the detector follows

    def _env(self) -> dict[str, str]:
        env = {f"LINEWATCH_TOPICS__{name.upper()}": str(value) for name, value in self.topics.model_dump().items()}
        env.update({"LINEWATCH_REDIS__KEY_PREFIX": self.prefix, "LINEWATCH_SESSION_TIMEOUT_MS": "6000",
                    "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": self.stack.bootstrap_servers,
                    "LINEWATCH_REDIS__URL": self.stack.redis_url, "PYTHONUNBUFFERED": "1"})
        return env

    def _start_detector(self, model: Path) -> tuple[int, float]:
        return _on_a_free_port(lambda port: self._start_detector_on(model, port))

    def _start_detector_on(self, model: Path, port: int) -> tuple[int, float]:
        argv = ["detect", "--model", str(model), "--device", self.options.device, "--metrics-port", str(port),
                "--backend", self.options.backend,
                "--group-id", self.detector_group, "--max-batch", "8", "--max-wait-ms", "50"]
        started = time.monotonic()
        env = {**self._env(), "LINEWATCH_METRICS_HOST": "127.0.0.1",
               **(self.promotion.detector_env if self.promotion is not None else {})}
        proc, log_path = self.processes.spawn("detector", argv, env)
        wait_http(f"http://127.0.0.1:{port}/readyz", 180, proc, "linewatch detect", log_path)
        return port, time.monotonic() - started

    def _start_alerts(self, token: str) -> str:
        if self.options.port:
            return self._start_alerts_on(token, self.options.port)
        return _on_a_free_port(lambda port: self._start_alerts_on(token, port))

    def _start_alerts_on(self, token: str, port: int) -> str:
        url = f"http://127.0.0.1:{port}"
        # Every replayed image is a different part, so one breaching frame is one defective part: alert on it
        # (k=1 of n=1) rather than the default 3 of 5, which suits several frames of one part (a scratch seen
        # as it passes); resolve_after and cooldown_s still keep it to one alert per episode.
        env = {**self._env(), "LINEWATCH_API_TOKEN": token, "LINEWATCH_HTTP__PUBLIC_BASE_URL": url,
               "LINEWATCH_GROUP_ID": self.alerts_group, "LINEWATCH_RULES__DEFAULT__K": "1",
               "LINEWATCH_RULES__DEFAULT__N": "1"}
        proc, log_path = self.processes.spawn("alerts", ["alerts", "--host", "127.0.0.1", "--port", str(port)], env)
        wait_http(f"{url}/health", 90, proc, "linewatch alerts", log_path)
        return url

    def _cameras(self) -> list[CameraSettings]:
        a = self.options
        state_dir = a.out / "state" / self.run_id
        cameras = []
        for i in range(a.cameras):
            if self.data is not None:
                source = f"replay:{self.data}?split=test&shuffle=1&seed={i}"
            else:
                source = f"synthetic:?defect_probability=0.3&size={a.image_size or 256}&seed={i + 1}"
            # Dataset images differ in size; a real camera's do not, and equal sizes let the detector batch them
            # (the model's thresholds are set on frames of this size: demo_model.CALIBRATION_IMAGES).
            side = a.image_size or 256
            cameras.append(CameraSettings(camera_id=f"cam-{i + 1}", line_id="line-1", source=source, fps=a.fps,
                                          loop=True, state_dir=state_dir, kafka=self.kafka, topics=self.topics,
                                          create_topics=False, resize=(side, side)))
        return cameras

    def forget_state(self) -> None:
        """Delete this run's Redis keys once its services have stopped.

        The alerts service keeps its rule state without a TTL (so a restart neither drops nor repeats an
        alert); the run id is never reused, so left behind in a shared or reused Redis it is only litter.
        """
        import redis

        try:
            client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=5)
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start:start + 500])
        except redis.RedisError as exc:
            print(f"note: could not delete the demo's Redis keys under {self.prefix}: {exc}", flush=True)

    def run(self) -> int:
        """Run the line, write the summary; 0 when every frame sent was accounted for."""
        from linewatch.common.topics import all_topic_names, ensure_topics
        from linewatch.deploy.demo_collect import TopicCollector

        model = self._model()
        self.promotion = self._promote(model.path)
        ensure_topics(self.kafka, all_topic_names(self.topics), self.topics.partitions)
        detector_start_s = self._start_services(model.path)
        collector = TopicCollector(self.kafka, self.topics, f"demo-reader-{self.run_id}").start()
        cameras = self._run_cameras(collector)
        print(f"cameras stopped after {self.options.duration:.0f}s: {cameras.sent} frames sent; waiting for the line "
              "to drain", flush=True)
        data = self._drain(collector, cameras.sent)
        return self._report(model, data, cameras, detector_start_s)

    def _model(self) -> DemoModel:
        """The cached model for these options, or a freshly trained one."""
        from linewatch.deploy.demo_model import ensure_model

        a = self.options
        side = a.image_size or 256  # the cameras' frame size (_cameras)
        model = ensure_model(self.data, a.cache_dir, epochs=a.epochs, image_size=a.image_size, recipe=a.recipe,
                             camera_frames=(side, side),
                             train_images=a.train_images, device=a.device, retrain=a.retrain)
        how = "reused cached" if model.cached else f"trained in {model.seconds:.0f}s,"
        print(f"model: {how} {model.path} ({model.config['epochs']} epochs)", flush=True)
        if model.seconds > TRAIN_BUDGET_S:
            print(f"note: training took longer than the demo's ~{TRAIN_BUDGET_S / 60:.0f} min budget on this machine "
                  "(busy or slower CPU); --epochs or --train-images lower it. Later runs reuse the cached model.",
                  flush=True)
        return model

    def _promote(self, model: Path) -> Any:
        """Register and promote the model in an embedded registry under --out; the detector follows it."""
        from linewatch.detector.registry.demo import promote_for_demo

        promotion = promote_for_demo(model, self.options.out / "registry")
        print(f"registry: version {promotion.version} promoted for product {promotion.product} "
              f"({promotion.database_url})", flush=True)
        return promotion

    def _start_services(self, model: Path) -> float:
        """Start the detector, then the alerts service (URL and token printed); returns the detector's start time."""
        detector_port, detector_start_s = self._start_detector(model)
        print(f"detector ready (metrics http://127.0.0.1:{detector_port}/metrics)", flush=True)
        token = secrets.token_urlsafe(32)
        self.alerts_url = self._start_alerts(token)
        print(f"\nalerts web page: {self.alerts_url}/   token: {token}   (running {self.options.duration:.0f}s; "
              "Ctrl-C stops everything)\n", flush=True)
        return detector_start_s

    def _run_cameras(self, collector: Any) -> CameraTotals:
        """Run the cameras for the set duration, reporting progress; every camera closes its producer when it
        stops, before the broker does."""
        from linewatch.ingest.fleet import run_fleet
        from linewatch.ingest.metrics import CameraMetrics

        stop = threading.Event()
        cameras = self._cameras()
        stats: list[Any] = []
        fleet = threading.Thread(target=lambda: stats.extend(run_fleet(cameras, metrics=CameraMetrics(),
                                                                       stop_event=stop)), daemon=True)
        started_ns = time.time_ns()
        fleet.start()
        try:
            self._progress(collector, self.options.duration)
        finally:
            stop.set()
            fleet.join(timeout=60)
        return CameraTotals.of([s for s in stats if s is not None], started_ns, time.time_ns())

    def _drain(self, collector: Any, sent: int) -> Any:
        """Wait until every frame sent has a result or a dead letter and the alerts service has caught up."""
        from linewatch.deploy.demo_collect import group_caught_up

        collector.wait_for(lambda d: len(d.unique_frames()) + len(d.dead_letters) >= sent,
                           self.options.drain_timeout)
        deadline = time.monotonic() + 30
        while not group_caught_up(self.kafka, self.alerts_group, self.topics.results) and time.monotonic() < deadline:
            time.sleep(0.5)
        collector.wait_for(lambda _d: False, 2.0)  # the last alert events
        return collector.stop()

    def _report(self, model: DemoModel, data: Any, cameras: CameraTotals, detector_start_s: float) -> int:
        """Print and write the summary; 0 when every frame sent was accounted for."""
        from linewatch.deploy.demo_report import format_text, pick_examples, summarise, write_outputs

        a = self.options
        extra = {"run": {"run_id": self.run_id, "data": model.data if self.data else "synthetic parts",
                         "cameras": a.cameras, "fps_per_camera": a.fps, "duration_s": a.duration,
                         "alerts_url": self.alerts_url, "detector_start_s": round(detector_start_s, 1),
                         "broker": self.stack.bootstrap_servers, "redis_key_prefix": self.prefix},
                 "model": model_summary(model),
                 "promotion": self.promotion.summary if self.promotion is not None else None}
        summary = summarise(data, sent=cameras.sent, captured=cameras.captured, dropped=cameras.dropped,
                            started_ns=cameras.started_ns, stopped_ns=cameras.stopped_ns, extra=extra)
        examples = pick_examples(data.results, self._redis())
        json_path, html_path = write_outputs(a.out, summary, examples)
        print(format_text(summary))
        print(f"written: {json_path} and {html_path} ({len(examples)} example heatmaps)", flush=True)
        return 0 if summary["frames"]["missing"] == 0 and summary["frames"]["unique_results"] > 0 else 1

    def _progress(self, collector: Any, duration: float) -> None:
        started = time.monotonic()
        end, next_report = started + duration, started + 15.0
        while (now := time.monotonic()) < end:
            time.sleep(min(0.5, end - now))
            self._check_children()
            now = time.monotonic()
            if now >= next_report or now >= end:
                next_report += 15.0
                with collector.lock:
                    done, alerts = len(collector.data.unique_frames()), len(collector.data.alert_events)
                print(f"  {min(now - started, duration):.0f}s: {done} frames scored, {alerts} alert events",
                      flush=True)

    def _check_children(self) -> None:
        """Fail fast, with the log's tail, when the detector or the alerts service died."""
        for name, proc in self.processes.started:
            if proc.poll() is not None:
                log_path = self.processes.log_dir / f"{name}.log"
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"{name} exited with code {proc.returncode} during the run:\n{tail}")

    def _redis(self) -> Any:
        from linewatch.common.redis_settings import RedisSettings

        return RedisSettings.model_validate({"url": self.stack.redis_url}).client()


def _on_a_free_port(start: Callable[[int], T]) -> T:
    """``start(port)`` on a port free right now, again on another one if the port was taken meanwhile."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return start(free_port())
        except PortTakenError as exc:
            if attempt == PORT_ATTEMPTS:
                raise
            print(f"note: {str(exc).splitlines()[0]} (its port was taken meanwhile); trying another port", flush=True)
    raise AssertionError("unreachable")
