"""A throwaway redis-server for tests that need one of their own (memory limits, eviction, outages)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from linewatch.deploy.local import free_port, redis_server_binary, wait_for_port


@contextmanager
def throwaway_redis(folder: Path, *args: str) -> Iterator[str]:
    """redis-server with ``args`` (a config file may come first), listening on a free loopback port and writing
    only under ``folder`` (those three settings come last, so they win); yields its URL, stops it after."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [redis_server_binary(), *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    with (folder / "redis.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, 15, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
