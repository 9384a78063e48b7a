"""Container health probe: exit 0 when ``LINEWATCH_HEALTHCHECK_URL`` (or argv[1]) answers 2xx.

Standard library only, so it works in any linewatch image without curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9108/healthz"


def probe(url: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    """GET ``url``; healthy on a 2xx answer. Returns (healthy, reason)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300, f"{response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code} {exc.read(200).decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(exc)


def main(argv: list[str]) -> int:
    """Probe the URL and print why when unhealthy."""
    url = argv[1] if len(argv) > 1 else os.environ.get("LINEWATCH_HEALTHCHECK_URL", DEFAULT_URL)
    healthy, reason = probe(url)
    if not healthy:
        print(f"unhealthy: {url}: {reason}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
