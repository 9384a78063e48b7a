"""Exit codes of the real ``linewatch detect`` and ``linewatch alerts`` processes (what an orchestrator sees).

tests/detector_service/test_hostile.py and tests/alerts/ run the services' ``run()`` in a thread; here each
service is its own OS process, started the way a container starts it, so its signal handlers, its threads
and the interpreter's exit are part of what is tested:

- SIGTERM: exit 0, after finishing the work in hand. For the detector: every frame it consumed has its
  result and its offset committed, and nothing it produced is left uncommitted, so a restart neither loses
  nor repeats a frame. For the alerts service: every alert of a committed record was delivered, and a
  restart delivers the rest; also while its Redis is down (a transient outage it retries, by design).
- A fatal failure: a non-zero exit within seconds, not a hang and not a loop that swallows it: the
  detector's inference thread dies; the alerts service meets an unexpected error, cannot bind its API port
  or cannot reach its broker at start. Faults that a real process cannot be made to hit on demand are
  patched in by tests/helpers/inject.py (test-only, outside the product).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from helpers.faults import Receiver, TopicCollector, create_topics, report, spawn, wait_until
from test_crash import _results_stream, result_pair

from linewatch.alerts.rules import CameraState, step
from linewatch.alerts.settings import RuleConfig
from linewatch.deploy.local import free_port
from linewatch.errors import BrokerError
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import encode_frame

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
EXIT_S = 60  # a process must be gone this long after SIGTERM or its failure (its drain is bounded by 30 s)
SECRET = "exits-webhook-secret"
API_TOKEN = "Ex1tsTokn_Pl-XeCTIXxWlI8N-cRYvJLGmuE7gx8FLFs"


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offset of partition 0 (0 when nothing was committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return max(0, int(consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset))
    finally:
        consumer.close()


def _exit_code(proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = EXIT_S) -> int:
    """The exit code, or a failure (after SIGKILL, so nothing is left behind) when it does not exit in time."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"still running {timeout_s:.0f}s later (hung):\n{_tail(log_path)}") from None


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


def _started(log_path: Path, marker: str, before: int, proc: subprocess.Popen[bytes]) -> bool:
    """True once the log has more ``marker`` lines than ``before`` (its signal handlers are then in place)."""
    assert proc.poll() is None, f"exited {proc.returncode} while starting:\n{_tail(log_path)}"
    return log_path.read_text(errors="replace").count(marker) > before


# --- linewatch detect ----------------------------------------------------------------------------------------

def _detector_setup(bootstrap: str, redis_url: str, unique: str, tiny_model: Path,
                    frames: int) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """One-partition topics holding ``frames`` frames of cam-0 (sequence = offset), the env and the args."""
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters")}
    create_topics(bootstrap, dict.fromkeys(topics.values(), 1))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    images = [render_sample(i, size=64).image for i in range(8)]
    for seq in range(frames):
        f = encode_frame(images[seq % 8], camera_id="cam-0", line_id="line-1", sequence=seq, capture_ns=time.time_ns())
        producer.produce(topics["frames"], key=f.key, value=f.value, headers=f.headers)
    assert producer.flush(30) == 0
    env = {"LINEWATCH_TOPICS__RESULTS": topics["results"], "LINEWATCH_TOPICS__BREACHES": topics["breaches"],
           "LINEWATCH_TOPICS__DEAD_LETTERS": topics["dead_letters"], "LINEWATCH_REDIS__KEY_PREFIX": f"lwr-{unique}",
           "LINEWATCH_SESSION_TIMEOUT_MS": "6000", "LINEWATCH_HEATMAP_TTL_S": "60", "LINEWATCH_BREACH_TTL_S": "60",
           "LINEWATCH_CAMERA_KEY_TTL_S": "60"}
    args = ["detect", "--model", str(tiny_model), "--bootstrap-servers", bootstrap, "--redis-url", redis_url,
            "--frames-topic", topics["frames"], "--group-id", f"det-{unique}", "--max-batch", "4",
            "--max-wait-ms", "20", "--device", "cpu", "--metrics-port", "0", "--torch-threads", "1"]
    return topics, env, args


def _stop(proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = EXIT_S) -> tuple[int, float]:
    """SIGTERM; (exit code, seconds it took to exit)."""
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    return _exit_code(proc, log_path, timeout_s), round(time.monotonic() - signalled, 1)


