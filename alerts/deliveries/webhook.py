"""Generic webhook: a JSON body signed with HMAC-SHA256 of a shared secret.

Headers: ``X-Linewatch-Signature: sha256=<hex digest of the exact body bytes>``,
``X-Linewatch-Event`` (firing or resolved) and ``X-Linewatch-Event-Id`` (stable across
redeliveries, so a receiver can drop the rare duplicate of at-least-once delivery).
"""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx

from linewatch.alerts.deliveries import alert_links
from linewatch.alerts.deliveries.http import post
from linewatch.alerts.rules import AlertEvent

SIGNATURE_HEADER = "X-Linewatch-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time compare)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def body(event: AlertEvent, public_base_url: str) -> bytes:
    """The JSON body of one transition (keys sorted, compact)."""
    document = {"event_id": event.event_id, "kind": event.kind, "alert": event.alert.model_dump(mode="json"),
                "links": alert_links(public_base_url, event.alert)}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class WebhookChannel:
    """POSTs signed alert transitions to one URL."""

    name = "webhook"
    kinds: tuple[str, ...] = ("firing", "resolved")

    def __init__(self, url: str, secret: str, *, public_base_url: str, timeout_s: float = 5.0) -> None:
        self.url, self.secret, self.public_base_url = url, secret, public_base_url
        self.client = httpx.Client(timeout=timeout_s)

    def send(self, event: AlertEvent) -> None:
        """POST one signed transition."""
        content = body(event, self.public_base_url)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, content),
                   "X-Linewatch-Event": event.kind, "X-Linewatch-Event-Id": event.event_id}
        post(self.client, self.url, content=content, headers=headers)
