"""compose.yaml's comments about published ports are true of what docker-compose renders with every variable
at its default, and by default no metrics or health port is published, nothing on more than this host."""

from __future__ import annotations

import re
from typing import Any

import pytest
from deploy_helpers import COMPOSE, linewatch_services
from redis_deploy import render_compose

from linewatch.deploy.cli import build_parser

NOT_PUBLISHED = re.compile(r"\b(?:not|never)\s+published\b|\bunpublished\b", re.IGNORECASE)
SERVICE_KEY = re.compile(r"^  ([A-Za-z0-9_.-]+):")
COMMENT = re.compile(r"(?:^|\s)#\s?(.*)$")


def service_comments(compose_text: str) -> dict[str, list[str]]:
    """Service name -> the comments written inside its block under ``services:`` (whole-line and trailing)."""
    comments: dict[str, list[str]] = {}
    in_services, service = False, None
    for line in compose_text.splitlines():
        if line[:1] not in ("", " ", "#"):  # a top-level key: services starts, or another section does
            in_services, service = line.startswith("services:"), None
            continue
        key = SERVICE_KEY.match(line) if in_services else None
        if key:
            service = key.group(1)
            comments[service] = []
        comment = COMMENT.search(line)
        if service is not None and comment:
            comments[service].append(comment.group(1))
    return comments


def claims_not_published(compose_text: str) -> dict[str, list[str]]:
    """Services whose comments say a port of theirs is not published, with those comments."""
    comments = service_comments(compose_text)
    return {name: found for name, lines in comments.items() if (found := [c for c in lines if NOT_PUBLISHED.search(c)])}


def contradictions(compose_text: str, model: dict[str, Any]) -> dict[str, list[str]]:
    """Services that say a port is not published but publish ports in the rendered ``model``."""
    return {name: said for name, said in claims_not_published(compose_text).items()
            if model["services"].get(name, {}).get("ports")}


@pytest.fixture(scope="module")
def defaults_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose model with only the required secrets set: every other variable at its default."""
    return render_compose(tmp_path_factory.mktemp("compose-defaults"))


@pytest.mark.unit
def test_the_check_catches_a_comment_that_says_not_published_above_published_ports() -> None:
    # A regression seen before: the comment said one thing, `ports:` did the other.
    text = ("services:\n  alerts:\n    environment:\n"
            "      # Prometheus scrapes /metrics without the token on the compose network only (port not published).\n"
            "      LINEWATCH_HTTP__METRICS_PUBLIC: \"true\"\n    ports:\n      - \"127.0.0.1:8081:8081\"\n"
            "  detector:\n    environment:\n      LINEWATCH_METRICS_HOST: 0.0.0.0  # the port is not published\n"
            "volumes:\n  # not published\n  data:\n")
    model = {"services": {"alerts": {"ports": [{"target": 8081}]}, "detector": {}}}
    assert list(claims_not_published(text)) == ["alerts", "detector"]
    assert list(contradictions(text, model)) == ["alerts"]


@pytest.mark.integration
def test_no_service_publishes_a_port_its_comments_say_is_not_published(defaults_model: dict[str, Any]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    claims = claims_not_published(text)
    assert {"detector", "verdicts", "camera-health"} <= set(claims), claims  # the parser finds the claims
    assert contradictions(text, defaults_model) == {}


@pytest.mark.integration
def test_by_default_only_loopback_ports_and_no_metrics_port_are_published(defaults_model: dict[str, Any]) -> None:
    services = defaults_model["services"]
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    for name, ports in published.items():
        assert all(port.get("host_ip") == "127.0.0.1" for port in ports), f"{name} publishes beyond this host: {ports}"
    for name, svc in linewatch_services(defaults_model).items():
        metrics_port = getattr(build_parser().parse_args([str(a) for a in svc["command"]]), "metrics_port", None)
        assert metrics_port not in {port["target"] for port in published[name]}, f"{name} publishes its metrics port"
    # Redis (both roles) is reached over the compose network only.
    assert not [name for name, svc in services.items() if str(svc["image"]).startswith("redis:") and svc.get("ports")]

