"""A short real stream for the PromQL test: cameras, a detector, the alerts service, Alertmanager, Prometheus.

Everything runs for real on free ports: the services in threads of the test process (each with its
own metrics registry and HTTP endpoint), Alertmanager and Prometheus as child processes.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from deploy_helpers import DEPLOY

from linewatch.deploy.local import free_port

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
API_TOKEN = secrets.token_urlsafe(32)  # strong: the alerts service refuses weak or placeholder tokens


@dataclass
class Running:
    """What the stream started, to stop it in reverse order."""

    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    def thread(self, name: str, target: Any, *args: Any, **kwargs: Any) -> None:
        """Run ``target`` in a daemon thread."""
        thread = threading.Thread(target=target, args=args, kwargs=kwargs, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        """Stop threads (their loops watch ``stop``), then child processes."""
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        for proc in self.processes:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def create_topics(bootstrap: str, topics: dict[str, str]) -> None:
    """The test's topics: frames with 2 partitions, the rest with 1."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(name, num_partitions=2 if role == "frames" else 1, replication_factor=1)
           for role, name in topics.items()]
    for future in admin.create_topics(new).values():
        future.result(15)


def produce_garbage(bootstrap: str, topic: str) -> None:
    """One record that is not a linewatch frame: the detector must dead-letter it."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"cam-a", value=b"definitely not a frame")
    assert producer.flush(15) == 0


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> None:
    """Wait until ``url`` answers 200; fail with the process log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready:\n{log.read_text()[-3000:]}")


def start_alertmanager(running: Running, tmp: Path) -> str:
    """Alertmanager with the committed deploy/alertmanager/alertmanager.yml; returns its URL."""
    port = free_port()
    log = tmp / "alertmanager.log"
    proc = subprocess.Popen([ALERTMANAGER, f"--config.file={DEPLOY / 'alertmanager' / 'alertmanager.yml'}",
                             f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    running.processes.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/-/ready", proc, log)
    running.ports["alertmanager"] = port
    return url


def prometheus_config(tmp: Path, ports: dict[str, int]) -> Path:
    """The committed prometheus.yml with 1 s intervals and targets moved to this test's ports."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    targets = {"linewatch-detector": ports["detector"], "linewatch-alerts": ports["alerts"],
               "linewatch-camera": ports["camera"], "prometheus": ports["prometheus"]}
    # Not run by this stream (their rules have promtool unit tests): their jobs are left out.
    config["scrape_configs"] = [job for job in config["scrape_configs"]
                                if job["job_name"] not in {"linewatch-verdicts", "linewatch-camera-health"}]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets.pop(job['job_name'])}"]}]
    assert not targets, f"jobs missing from prometheus.yml: {sorted(targets)}"
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{ports['alertmanager']}"]}]
    shutil.copytree(DEPLOY / "prometheus" / "rules", tmp / "rules")
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(running: Running, tmp: Path) -> str:
    """A real Prometheus scraping the running services every second; returns its URL."""
    port = running.ports["prometheus"]
    config = prometheus_config(tmp, running.ports)
    log = tmp / "prometheus.log"
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    running.processes.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/-/ready", proc, log)
    return url


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """Instant query; returns the result vector (raises on a PromQL error)."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return list(answer["data"]["result"])
