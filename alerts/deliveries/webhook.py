"""Generic webhook: a JSON body signed per the Standard Webhooks scheme (https://www.standardwebhooks.com).

Headers: ``webhook-id`` (the event id: stable across redeliveries, so a receiver drops the rare
duplicate of at-least-once delivery), ``webhook-timestamp`` (seconds, this attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. Because the id and the
time are signed with the body, a receiver can refuse a captured request replayed later (the
``standardwebhooks`` library refuses timestamps more than 5 minutes off) or twice (same id).
Receivers verify with e.g. ``standardwebhooks.Webhook(secret).verify(body, headers)``, given the same
secret string: ``whsec_`` + base64 of the key bytes (a secret without that prefix is used as its UTF-8
bytes; hand receivers :func:`receiver_secret` of it). ``X-Linewatch-Event`` says firing, resolved, silent or
suspect (an open alert whose camera turned unhealthy: ``alert.suspect`` and ``alert.suspect_checks``);
``X-Linewatch-Event-Id`` repeats the id for older receivers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

import httpx

from linewatch.alerts.deliveries import alert_links
from linewatch.alerts.deliveries.http import post
from linewatch.alerts.rules import AlertEvent

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300


def secret_bytes(secret: str) -> bytes:
    """The HMAC key: base64-decoded after ``whsec_``, else the string's UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):] + "==")
        except binascii.Error as exc:
            raise ValueError("webhook secret: whsec_ must be followed by base64") from exc
    return secret.encode()


def receiver_secret(secret: str) -> str:
    """The ``whsec_`` form of ``secret`` that receivers give to a Standard Webhooks library."""
    return SECRET_PREFIX + base64.b64encode(secret_bytes(secret)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value of one message."""
    digest = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, now_s: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent now."""
    timestamp = int(time.time()) if now_s is None else now_s
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body)}


def verify(secret: str, body: bytes, headers: Mapping[str, str], now_s: float | None = None) -> bool:
    """True when the headers sign ``body`` with ``secret`` and the timestamp is within 5 minutes."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures and stamp.isdigit()):
        return False
    if abs((time.time() if now_s is None else now_s) - int(stamp)) > TOLERANCE_S:
        return False
    expected = sign(secret, msg_id, int(stamp), body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split(" "))


def body(event: AlertEvent, public_base_url: str) -> bytes:
    """The JSON body of one transition (keys sorted, compact)."""
    document = {"event_id": event.event_id, "kind": event.kind, "alert": event.alert.model_dump(mode="json"),
                "links": alert_links(public_base_url, event.alert)}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class WebhookChannel:
    """POSTs signed alert transitions to one URL (which may hold credentials: never printed)."""

    name = "webhook"
    kinds: tuple[str, ...] = ("firing", "resolved", "silent", "suspect")

    def __init__(self, url: str, secret: str, *, public_base_url: str, timeout_s: float = 5.0) -> None:
        secret_bytes(secret)  # fail at start-up, not at the first alert
        self._url, self._secret, self.public_base_url = url, secret, public_base_url
        self.client = httpx.Client(timeout=timeout_s)

    def __repr__(self) -> str:
        return "WebhookChannel(url=***)"

    def send(self, event: AlertEvent) -> None:
        """POST one signed transition."""
        content = body(event, self.public_base_url)
        headers = {"Content-Type": "application/json", "X-Linewatch-Event": event.kind,
                   "X-Linewatch-Event-Id": event.event_id, **signed_headers(self._secret, event.event_id, content)}
        post(self.client, self._url, content=content, headers=headers)
