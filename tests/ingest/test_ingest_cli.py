"""``linewatch camera``, ``cameras`` and ``topics`` against the real broker (ingest parser only, so
other packages' work in progress cannot break these tests)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient

from linewatch.errors import ConfigurationError
from linewatch.ingest import cli

ReadTopic = Callable[..., list[Message]]


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="linewatch")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_camera_command_publishes(bootstrap: str, unique: str, tmp_path: Path, read_topic: ReadTopic,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"cli-{unique}"
    code = run_cli("camera", "--source", "synthetic:?size=40&count=5", "--camera-id", "cli-cam", "--line-id", "l3",
                   "--bootstrap-servers", bootstrap, "--topic", topic, "--partitions", "3", "--resize", "32x24",
                   "--encoding", "png", "--state-dir", str(tmp_path), "--max-frames", "4")
    assert code == 0
    assert "camera cli-cam: captured 4, sent 4, dropped 0" in capsys.readouterr().out
    records = read_topic(topic, 4)
    assert len(records) == 4 and {r.key() for r in records} == {b"cli-cam"}
    headers = dict(records[0].headers())
    assert (headers["lw-width"], headers["lw-height"], headers["lw-line"]) == (b"32", b"24", b"l3")
    assert len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic).topics[topic].partitions) == 3


def test_camera_command_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) bogus") as info:
        run_cli("camera", "--source", "synthetic:?bogus=1", "--state-dir", str(tmp_path))
    assert info.value.exit_code == 2
    with pytest.raises(ConfigurationError, match=r"--camera-id \(LINEWATCH_CAMERA_ID\)") as info:
        run_cli("camera", "--source", "synthetic:", "--camera-id", "bad id!", "--state-dir", str(tmp_path))
    assert info.value.exit_code == 2
    with pytest.raises(SystemExit):
        run_cli("camera", "--resize", "640by480")


def test_cameras_command_runs_every_camera_in_the_file(bootstrap: str, unique: str, tmp_path: Path,
                                                       read_topic: ReadTopic,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"fleet-{unique}"
    config = tmp_path / "cameras.yaml"
    config.write_text(f"""
defaults:
  line_id: line-5
  state_dir: {tmp_path / 'state'}
  kafka: {{bootstrap_servers: "{bootstrap}"}}
  topics: {{frames: {topic}, partitions: 2}}
cameras:
  - {{camera_id: left, source: "synthetic:?size=24&count=3&seed=1"}}
  - {{camera_id: right, source: "synthetic:?size=24&count=4&seed=2", encoding: png}}
""")
    assert run_cli("cameras", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "camera left: captured 3, sent 3" in out and "camera right: captured 4, sent 4" in out
    records = read_topic(topic, 7)
    assert sorted(r.key() for r in records) == [b"left"] * 3 + [b"right"] * 4
    with pytest.raises(ConfigurationError, match=r"missing\.yaml"):
        run_cli("cameras", "--config", str(tmp_path / "missing.yaml"))


def test_topics_command_creates_missing_topics(bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("FRAMES", "RESULTS", "BREACHES", "DEAD_LETTERS", "ALERTS", "ALERT_DEAD_LETTERS"):
        monkeypatch.setenv(f"LINEWATCH_TOPICS__{name}", f"{name.lower()}-{unique}")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert run_cli("topics", "--bootstrap-servers", bootstrap, "--partitions", "3") == 0
    assert capsys.readouterr().out.count(": created") == 6
    assert len(admin.list_topics(f"frames-{unique}").topics[f"frames-{unique}"].partitions) == 3
    assert run_cli("topics", "--bootstrap-servers", bootstrap) == 0
    assert capsys.readouterr().out.count(": exists") == 6


def test_camera_process_flushes_and_exits_cleanly_on_sigterm(bootstrap: str, unique: str, tmp_path: Path,
                                                            read_topic: ReadTopic) -> None:
    topic = f"sig-{unique}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "linewatch.deploy.cli", "camera", "--source", "synthetic:?size=24", "--fps", "25",
         "--camera-id", "sig-cam", "--bootstrap-servers", bootstrap, "--topic", topic, "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert len(read_topic(topic, 3, timeout_s=40)) >= 3  # wait until it publishes (endless source)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    summary = next(line for line in out.splitlines() if line.startswith("camera sig-cam:"))
    captured = int(summary.split("captured ")[1].split(",")[0])
    assert f"sent {captured}, dropped 0, delivery errors 0" in summary
    assert len(read_topic(topic, captured)) == captured  # everything captured was flushed before exit