@pytest.mark.timeout(240)
def test_detect_exits_0_on_sigterm_after_draining_and_a_restart_neither_loses_nor_repeats_a_frame(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path, tmp_path: Path) -> None:
    """A backlog, SIGTERM once results flow: batches are in the worker, queued and open. The process must
    finish them, commit exactly what it produced and exit 0; the next detector then does only the rest.
    A stop that skipped the drain loses frames (committed without a result) or repeats them (produced
    but not committed); one that ignored SIGTERM hangs; one killed by it exits -15."""
    total = 1000
    topics, env, args = _detector_setup(bootstrap, redis_url, unique, tiny_model, total)
    group = f"det-{unique}"
    results = TopicCollector(bootstrap, topics["results"], result_pair)
    log_path = tmp_path / "detector.log"
    try:
        first = spawn(args, env, log_path)
        try:
            wait_until(lambda: _started(log_path, "consuming ", 0, first), 120, "the detector to start")
            wait_until(lambda: len(results) >= 20 or first.poll() is not None, 120, "the first results")
        finally:
            seen_at_signal = len(results)
            code, exit_s = _stop(first, log_path)
        stopped_log = log_path.read_text(errors="replace")
        committed = _committed(bootstrap, group, topics["frames"])
        wait_until(lambda: {s for _, s in results.items} >= set(range(committed)), 30,
                   "the results of every committed frame")
        time.sleep(1)  # anything produced but not committed would show up by now
        first_results = Counter(s for _, s in results.items)

        second = spawn(args, env, log_path)  # the orchestrator's next detector (or the same one, restarted)
        try:
            wait_until(lambda: _started(log_path, "consuming ", 1, second), 120, "the second detector to start")
            wait_until(lambda: len({s for _, s in results.items}) >= total, 120, "every frame's result")
        finally:
            second_code, _ = _stop(second, log_path)
        time.sleep(1)
        every = Counter(s for _, s in results.items)
    finally:
        results.close()
    report("exits.detector_sigterm", {"exit_code": code, "exit_s_after_sigterm": exit_s, "frames": total,
                                      "results_seen_at_sigterm": seen_at_signal, "committed_at_stop": committed,
                                      "results_at_stop": sum(first_results.values()),
                                      "restart_exit_code": second_code, "results": sum(every.values()),
                                      "repeated": sum(every.values()) - len(every)})
    assert code == 0, _tail(log_path)
    assert "detector stopped" in stopped_log and "Traceback" not in stopped_log, stopped_log[-3000:]
    assert 0 < committed < total, f"committed {committed} of {total}: not stopped mid-backlog, proves nothing"
    assert set(first_results) == set(range(committed)), \
        f"first detector: results {len(first_results)} (max {max(first_results)}), committed {committed}"
    assert max(first_results.values()) == 1
    assert second_code == 0, _tail(log_path)
    assert set(every) == set(range(total)) and max(every.values()) == 1, \
        f"repeated after a graceful stop: {sorted(s for s, n in every.items() if n > 1)[:10]}"


@pytest.mark.timeout(240)
def test_detect_exits_non_zero_when_its_inference_worker_dies_and_a_restart_loses_nothing(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path, tmp_path: Path) -> None:
    """The inference thread dies (an exception processing does not catch) on its third batch: the process
    must exit 1 within seconds, not hang on a consumer waiting for a dead worker nor keep consuming
    without it, and must not have committed a frame without its result."""
    total = 40
    topics, env, args = _detector_setup(bootstrap, redis_url, unique, tiny_model, total)
    results = TopicCollector(bootstrap, topics["results"], result_pair)
    log_path = tmp_path / "detector.log"
    try:
        dying = spawn(args, env, log_path, fault="detector-worker-dies:3")
        wait_until(lambda: dying.poll() is not None or "detector worker failed" in log_path.read_text(errors="replace"),
                   120, "the worker to die")
        died = time.monotonic()
        code = _exit_code(dying, log_path)
        exit_s = round(time.monotonic() - died, 1)
        died_log = log_path.read_text(errors="replace")
        committed = _committed(bootstrap, f"det-{unique}", topics["frames"])
        wait_until(lambda: {s for _, s in results.items} >= set(range(committed)), 30,
                   "the results of every committed frame")
        before_restart = {s for _, s in results.items}

        restarted = spawn(args, env, log_path)
        try:
            wait_until(lambda: _started(log_path, "consuming ", 1, restarted), 120, "the restarted detector")
            wait_until(lambda: len({s for _, s in results.items}) >= total, 120, "every frame's result")
        finally:
            restart_code, _ = _stop(restarted, log_path)
    finally:
        results.close()
    report("exits.detector_worker_dies", {"exit_code": code, "exit_s_after_death": exit_s, "frames": total,
                                          "committed_at_exit": committed, "results_at_exit": len(before_restart),
                                          "restart_exit_code": restart_code})
    assert code == 1, died_log[-3000:]
    assert "InjectedWorkerDeath" in died_log, died_log[-3000:]  # it died of the injected fault, not of another
    assert died_log.count("detector worker failed\n") == 1  # died once: no worker restarted behind our back
    assert "linewatch detect: error: detector worker failed: injected" in died_log
    assert before_restart and committed < total
    assert set(range(committed)) <= before_restart  # nothing committed without its result
    assert restart_code == 0, _tail(log_path)
    assert {s for _, s in results.items} == set(range(total))


