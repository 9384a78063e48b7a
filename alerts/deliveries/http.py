"""One helper for the HTTP channels: POST, turn every failure into a DeliveryError, never print a secret URL.

Channel URLs may carry credentials (``https://user:pass@host/hook?token=...``). Every error text that
names a URL goes through :func:`redact_url` / :func:`scrub`, and httpx's own request log (INFO, with the
full URL) is raised to WARNING for the whole process.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

import httpx

from linewatch.alerts.deliveries import DeliveryError

logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)


def redact_url(url: str) -> str:
    """``url`` with its password and every query value replaced by ``***`` (scheme, host and path kept)."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        if parts.username:
            netloc = f"{parts.username}:***@{netloc}" if parts.password is not None else f"***@{netloc}"
        query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return SplitResult(parts.scheme, netloc, parts.path, query, "").geturl()
    except ValueError:
        return "<unparsable url>"


def scrub(text: str, url: str) -> str:
    """``text`` with the URL and its secret parts (password, query values of 4+ characters) replaced."""
    text = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url)
        secrets = [parts.password or "", *(v for _, v in parse_qsl(parts.query, keep_blank_values=True))]
    except ValueError:
        return text
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):  # "1" is no secret
        text = text.replace(secret, "***")
    return text


def post(client: httpx.Client, url: str, *, content: bytes | None = None, json: Any = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    """POST; 5xx, 408, 429 and network errors are retryable, other non-2xx are permanent."""
    shown = redact_url(url)
    try:
        response = client.post(url, content=content, json=json, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(scrub(f"{shown}: {type(exc).__name__}: {exc}", url)) from None
    if response.is_success:
        return response
    permanent = response.status_code < 500 and response.status_code not in (408, 429)
    raise DeliveryError(scrub(f"{shown}: HTTP {response.status_code}: {response.text[:300]}", url),
                        permanent=permanent)
