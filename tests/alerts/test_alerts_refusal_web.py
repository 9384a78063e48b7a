"""The operator page in a real headless Chromium: the banner of a model refused at hot swap, and camera
health shown as unknown while the camera-health service is not reporting."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alerts_helpers import API_TOKEN, seed_redis
from test_alerts_web import browser  # noqa: F401  (the Chromium fixture)

from linewatch.alerts.api import start_server
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.settings import AlertsSettings, HttpSettings
from linewatch.deploy.local import free_port

MUTED = "rgb(139, 148, 158)"  # style.css --muted: neither healthy green nor unhealthy amber


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (seed 1): a second version of the product."""
    from linewatch.detector.model.training.train import train_synthetic_model

    return train_synthetic_model(tmp_path_factory.mktemp("second") / "b.safetensors", epochs=1, seed=1)


def text_of(driver: Any, selector: str) -> str:
    """innerText of the first match, '' when none (one script: the page re-renders every 2 s)."""
    return str(driver.execute_script("const n = document.querySelector(arguments[0]); return n ? n.innerText : ''",
                                     selector))


def sign_in(driver: Any, port: int) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"http://127.0.0.1:{port}/")
    driver.find_element(By.ID, "token").send_keys(API_TOKEN)
    driver.find_element(By.ID, "login").click()


def banner_shown(driver: Any) -> str:
    """The refusal banner's text while it is visible, else ''."""
    return str(driver.execute_script("const b = document.getElementById('model-refusals');"
                                     "return b.hidden ? '' : b.innerText"))


def test_a_refused_model_is_a_banner_until_the_registry_moves_on(
        make_settings: Callable[..., AlertsSettings], browser: Any, tiny_model: Path,  # noqa: F811
        second_model: Path, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    from linewatch.detector.model.checkpoint import file_sha256
    from linewatch.detector.registry.db import Database
    from linewatch.detector.registry.hotswap import ModelWatcher, RedisRefusalBoard
    from linewatch.detector.registry.models import Registry
    from linewatch.detector.registry.store import FolderStore

    port = free_port()
    settings = make_settings(http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    # The engineers' view of the registry and the detector's, whose copy of the second model is damaged.
    registry, detector_registry = (Registry(db, FolderStore(tmp_path / name)) for name in ("store", "det-store"))
    good = registry.register(tiny_model, product="bracket").version
    bad = registry.register(second_model, product="bracket").version
    shutil.copytree(registry.store.root, detector_registry.store.root)
    detector_registry.store.path_for(file_sha256(second_model)).write_bytes(b"\0" * 100)
    registry.promote(good, product="bracket")
    board = RedisRefusalBoard(settings.redis.client(), settings.redis.key_prefix, ttl_s=5.0)
    watcher = ModelWatcher(detector_registry, "bracket", poll_s=0.2, current_version=good, refusal_sinks=[board])
    server = start_server(settings, AlertsMetrics())
    wait = WebDriverWait(browser, 60)
    try:
        watcher.start()
        sign_in(browser, port)
        wait.until(lambda d: "updated" in text_of(d, "#status"))
        assert banner_shown(browser) == ""  # nothing refused: no banner
        registry.promote(bad, product="bracket")
        shown = wait.until(banner_shown)
        assert f"Model {bad} for product bracket (every line) is refused: model_file" in shown
        assert f"The previous model {good} keeps scoring." in shown
        assert "digest" in browser.execute_script("return document.querySelector('#model-refusals p').title")
        assert watcher.take() is None and watcher.current_version == good  # the detector still scores with it
        registry.rollback(product="bracket")
        wait.until(lambda d: banner_shown(d) == "")
    finally:
        watcher.stop()
        server.stop()
        db.close()


def test_cameras_are_unknown_while_the_health_service_is_not_reporting(
        make_settings: Callable[..., AlertsSettings], browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.support.ui import WebDriverWait

    from linewatch.common import cache_keys
    from linewatch.health.checks import HealthEvent
    from linewatch.health.state import heartbeat_key, record, refresh

    port = free_port()
    settings = make_settings(http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
    client, prefix = settings.redis.client(), settings.redis.key_prefix
    seed_redis(client, prefix)  # cam-7, with a heatmap card
    client.sadd(cache_keys.cameras_key(prefix), "cam-8")
    record(client, prefix, HealthEvent(check="exposure", status="firing", camera_id="cam-7", line_id="line-3",
                                       alert_id="cam-7-exposure", value=0.93, threshold=0.6,
                                       detail="dark share 0.93 >= 0.6", at_ns=time.time_ns()), ttl_s=300)
    refresh(client, prefix, ["cam-7"], 300)  # the camera-health service's heartbeat
    server = start_server(settings, AlertsMetrics())
    wait = WebDriverWait(browser, 20)

    def health_cells(d: Any) -> dict[str, list[str]]:
        """Camera -> [health text, its colour, failing checks text] of each row, read in one script."""
        return dict(d.execute_script(
            "return Array.from(document.querySelectorAll('#camera-health tbody tr')).map(r => [r.dataset.camera,"
            " [r.cells[2].innerText, getComputedStyle(r.cells[2]).color, r.cells[3].innerText]])"))

    try:
        sign_in(browser, port)
        rows = wait.until(lambda d: (r := health_cells(d)) and len(r) == 2 and r)
        assert rows["cam-7"][0] == "unhealthy" and rows["cam-8"][0] == "healthy"
        assert rows["cam-8"][1] != MUTED
        client.delete(heartbeat_key(prefix))  # the service stops reporting
        rows = wait.until(lambda d: (r := health_cells(d)) and r["cam-8"][0] == "unknown" and r)
        assert rows["cam-7"][0] == "unknown", "its last recorded fault is not news of its health now"
        assert rows["cam-7"][1] == rows["cam-8"][1] == MUTED
        assert rows["cam-7"][2].startswith("last recorded: exposure: dark share 0.93")
        assert "not reporting" in text_of(browser, "#health-monitor")
        assert not browser.execute_script("return document.querySelectorAll('#cameras .card.unhealthy').length")
        refresh(client, prefix, ["cam-7"], 300)  # reporting again
        wait.until(lambda d: health_cells(d)["cam-8"][0] == "healthy")
    finally:
        server.stop()
