"""The operator page in a real headless Chromium: sign in, heatmaps from Redis, acknowledge an alert."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alerts_helpers import API_TOKEN, seed_redis

from linewatch.alerts.api import start_server
from linewatch.alerts.history import AlertHistory
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.settings import AlertsSettings, HttpSettings
from linewatch.deploy.local import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium / chromium-driver not installed (Debian packages chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="lw-chromium-") as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--no-first-run",
                     f"--user-data-dir={profile}", "--window-size=1200,900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def test_page_shows_heatmaps_and_acknowledges(make_settings: Callable[..., AlertsSettings], browser: object,
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    registry_url = f"sqlite:///{tmp_path / 'registry.db'}"  # where the feedback buttons' marks go
    monkeypatch.setenv("LINEWATCH_REGISTRY__DATABASE_URL", registry_url)
    port = free_port()
    settings = make_settings(http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
    client = settings.redis.client()
    alert_id = seed_redis(client, settings.redis.key_prefix)
    server = start_server(settings, AlertsMetrics())
    wait = WebDriverWait(driver, 20)
    loaded = ("return Array.from(document.querySelectorAll(arguments[0]))"
              ".filter(i => i.complete && i.naturalWidth > 0).length")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "token").send_keys(API_TOKEN)
        driver.find_element(By.ID, "login").click()
        # Live view: the camera card shows the overlay PNG fetched from Redis, and the alert is listed.
        wait.until(lambda d: d.execute_script(loaded, "#cameras img.overlay") == 1)
        assert driver.execute_script("return document.querySelector('#cameras img.overlay').naturalWidth") == 64
        assert "0.70" in driver.find_element(By.ID, "cameras").text
        row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-alert='{alert_id}']").text)
        assert "firing" in row and "cam-7" in row
        # The live view refreshes without reload: a new score appears.
        client.hset(f"{settings.redis.key_prefix}:cam:cam-7:latest", "normalised_score", 0.42)
        wait.until(lambda d: "0.42" in d.find_element(By.ID, "cameras").text)
        # The table is re-rendered every refresh, so find and click the link in one step.
        driver.execute_script(f"document.querySelector(\"tr[data-alert='{alert_id}'] a\").click()")
        assert driver.current_url.endswith(f"#/alert/{alert_id}")
        # Alert page: worst heatmap and the frames around it, then acknowledge.
        wait.until(lambda d: d.execute_script(loaded, "#worst-heatmap") == 1)
        wait.until(lambda d: d.execute_script(loaded, "#frames img") == 4)
        assert driver.find_element(By.ID, "alert-ack").text == "not acknowledged"
        driver.find_element(By.ID, "ack-note").send_keys("checked the part")
        driver.find_element(By.ID, "ack-button").click()
        wait.until(lambda d: "acknowledged by operator" in d.find_element(By.ID, "alert-ack").text)
        assert "checked the part" in driver.find_element(By.ID, "alert-ack").text
        ack = AlertHistory(client, settings.redis.key_prefix).get(alert_id).ack  # type: ignore[union-attr]
        assert ack is not None and (ack.by, ack.note) == ("operator", "checked the part")
        # Feedback on the worst frame, recorded as the token's identity.
        driver.find_element(By.ID, "defect-type").send_keys("scratch")
        driver.find_element(By.ID, "real-defect").click()
        wait.until(lambda d: "recorded" in d.find_element(By.ID, "feedback-result").text)
        from linewatch.detector.registry.db import Database, Feedback

        db = Database(registry_url)
        with db.session() as session:
            marks = [(f.camera_id, f.sequence, f.verdict, f.defect_type, f.by, f.alert_id)
                     for f in session.query(Feedback).all()]
        db.close()
        worst = AlertHistory(client, settings.redis.key_prefix).get(alert_id).worst_sequence  # type: ignore[union-attr]
        assert marks == [("cam-7", worst, "real_defect", "scratch", "operator", alert_id)]
    finally:
        server.stop()


def test_page_shows_camera_health_and_suspect_alerts(make_settings: Callable[..., AlertsSettings],
                                                     browser: object) -> None:
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    from linewatch.common import cache_keys
    from linewatch.health.checks import HealthEvent
    from linewatch.health.state import heartbeat_key, record, refresh

    driver: WebDriver = browser  # type: ignore[assignment]
    port = free_port()
    settings = make_settings(http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
    client, prefix = settings.redis.client(), settings.redis.key_prefix
    alert_id = seed_redis(client, prefix, unhealthy=("exposure",))  # cam-7's alert fired while it was dark
    client.sadd(cache_keys.cameras_key(prefix), "cam-8")  # a healthy camera the detector knows

    def health(camera: str, check: str, status: str, detail: str) -> None:
        """A transition written the way `linewatch camera-health` writes it."""
        record(client, prefix, HealthEvent(check=check, status=status, camera_id=camera,  # type: ignore[arg-type]
                                           line_id="line-3", alert_id=f"{camera}-{check}", value=0.0,
                                           threshold=0.0, detail=detail, at_ns=time.time_ns()), ttl_s=300)

    health("cam-7", "exposure", "firing", "dark share 0.93 >= 0.6")
    health("cam-9", "silence", "firing", "no frame for 41 s")  # never reached the detector: known from health
    refresh(client, prefix, ["cam-7", "cam-9"], 300)  # the service's heartbeat
    server = start_server(settings, AlertsMetrics())
    wait = WebDriverWait(driver, 20)

    # Read in one script: the page re-renders every 2 s, so element handles go stale between calls.
    def health_rows(d: WebDriver) -> dict[str, str]:
        return dict(d.execute_script("return Array.from(document.querySelectorAll('#camera-health tbody tr'))"
                                     ".map(r => [r.dataset.camera, r.innerText])"))

    def text_of(d: WebDriver, selector: str) -> str:
        return str(d.execute_script("const n = document.querySelector(arguments[0]); return n ? n.innerText : ''",
                                    selector))

    try:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "token").send_keys(API_TOKEN)
        driver.find_element(By.ID, "login").click()
        rows = wait.until(lambda d: (r := health_rows(d)) and len(r) == 3 and r)
        assert "unhealthy" in rows["cam-7"] and "exposure: dark share 0.93" in rows["cam-7"]
        assert "unhealthy" in rows["cam-9"] and "silence" in rows["cam-9"]
        assert "healthy" in rows["cam-8"] and "unhealthy" not in rows["cam-8"]
        assert text_of(driver, "#health-monitor") == ""
        wait.until(lambda d: "unhealthy: exposure" in text_of(d, "#cameras .card.unhealthy[data-camera='cam-7']"))
        wait.until(lambda d: "firing · suspect" in text_of(d, f"tr.suspect[data-alert='{alert_id}']"))
        # The health clears without a reload; the service stopping is shown, not taken for health.
        health("cam-7", "exposure", "resolved", "")
        wait.until(lambda d: "unhealthy" not in health_rows(d)["cam-7"])
        client.delete(heartbeat_key(prefix))
        wait.until(lambda d: "not reporting" in text_of(d, "#health-monitor"))
        # The alert page says why the alert is suspect.
        driver.execute_script(f"document.querySelector(\"tr[data-alert='{alert_id}'] a\").click()")
        banner = wait.until(lambda d: text_of(d, "#alert-suspect"))
        assert "camera was unhealthy (exposure)" in banner
        assert "yes: camera unhealthy (exposure)" in driver.find_element(By.ID, "alert-facts").text
    finally:
        server.stop()


def test_page_draws_the_camera_regions_over_the_heatmap(make_settings: Callable[..., AlertsSettings],
                                                         browser: object) -> None:
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    port = free_port()
    # pixel units of a 64x64 snapshot: the page gets them normalised, as the detector applies them
    label = {"units": "pixels", "frame_size": (64, 64), "exclude": [[(0, 0), (16, 0), (16, 16), (0, 16)]],
             "include": [[(0, 0), (64, 0), (64, 48), (0, 48)]]}
    settings = make_settings(http=HttpSettings(enabled=True, host="127.0.0.1", port=port),
                             camera_regions={"cam-7": label})
    seed_redis(settings.redis.client(), settings.redis.key_prefix)
    server = start_server(settings, AlertsMetrics())
    polygons = ("return Array.from(document.querySelectorAll(\"#cameras [data-camera='cam-7'] svg.regions polygon\"))"
                ".map(p => [p.getAttribute('class'), p.getAttribute('points')])")
    try:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        other = httpx.get(f"http://127.0.0.1:{port}/api/cameras/cam-8/regions", headers=headers).json()
        assert (other["include"], other["exclude"]) == ([], [])  # no regions: the whole frame counts
        assert httpx.get(f"http://127.0.0.1:{port}/api/cameras/cam-7/regions").status_code == 401
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "token").send_keys(API_TOKEN)
        driver.find_element(By.ID, "login").click()
        drawn = WebDriverWait(driver, 20).until(lambda d: d.execute_script(polygons))
        assert sorted(drawn) == [["roi-exclude", "0,0 0.25,0 0.25,0.25 0,0.25"],
                                 ["roi-include", "0,0 1,0 1,0.75 0,0.75"]]
        # drawn over the heatmap itself: the outline's box is the overlay image's box
        boxes = driver.execute_script(
            "const card = document.querySelector(\"#cameras [data-camera='cam-7']\");"
            "const a = card.querySelector('img.overlay').getBoundingClientRect(),"
            " b = card.querySelector('svg.regions').getBoundingClientRect();"
            "return [a.left, a.top, a.width, a.height, b.left, b.top, b.width, b.height].map(Math.round)")
        assert boxes[:4] == boxes[4:] and boxes[2] > 0
    finally:
        server.stop()