# --- linewatch alerts ----------------------------------------------------------------------------------------

RULE = RuleConfig(k=3, n=5, resolve_after=5, cooldown_s=0.5)


def _alerts_env(bootstrap: str, redis_url: str, unique: str, webhook: Receiver | None = None) -> dict[str, str]:
    env = {"LINEWATCH_API_TOKEN": API_TOKEN, "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
           "LINEWATCH_REDIS__URL": redis_url, "LINEWATCH_REDIS__KEY_PREFIX": f"lwr-{unique}",
           "LINEWATCH_TOPICS__RESULTS": f"results-{unique}", "LINEWATCH_TOPICS__ALERTS": f"alerts-{unique}",
           "LINEWATCH_TOPICS__ALERT_DEAD_LETTERS": f"adl-{unique}", "LINEWATCH_TOPICS__PARTITIONS": "1",
           "LINEWATCH_GROUP_ID": f"alerts-{unique}", "LINEWATCH_SESSION_TIMEOUT_MS": "6000",
           "LINEWATCH_BATCH_SIZE": "8", "LINEWATCH_RULES__DEFAULT": RULE.model_dump_json(),
           "LINEWATCH_RETRY__BACKOFF_S": "0.05", "LINEWATCH_PUBLISH_ALERTS_TOPIC": "false"}
    if webhook is not None:
        env |= {"LINEWATCH_WEBHOOK_URL": webhook.url, "LINEWATCH_WEBHOOK_SECRET": SECRET}
    return env


def _produce_results(bootstrap: str, unique: str, per_camera: int) -> list:
    """The results topic (one partition) with a stream of clean runs and breach bursts of four cameras."""
    stream = _results_stream(random.Random(5), per_camera)
    create_topics(bootstrap, {f"results-{unique}": 1})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for r in stream:
        producer.produce(f"results-{unique}", key=r.camera_id.encode(), value=r.model_dump_json().encode())
    assert producer.flush(30) == 0
    return stream


def _events_per_record(stream: list) -> list[set[str]]:
    """The alert event ids each record of ``stream`` causes (the rule replayed in record order)."""
    states: dict[str, CameraState] = {}
    events = []
    for result in stream:
        state = states.get(result.camera_id) or CameraState(camera_id=result.camera_id)
        states[result.camera_id], transitions = step(state, result, RULE)
        events.append({e.event_id for e in transitions})
    return events


