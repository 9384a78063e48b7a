"""One helper for the HTTP channels: POST, and turn every failure into a DeliveryError."""

from __future__ import annotations

from typing import Any

import httpx

from linewatch.alerts.deliveries import DeliveryError


def post(client: httpx.Client, url: str, *, content: bytes | None = None, json: Any = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    """POST; 5xx, 408, 429 and network errors are retryable, other non-2xx are permanent."""
    try:
        response = client.post(url, content=content, json=json, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if response.is_success:
        return response
    permanent = response.status_code < 500 and response.status_code not in (408, 429)
    raise DeliveryError(f"{url}: HTTP {response.status_code}: {response.text[:300]}", permanent=permanent)
