"""Fault-injection helpers of the reliability suite: figures, a cuttable TCP proxy, receivers, processes.

Everything here is real: the proxy forwards bytes between real sockets, the receivers are real
HTTP servers, the processes are real ``linewatch`` subprocesses; only the faults are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
FULL = os.environ.get("LINEWATCH_FULL") == "1"
RESULTS_JSON = ROOT / "benchmarks" / "results" / "reliability.json"
_lock = threading.Lock()


def size(reduced: Any, full: Any) -> Any:
    """The reduced value in ``make test``, the full one with ``LINEWATCH_FULL=1``."""
    return full if FULL else reduced


def report(case: str, figures: dict[str, Any]) -> None:
    """Print a case's figures; at full size also append them to ``benchmarks/results/reliability.json``."""
    print(f"\n[reliability] {case} ({'full' if FULL else 'reduced'}): {json.dumps(figures, sort_keys=True)}")
    if not FULL:
        return
    entry = {"case": case, "size": "full", "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
             "machine": f"{platform.node()} {os.cpu_count()} CPU, load {os.getloadavg()[0]:.1f}",
             "figures": figures}
    with _lock:
        existing = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else []
        existing.append(entry)
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS_JSON.with_suffix(".tmp")
        tmp.write_text(json.dumps(existing, indent=1) + "\n")
        tmp.replace(RESULTS_JSON)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.2) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(step_s)


def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    """Create each topic with its partition count."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in partitions.items()]
    for future in admin.create_topics(new).values():
        future.result(15)


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class TopicCollector:
    """Reads a topic from the start in a background thread and keeps every record's value and key."""

    def __init__(self, bootstrap: str, topic: str, parse: Callable[[Any], Any] = lambda m: m.value()) -> None:
        self.items: list[Any] = []
        self._parse = parse
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"collect-{topic}-{time.time_ns()}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                   "session.timeout.ms": 6000})
        self._consumer.subscribe([topic])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(200, timeout=0.3):
                if msg.error() is None:
                    self.items.append(self._parse(msg))
        self._consumer.close()

    def __len__(self) -> int:
        return len(self.items)

    def close(self) -> None:
        """Stop reading and leave the group."""
        self._stop.set()
        self._thread.join(10)


class TcpProxy:
    """A TCP forwarder (asyncio, own thread) that can be cut (all connections dropped, port refusing) and restored."""

    def __init__(self, target_port: int, listen_port: int) -> None:
        self.target_port, self.port = target_port, listen_port
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.restore()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()  # like a pulled cable: no orderly close
        self._writers.clear()

    def restore(self) -> None:
        """Accept and forward connections again."""
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        asyncio.run_coroutine_threadsafe(self._cut(), self.loop).result(10)

    def close(self) -> None:
        """Cut and stop the loop."""
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)


def start_proxied_broker(log_dir: Path) -> tuple[subprocess.Popen[bytes], TcpProxy]:
    """A Tansu broker that advertises a proxy's port, so every client connection goes through the proxy."""
    from linewatch.deploy.local import free_port, tansu_binary, wait_for_port

    broker_port, proxy_port = free_port(), free_port()
    argv = [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}", "--storage-engine", "memory://tansu/"]
    with (log_dir / "proxied-broker.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port("127.0.0.1", broker_port, 30, proc)
    return proc, TcpProxy(broker_port, proxy_port)


class Receiver:
    """A real HTTP receiver that records every POST; ``mode`` ok | error (HTTP 500) | down (port closed).

    ``forward`` (a base URL) passes each accepted body on (e.g. to a real Alertmanager) and answers
    with its status, so the deliveries before Alertmanager's own deduplication can be counted.
    """

    def __init__(self, forward: str | None = None, secret: str | None = None) -> None:
        from linewatch.deploy.local import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.forward, self.secret = forward, secret
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.mode = "ok"
        self._server: ThreadingHTTPServer | None = None
        self._start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                import httpx

                from linewatch.alerts.deliveries.webhook import verify

                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 500 if receiver.mode == "error" else 200
                signed = receiver.secret is None or verify(receiver.secret, raw, dict(self.headers))
                if not signed:
                    status = 401
                if status == 200 and receiver.forward:
                    status = httpx.post(receiver.forward + self.path, content=raw,
                                        headers={"Content-Type": "application/json"}, timeout=10).status_code
                with receiver.lock:
                    receiver.received.append({"body": json.loads(raw), "status": status, "signed": signed,
                                              "event_id": self.headers.get("X-Linewatch-Event-Id")})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def _start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def set_mode(self, mode: str) -> None:
        """Switch behaviour; ``down`` closes the listening socket, leaving it restarts the server."""
        if mode == "down" and self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        elif mode != "down" and self._server is None:
            self._start()
        self.mode = mode

    def accepted(self) -> list[dict[str, Any]]:
        """Requests answered 200."""
        with self.lock:
            return [r for r in self.received if r["status"] == 200]

    def close(self) -> None:
        """Stop serving."""
        self.set_mode("down")


def start_alertmanager(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real Alertmanager (no clustering) on a free port; returns the process and its base URL."""
    import httpx

    from linewatch.deploy.local import free_port

    binary = "/usr/bin/prometheus-alertmanager"
    if not Path(binary).exists():
        import pytest

        pytest.skip(f"{binary} missing (Debian package prometheus-alertmanager)")
    config = tmp / "alertmanager.yml"
    config.write_text("route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n")
    port = free_port()
    with (tmp / "alertmanager.log").open("wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={tmp / 'am-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 30, "alertmanager to start")
    return proc, url


def spawn(args: list[str], env: dict[str, str], log_path: Path, fault: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``linewatch ARGS`` (as ``python -m deploy.cli``) with extra environment, logging to a file.

    ``fault`` (e.g. ``detector-worker-dies:3``) starts it through tests/helpers/inject.py instead: the same
    command with that one fault patched in (see there).
    """
    entry = ["-m", "linewatch.deploy.cli"] if fault is None else [str(Path(__file__).with_name("inject.py")), fault]
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, *entry, *args], cwd=ROOT, env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT)


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False
