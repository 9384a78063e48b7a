"""``linewatch dashboards push``: upload the Grafana dashboards in ``deploy/grafana/dashboards``.

Idempotent: each dashboard is saved by its ``uid`` with ``overwrite=True`` into a folder
created once (also by uid), so pushing twice leaves one copy of each, at the newest version.
Panels query the ``${datasource}`` template variable, never a fixed datasource uid, so the
dashboards work in any Grafana; ``--datasource-uid`` preselects that Grafana's Prometheus.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linewatch.errors import BrokerError, ConfigurationError

DASHBOARD_DIR = Path(__file__).resolve().parent / "grafana" / "dashboards"
FOLDER_UID = "linewatch"
FOLDER_TITLE = "linewatch"
DATASOURCE_VARIABLE = "datasource"


class DashboardError(BrokerError, RuntimeError):
    """A dashboard file is invalid or Grafana refused it; the message says which and why."""


@dataclass(frozen=True)
class PushResult:
    """What Grafana answered for one dashboard."""

    uid: str
    title: str
    status: str
    version: int | None
    url: str | None


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    """Every ``*.json`` dashboard in ``directory``, each checked to have a uid and a title."""
    dashboards = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DashboardError(f"{path}: not readable JSON: {exc}") from None
        if not isinstance(data, dict) or not data.get("uid") or not data.get("title"):
            raise DashboardError(f"{path}: a dashboard needs a 'uid' and a 'title'")
        dashboards.append(data)
    if not dashboards:
        raise DashboardError(f"no dashboards (*.json) in {directory}")
    return dashboards


def with_datasource(dashboard: dict[str, Any], uid: str) -> dict[str, Any]:
    """A copy of ``dashboard`` whose ``${datasource}`` variable starts on the datasource ``uid``.

    Raises:
        DashboardError: the dashboard has no ``datasource`` template variable to set.
    """
    copy = json.loads(json.dumps(dashboard))
    variables = copy.get("templating", {}).get("list", [])
    found = [v for v in variables if v.get("name") == DATASOURCE_VARIABLE and v.get("type") == "datasource"]
    if not found:
        raise DashboardError(f"{dashboard.get('uid')}: no '{DATASOURCE_VARIABLE}' template variable to set")
    for variable in found:
        variable["current"] = {"selected": True, "text": uid, "value": uid}
    return copy


def _ensure_folder(api: Any) -> str:
    from grafana_client.client import GrafanaClientError

    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
    return FOLDER_UID


def push_dashboards(grafana_url: str, token: str, dashboards: list[dict[str, Any]] | None = None,
                    timeout_s: float = 10.0) -> list[PushResult]:
    """Create/overwrite each dashboard by uid in the ``linewatch`` folder.

    Raises:
        DashboardError: Grafana could not be reached or refused a dashboard.
    """
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    dashboards = dashboards if dashboards is not None else load_dashboards()
    api = GrafanaApi.from_url(grafana_url, credential=token, timeout=timeout_s)
    results = []
    try:
        folder_uid = _ensure_folder(api)
        for dashboard in dashboards:
            body = {k: v for k, v in dashboard.items() if k != "id"}  # ids are per instance; uid is the key
            answer = api.dashboard.update_dashboard({"dashboard": body, "folderUid": folder_uid, "overwrite": True,
                                                     "message": "linewatch dashboards push"})
            results.append(PushResult(uid=body["uid"], title=body["title"], status=str(answer.get("status")),
                                      version=answer.get("version"), url=answer.get("url")))
    except GrafanaClientError as exc:
        raise DashboardError(f"Grafana at {grafana_url} refused: HTTP {exc.status_code}: {exc.message}") from None
    except Exception as exc:  # grafana-client raises niquests errors on network failures
        raise DashboardError(f"cannot reach Grafana at {grafana_url}: {type(exc).__name__}: {exc}") from None
    return results


def _push(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("GRAFANA_TOKEN")
    if not token:
        raise ConfigurationError("--token (or GRAFANA_TOKEN) is required")
    # DashboardError (a BrokerError: Grafana refused or is unreachable, or a file is unusable) ends it in one line
    dashboards = load_dashboards(Path(args.dir))
    if args.datasource_uid:
        dashboards = [with_datasource(dashboard, args.datasource_uid) for dashboard in dashboards]
    results = push_dashboards(args.grafana_url, token, dashboards)
    for result in results:
        print(f"{result.uid}: {result.status} (version {result.version}) {result.url or ''}".rstrip())
    return 0


def register(subparsers: Any) -> None:
    """Add the ``dashboards`` subcommand (``dashboards push``) and ``config-doc``."""
    from linewatch.deploy import settings_doc

    parser = subparsers.add_parser("dashboards", help="manage the Grafana dashboards")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    push = actions.add_parser("push", help="upload the dashboards to Grafana (idempotent, by uid)")
    push.add_argument("--grafana-url", required=True, help="e.g. http://grafana:3000")
    push.add_argument("--token", help="service-account token (Editor); default: env GRAFANA_TOKEN")
    push.add_argument("--dir", default=str(DASHBOARD_DIR), help="folder of dashboard JSON files")
    push.add_argument("--datasource-uid", help="uid of the Prometheus datasource the dashboards open on "
                                               "(default: Grafana's default Prometheus datasource)")
    push.set_defaults(func=_push)
    settings_doc.register(subparsers)
