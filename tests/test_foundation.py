"""The shared kernel and the command line: settings errors, signal handling, ``linewatch stack``.

(The broker and Redis themselves are exercised through linewatch's own code in every integration suite.)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from linewatch.common.signals import interrupt_on_signals, stop_on_signals
from linewatch.deploy.cli import build_parser
from linewatch.deploy.local import free_port, redis_answers

ROOT = Path(__file__).resolve().parents[1]


def test_bad_setting_gives_one_line_error() -> None:
    code = "import sys\nfrom linewatch.deploy.cli import main\nsys.exit(main(['topics']))\n"
    env = {"LINEWATCH_TOPICS__PARTITIONS": "zero", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "LINEWATCH_TOPICS__PARTITIONS" in lines[0]
    assert "Traceback" not in proc.stderr


def test_every_subcommand_has_a_handler_and_renders_its_help() -> None:
    commands = dict(_leaf_commands(build_parser()))
    assert {"camera", "cameras", "topics", "train", "predict", "evaluate", "export", "detect", "alerts", "stack",
            "demo", "dashboards push"} <= set(commands)
    for name, parser in commands.items():
        parser.format_help()  # a bad %-placeholder in a help text raises here, not only when a user asks
        assert callable(parser.get_default("func")), f"linewatch {name} has no handler"


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(name, parser)`` of every runnable command; groups such as ``dashboards`` are walked into."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield prefix.strip(), parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from _leaf_commands(sub, f"{prefix} {name}")


@pytest.mark.skipif(not Path("/proc/sys/net/ipv4/ip_local_port_range").is_file(), reason="Linux's ephemeral range")
def test_free_ports_are_distinct_bindable_and_below_the_range_outgoing_connections_use() -> None:
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(port < ephemeral_start for port in ports), ports  # no client's source port can take them
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


# --- signals: one helper for every long-running command ---------------------------------------------------------


@pytest.fixture
def sentinel_handlers() -> Iterator[object]:
    """A known SIGINT/SIGTERM handler installed before the test, checked to be back after it."""

    def sentinel(_signum: int, _frame: object) -> None:
        raise AssertionError("the helper's handler should have been active")

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in saved:
        signal.signal(signum, sentinel)
    yield sentinel
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _handlers() -> tuple[object, object]:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_on_signals_sets_the_event_then_puts_the_old_handler_back(signum: int, sentinel_handlers: object) -> None:
    with stop_on_signals() as stop:
        assert not stop.is_set()
        signal.raise_signal(signum)  # delivered to this (main) thread before raise_signal returns
        assert stop.is_set()
    assert _handlers() == (sentinel_handlers, sentinel_handlers)


def test_stop_on_signals_uses_the_callers_event(sentinel_handlers: object) -> None:
    mine = threading.Event()
    with stop_on_signals(mine) as stop:
        assert stop is mine
        signal.raise_signal(signal.SIGTERM)
    assert mine.is_set()


def test_a_second_signal_ends_a_stopping_process_at_once() -> None:
    script = ("import signal, threading\n"
              "from linewatch.common.signals import stop_on_signals\n"
              "with stop_on_signals() as stop:\n"
              "    signal.raise_signal(signal.SIGTERM)\n"
              "    print('stopping' if stop.is_set() else 'not stopping', flush=True)\n"
              "    signal.raise_signal(signal.SIGTERM)\n"
              "    print('survived the second signal', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "stopping\n", proc.stdout + proc.stderr
    assert proc.returncode == -signal.SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_on_signals_raises_once_and_lets_the_cleanup_finish(signum: int, sentinel_handlers: object) -> None:
    cleaned_up = False
    with pytest.raises(KeyboardInterrupt), interrupt_on_signals():
        try:
            signal.raise_signal(signum)
            pytest.fail("the signal did not interrupt")
        finally:
            signal.raise_signal(signal.SIGTERM)  # impatient operator: must not cut the cleanup short
            signal.raise_signal(signal.SIGINT)
            cleaned_up = True
    assert cleaned_up
    assert _handlers() == (sentinel_handlers, sentinel_handlers)


# Run as ``python -m``, the way the demo, the tests and the deploy files start linewatch: a SIGTERM that lands
# in a string exec (a dataclass or namedtuple being built while a module is imported) must still give 130.
INTERRUPTED_IN_A_STRING_EXEC = """
import argparse, sys

from linewatch.common.signals import interrupt_on_signals
from linewatch.deploy import cli


def command(_args):
    with interrupt_on_signals():
        exec("import signal; signal.raise_signal(signal.SIGTERM)", {})


def parser():
    p = argparse.ArgumentParser()
    p.set_defaults(func=command, command="demo", log_level="WARNING")
    return p


cli.build_parser = parser
sys.exit(cli.main([]))
"""


def test_a_signal_caught_inside_a_string_exec_still_exits_130_under_python_m(tmp_path: Path) -> None:
    (tmp_path / "interrupted_entry.py").write_text(INTERRUPTED_IN_A_STRING_EXEC)
    proc = subprocess.run([sys.executable, "-m", "interrupted_entry"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130, proc.stderr  # -2 (killed by SIGINT) without forget_caught_interrupts


def test_off_the_main_thread_the_helpers_change_no_handler(sentinel_handlers: object) -> None:
    seen: list[object] = []

    def worker() -> None:
        with stop_on_signals() as stop, interrupt_on_signals():
            seen.extend([*_handlers(), stop.is_set()])

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert seen == [sentinel_handlers, sentinel_handlers, False]


@pytest.mark.integration  # starts a real broker and Redis as subprocesses
@pytest.mark.timeout(120)
@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGTERM]], ids=["once", "twice"])
def test_stack_command_serves_until_a_signal_then_stops_its_services(signals: list[int], tmp_path: Path) -> None:
    redis_port = free_port()  # nothing listens there, so the command starts its own redis-server
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "linewatch.deploy.cli", "stack", "--log-dir", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        endpoints: dict[str, str] = {}
        while (line := proc.stdout.readline()) and not line.startswith("logs:"):  # its last line before waiting
            name, sep, value = line.strip().partition("=")
            if sep and name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
                endpoints[name] = value
        assert len(endpoints) == 2, endpoints
        broker = endpoints["KAFKA_BOOTSTRAP_SERVERS"]
        assert _accepts(broker) and redis_answers(endpoints["REDIS_URL"])
        for signum in signals:  # a second signal while stopping must not orphan the services
            proc.send_signal(signum)
        out = _output_or_stack_dump(proc, timeout_s=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert not _accepts(broker) and not redis_answers(endpoints["REDIS_URL"])


def _output_or_stack_dump(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The process's output once it exits; if it does not, fail with every thread's stack (SIGUSR1 dump)."""
    try:
        return proc.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # linewatch registers faulthandler on SIGUSR1
        try:
            dump = proc.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired as exc:
            dump = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else str(exc.output)
        pytest.fail(f"linewatch stack did not stop within {timeout_s} s; its threads:\n{dump}")


def _accepts(host_port: str) -> bool:
    import socket

    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False