@pytest.mark.timeout(240)
def test_alerts_exits_0_on_sigterm_mid_stream_and_a_restart_delivers_the_rest(
        bootstrap: str, redis_url: str, unique: str, tmp_path: Path) -> None:
    """``linewatch alerts`` with its API, SIGTERM while it works through a backlog: exit 0 within seconds
    and no traceback; every alert of a record it committed was delivered; the next instance delivers the
    rest (nothing lost across a graceful stop)."""
    stream = _produce_results(bootstrap, unique, per_camera=500)
    per_record = _events_per_record(stream)
    expected = set().union(*per_record)
    first_alert = next(i for i, events in enumerate(per_record) if events) + 1  # the offset that commits it
    webhook = Receiver(secret=SECRET)
    env = _alerts_env(bootstrap, redis_url, unique, webhook)
    log_path = tmp_path / "alerts.log"
    delivered = lambda: {r["event_id"] for r in webhook.accepted()}  # noqa: E731
    try:
        first = spawn(["alerts", "--port", str(free_port())], env, log_path)
        try:
            wait_until(lambda: _started(log_path, "assigned partitions", 0, first), 120, "the alerts service")
            wait_until(lambda: first.poll() is not None or _committed(
                bootstrap, f"alerts-{unique}", f"results-{unique}") >= first_alert, 60, "a commit past an alert")
        finally:
            code, exit_s = _stop(first, log_path, timeout_s=30)
        stopped_log = log_path.read_text(errors="replace")
        committed = _committed(bootstrap, f"alerts-{unique}", f"results-{unique}")
        before_restart = delivered()

        restarted = spawn(["alerts", "--no-api"], env, log_path)
        try:
            wait_until(lambda: delivered() >= expected or restarted.poll() is not None, 120, "every alert delivered")
        finally:
            restart_code, _ = _stop(restarted, log_path, timeout_s=30)
    finally:
        webhook.close()
    report("exits.alerts_sigterm", {"exit_code": code, "exit_s_after_sigterm": exit_s, "records": len(stream),
                                    "committed_at_stop": committed, "delivered_at_stop": len(before_restart),
                                    "alert_events_of_committed_records": len(set().union(*per_record[:committed])),
                                    "expected_alert_events": len(expected), "restart_exit_code": restart_code})
    assert code == 0, stopped_log[-3000:]
    assert "Traceback" not in stopped_log, stopped_log[-3000:]
    assert 0 < committed < len(stream), f"committed {committed} of {len(stream)}: not stopped mid-stream"
    of_committed = set().union(*per_record[:committed])
    assert of_committed, "no alert among the committed records: the check below proves nothing"
    assert of_committed <= before_restart, f"committed, never delivered: {sorted(of_committed - before_restart)[:5]}"
    assert restart_code == 0, _tail(log_path)
    assert delivered() >= expected


@pytest.mark.timeout(120)
def test_alerts_exits_0_on_sigterm_while_its_redis_is_down(bootstrap: str, unique: str, tmp_path: Path) -> None:
    """A Redis outage is transient for the alerts service (it rewinds the batch and retries, as long as it
    lasts); the retry loop must still end on SIGTERM, with 0."""
    env = _alerts_env(bootstrap, f"redis://127.0.0.1:{free_port()}/0", unique)  # nothing listens there
    log_path = tmp_path / "alerts.log"
    proc = spawn(["alerts", "--no-api"], env, log_path)
    try:
        wait_until(lambda: _started(log_path, "will retry it", 1, proc), 90, "two failed retries")
    finally:
        code, exit_s = _stop(proc, log_path, timeout_s=30)
    report("exits.alerts_sigterm_redis_down", {"exit_code": code, "exit_s_after_sigterm": exit_s})
    assert code == 0, _tail(log_path)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("failure", ["unexpected_error", "api_port_taken", "broker_unreachable"])
def test_alerts_exits_non_zero_on_a_fatal_failure(failure: str, bootstrap: str, redis_url: str, unique: str,
                                                   tmp_path: Path) -> None:
    """Each ends the process non-zero within seconds of the failure (not a hang, not a retry loop):
    an exception the loop does not expect (a bug, injected into its 3rd batch of records) and the API port
    held by another process with 1, no broker at start (after its 15 s metadata timeout) with the
    BrokerError status and one line (linewatch/errors.py)."""
    log_path = tmp_path / "alerts.log"
    env = _alerts_env(bootstrap, redis_url, unique)
    args, fault = ["alerts", "--no-api"], None
    holder = socket.socket()
    try:
        if failure == "unexpected_error":
            total = len(_produce_results(bootstrap, unique, per_camera=20))
            fault = "alerts-loop-raises:3"
        elif failure == "api_port_taken":
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            args = ["alerts", "--port", str(holder.getsockname()[1])]
        else:
            env["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"  # nothing listens there
        started = time.monotonic()
        code = _exit_code(spawn(args, env, log_path, fault=fault), log_path, timeout_s=90)
        took = time.monotonic() - started
    finally:
        holder.close()
    text = log_path.read_text(errors="replace")
    report(f"exits.alerts_{failure}", {"exit_code": code, "exit_s_after_start": round(took, 1)})
    assert code == (BrokerError.exit_code if failure == "broker_unreachable" else 1), text[-3000:]
    if failure == "unexpected_error":
        assert text.count("InjectedBug: injected: batch 3") == 1, text[-3000:]  # once: not retried
        committed = _committed(bootstrap, f"alerts-{unique}", f"results-{unique}")
        assert committed < total  # the failing batch is not committed: the next instance reads it again
    elif failure == "api_port_taken":
        assert "operator API did not start" in text, text[-3000:]
    else:
        assert "linewatch alerts: error: cannot list topics" in text and "Traceback" not in text, text[-3000:]
    assert took < 60, f"took {took:.0f}s to exit"
