"""The shipped Redis deployments, read back: render compose with chosen variables, find which Redis a
service's URL points at, take the redis-server options out of a container's start-up script, and run a
local redis-server with exactly those options."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from deploy_helpers import COMPOSE, K8S, TEST_SECRETS
from deploy_tools import VENV_BIN, run_tool
from helpers.redis_server import throwaway_redis


def render_compose(folder: Path, variables: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker-compose config`` of the shipped file with only the test secrets and ``variables`` set: every
    other ``${VAR:-default}`` takes its default (neither the caller's environment nor a ``.env`` is read)."""
    env_file = folder / "render.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in {**TEST_SECRETS, **(variables or {})}.items()))
    clean_env = {"PATH": f"{VENV_BIN}{os.pathsep}/usr/bin:/bin", "HOME": str(folder)}
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "--env-file", str(env_file), "--profile", "gpu",
                             "config", "--format", "json"], env=clean_env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def render_kustomization(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/k8s/<overlay>``: the objects it renders."""
    result = run_tool(["kubectl", "kustomize", str(K8S / overlay)])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def url_host(url: str) -> str:
    """The host a Redis URL points at: a compose service name, or a Kubernetes Service DNS name."""
    host = urlparse(url).hostname
    assert host, f"no host in {url!r}"
    return host


def start_up_script(container: dict[str, Any]) -> str:
    """The shell script a compose service (``command``) or k8s container (``args``) runs under ``sh -c``."""
    entrypoint = container.get("entrypoint") or container.get("command") or []
    assert list(entrypoint) == ["/bin/sh", "-c"], f"not a sh -c start-up script: {entrypoint}"
    parts = container["command"] if "entrypoint" in container else container["args"]
    return str(parts[0])


def redis_server_options(script: str) -> list[str]:
    """The options after ``redis-server <config file>`` in a start-up script. The config file is the one the
    script generates, and holds only ``requirepass`` (kept out of argv), so it is left out."""
    joined = script.replace("\\\n", " ")
    line = next((text for text in joined.splitlines() if "redis-server" in text), None)
    assert line is not None, f"no redis-server command in:\n{script}"
    words = shlex.split(line)
    options = words[words.index("redis-server") + 1:]
    return options[1:] if options and not options[0].startswith("--") else options


def option(options: list[str], name: str) -> str | None:
    """The value of ``--name`` among redis-server ``options`` (the last one wins, as in redis-server)."""
    values = [options[i + 1] for i, word in enumerate(options[:-1]) if word == f"--{name}"]
    return values[-1] if values else None


@contextmanager
def redis_server(folder: Path, options: list[str], password: str) -> Iterator[str]:
    """A local redis-server with the shipped ``options`` and ``password`` (requirepass in a config file, as
    the containers do); only where it listens and writes (port, bind, dir) are the test's. Yields its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "redis.conf"
    config.write_text(f'requirepass "{password}"\n')
    config.chmod(0o600)
    with throwaway_redis(folder, str(config), *options, "--daemonize", "no") as url:
        yield url
