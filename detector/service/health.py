"""HTTP endpoint of a detector: ``/metrics`` (Prometheus), ``/healthz`` (loop alive), ``/readyz``.

Readiness follows health: a detector that is not healthy (stalled loop, dead worker) is never
ready, so it leaves the Service's endpoints at the same time as its liveness probe starts failing.
The endpoint has no authentication: it listens on 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthState:
    """What the probes report; updated by the consumer loop."""

    def __init__(self, stall_after_s: float = 60.0) -> None:
        self.model_loaded = False
        self.assigned = False
        self.stopping = False
        self.stall_after_s = stall_after_s
        self.failure: str | None = None
        self._beat = time.monotonic()

    def beat(self) -> None:
        """The loop is alive (called every iteration)."""
        self._beat = time.monotonic()

    def fail(self, reason: str) -> None:
        """The process cannot serve any more (e.g. its worker died); it is about to exit."""
        self.failure = self.failure or reason

    def healthy(self) -> tuple[bool, str]:
        """Alive unless something failed or the loop has not turned for ``stall_after_s``."""
        if self.failure is not None:
            return False, self.failure
        idle = time.monotonic() - self._beat
        if idle > self.stall_after_s:
            return False, f"consumer loop stalled for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Ready once the model is loaded and the group gave us partitions, and only while healthy."""
        ok, why = self.healthy()
        if not ok:
            return False, why
        if self.stopping:
            return False, "stopping"
        if not self.model_loaded:
            return False, "model not loaded"
        if not self.assigned:
            return False, "no partitions assigned yet"
        return True, "ok"


class HealthServer:
    """A tiny threaded HTTP server on ``host:port`` (port 0 picks a free one; see ``.port``)."""

    def __init__(self, state: HealthState, registry: CollectorRegistry, host: str, port: int) -> None:
        handler = _handler(state, registry)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="detector-health", daemon=True)

    def start(self) -> HealthServer:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def _handler(state: HealthState, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = state.healthy() if path == "/healthz" else state.ready()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would flood the log

    return Handler
