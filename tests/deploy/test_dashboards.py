"""Grafana provisioning: dashboard structure, datasource references, and `linewatch dashboards push`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY, load_compose

from linewatch.deploy.cli import main
from linewatch.deploy.dashboards import DASHBOARD_DIR, load_dashboards, push_dashboards
from linewatch.deploy.local import free_port
from linewatch.errors import BrokerError

GRAFANA = DEPLOY / "grafana"
TOKEN = "glsa_test_token"


def provisioned_datasource_uids() -> set[str]:
    config = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yaml").read_text())
    return {ds["uid"] for ds in config["datasources"]}


def datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    """Every ``datasource`` object anywhere in a dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value
            else:
                yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def queried_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that query (rows only group them)."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboards_have_unique_uids_panel_ids_and_resolving_datasources() -> None:
    dashboards = load_dashboards()
    uids = [d["uid"] for d in dashboards]
    assert len(uids) == len(set(uids))
    # Only the ${datasource} variable: a fixed uid breaks the dashboards in any other Grafana.
    known = {"${datasource}", "-- Grafana --"}
    for dashboard in dashboards:
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{dashboard['uid']}: duplicate panel ids"
        refs = list(datasource_refs(dashboard))
        assert refs and all(ref["uid"] in known for ref in refs), {r["uid"] for r in refs} - known
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert not provisioned_datasource_uids() & set(json.dumps(dashboard).split('"')), "a hard-coded uid"
        for panel in queried_panels(dashboard):
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids))
        cells = set()  # panels must not overlap on the 24-column grid
        for panel in dashboard["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & mine, f"panel {panel['title']!r} overlaps another"
            cells |= mine


def test_camera_health_row_has_a_panel_per_check_on_the_real_metric_names() -> None:
    """Each health check's panel queries the metric the camera-health service really exports."""
    import re

    from linewatch.health.checks import CHECKS
    from linewatch.health.metrics import HealthMetrics

    dashboard = next(d for d in load_dashboards() if d["uid"] == "linewatch-line")
    panels = dashboard["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Camera health")
    row = panels[start + 1:]
    row = row[:next((i for i, p in enumerate(row) if p["type"] == "row"), len(row))]
    exported = {m.name for m in HealthMetrics().registry.collect()}
    queried = {name for p in row for t in p["targets"] for name in re.findall(r"linewatch_[a-z_]+", t["expr"])}
    assert queried and queried <= exported, queried - exported
    # The check each panel shows is named first in its title; the overview shows every check's state.
    titles = {p["title"].split(":")[0].split(" ")[0].lower() for p in row}
    assert set(CHECKS) - {"drift"} <= titles and "score" in titles, titles
    assert any("linewatch_camera_health_unhealthy" in t["expr"] for p in row for t in p["targets"])
    for panel in row:
        for target in panel["targets"]:
            assert 'line=~"$line"' in target["expr"] and 'camera=~"$camera"' in target["expr"], target["expr"]
    assert row[0]["gridPos"]["y"] > panels[start]["gridPos"]["y"]


def test_provider_points_at_the_mounted_dashboard_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "dashboards" / "provider.yaml").read_text())["providers"][0]
    mounts = load_compose()["services"]["grafana"]["volumes"]
    target = next(v.split(":")[1] for v in mounts if v.startswith("../grafana/dashboards:"))
    assert provider["options"]["path"] == target
    datasource = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in load_compose()["services"]


class FakeGrafana:
    """A small HTTP server speaking the three Grafana API routes the push uses; records requests."""

    def __init__(self) -> None:
        self.folders: dict[str, str] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        grafana = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._reply(401, {"message": "invalid API key"})
                    return False
                return True

            def do_GET(self) -> None:
                grafana.requests.append(("GET", self.path, None))
                if not self._authorised():
                    return
                uid = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/api/folders/") and uid in grafana.folders:
                    self._reply(200, {"uid": uid, "title": grafana.folders[uid]})
                else:
                    self._reply(404, {"message": "folder not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                grafana.requests.append(("POST", self.path, body))
                if not self._authorised():
                    return
                if self.path == "/api/folders":
                    grafana.folders[body["uid"]] = body["title"]
                    self._reply(200, {"uid": body["uid"]})
                elif self.path == "/api/dashboards/db":
                    uid = body["dashboard"]["uid"]
                    exists = uid in grafana.dashboards
                    if exists and not body.get("overwrite"):
                        self._reply(412, {"message": "dashboard with the same uid already exists"})
                        return
                    version = grafana.dashboards.get(uid, {}).get("version", 0) + 1
                    grafana.dashboards[uid] = {**body, "version": version}
                    self._reply(200, {"status": "success", "uid": uid, "version": version, "url": f"/d/{uid}"})
                else:
                    self._reply(404, {"message": "no such route"})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_push_is_idempotent_by_uid(grafana: FakeGrafana, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "push", "--grafana-url", grafana.url, "--token", TOKEN]) == 0
    assert main(["dashboards", "push", "--grafana-url", grafana.url, "--token", TOKEN]) == 0
    files = {d["uid"] for d in load_dashboards(DASHBOARD_DIR)}
    assert set(grafana.dashboards) == files  # one copy per uid after two pushes
    assert all(d["version"] == 2 and d["overwrite"] is True and d["folderUid"] == "linewatch"
               for d in grafana.dashboards.values())
    assert list(grafana.folders) == ["linewatch"]
    assert sum(1 for method, path, _ in grafana.requests if (method, path) == ("POST", "/api/folders")) == 1
    assert "linewatch-line: success (version 2)" in capsys.readouterr().out


def test_push_reports_a_bad_token_and_an_unreachable_grafana(grafana: FakeGrafana,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "push", "--grafana-url", grafana.url, "--token", "wrong"]) == BrokerError.exit_code
    assert "HTTP 401" in capsys.readouterr().err
    assert not grafana.dashboards
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Exception, match="cannot reach Grafana"):
        push_dashboards(closed, TOKEN, timeout_s=2)


def test_push_with_datasource_uid_preselects_that_datasource(grafana: FakeGrafana) -> None:
    assert main(["dashboards", "push", "--grafana-url", grafana.url, "--token", TOKEN,
                 "--datasource-uid", "plant-prom"]) == 0
    for stored in grafana.dashboards.values():
        variables = {v["name"]: v for v in stored["dashboard"]["templating"]["list"]}
        assert variables["datasource"]["current"]["value"] == "plant-prom"
        refs = {ref["uid"] for ref in datasource_refs(stored["dashboard"]["panels"])}
        assert refs == {"${datasource}"}
    assert all(v["name"] != "datasource" or not v["current"] for d in load_dashboards()
               for v in d["templating"]["list"]), "the files themselves stay datasource-neutral"
