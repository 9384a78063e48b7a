"""Shared helpers of the deploy tests: load deploy files, resolve compose variables, check env names."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "compose" / ".env.example"
K8S = DEPLOY / "k8s"

# Read by the image's HEALTHCHECK script, not by a settings class.
IMAGE_ENV = {"LINEWATCH_HEALTHCHECK_URL"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    """The variables of ``deploy/compose/.env.example``."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` substitution."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op in (":-", "-"):
            return value if value not in (None, "") or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            if value in (None, ""):
                raise AssertionError(f"compose requires {name}: {arg}")
            return value
        if value is None:
            raise AssertionError(f"${{{name}}} has no value and no default")
        return value

    return _VAR.sub(replace, text.replace("$$", "\0")).replace("\0", "$")


# .env.example ships no secret values; tests fill them in as an operator would (strong random values).
TEST_SECRETS = {"REDIS_PASSWORD": secrets.token_hex(24), "STATE_REDIS_PASSWORD": secrets.token_hex(24),
                "LINEWATCH_API_TOKEN": secrets.token_urlsafe(32),
                "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(24), "POSTGRES_PASSWORD": secrets.token_hex(24),
                "MQTT_PASSWORD": secrets.token_hex(24), "MQTT_PLC_PASSWORD": secrets.token_hex(24)}


def compose_env() -> dict[str, str]:
    """.env.example with the secrets filled in."""
    return {**env_example(), **TEST_SECRETS}


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file with variables resolved from ``env`` (default: .env.example plus test secrets)."""
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env if env is not None else compose_env()))


def linewatch_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the linewatch image (its entrypoint is the ``linewatch`` command)."""
    services = compose["services"].items()
    return {name: svc for name, svc in services if str(svc.get("image", "")).startswith("linewatch:")}


def image_is_pinned(image: str) -> bool:
    """True for ``name:tag`` (tag not ``latest``) or ``name@sha256:...``."""
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return bool(tag) and tag != "latest" and "$" not in tag
