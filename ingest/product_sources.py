"""Followers of the product a line makes, as its PLC publishes it: an MQTT topic or an OPC UA node.

``LINEWATCH_PRODUCT_SOURCE`` (``--product-source``) names one:

- ``mqtt://[user:password@]host[:port]/TOPIC``: the PLC (or its gateway) publishes the product on TOPIC as
  a retained message, so a camera that (re)connects hears the product in force at once. The payload is the
  product id, or JSON ``{"product": "gear", "since_ns": 1733...}`` when the PLC stamps the changeover time.
- ``opc.tcp://host:port[/path]#NODE_ID``: a string variable on the PLC's OPC UA server, followed by a
  subscription; a change's time is the value's SourceTimestamp (the PLC's clock), else the server's.

Each follower keeps reconnecting with backoff while the camera runs; the product in force stays the last one
heard. Both libraries come with the ``plant`` extra and are imported only when a source is configured.
Changeover times from the PLC's clock are compared with the camera's capture times: keep the clocks in sync
(NTP/PTP), as for the capture times themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from linewatch.ingest.product_timeline import ProductTimeline

log = logging.getLogger(__name__)

RETRY_MIN_S, RETRY_MAX_S = 0.5, 15.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ProductSourceError(ValueError):
    """A product source string that cannot be followed."""


class ProductFollower(Protocol):
    description: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def parse_payload(payload: bytes) -> tuple[str, int | None]:
    """(product, since_ns or None) of an MQTT message: a bare product id or a JSON object."""
    text = payload.decode("utf-8", errors="replace").strip()
    if not text.startswith("{"):
        return text, None
    try:
        data = json.loads(text)
        product, since = data["product"], data.get("since_ns")
    except (ValueError, KeyError, TypeError) as exc:
        raise ProductSourceError(f"product message {text[:80]!r} is not JSON with a 'product' key") from exc
    if not isinstance(product, str) or not (since is None or isinstance(since, int)):
        raise ProductSourceError(f"product message {text[:80]!r}: 'product' must be a string, 'since_ns' an integer")
    return product, since


class MqttProductFollower:
    """Subscribes to one topic; paho reconnects by itself and the broker resends the retained product."""

    def __init__(self, source: str, timeline: ProductTimeline, client_id: str) -> None:
        parts = urlsplit(source)
        self.topic = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not self.topic or any(c in self.topic for c in "+#"):
            raise ProductSourceError(f"product source {source!r}: expected mqtt://host[:port]/TOPIC, no wildcards")
        self.host, self.port = parts.hostname, parts.port or 1883
        self.username, self.password = parts.username, parts.password
        self.description = f"mqtt://{self.host}:{self.port}/{self.topic}"
        self.timeline = timeline
        self.client_id = client_id
        self._client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as mqtt  # the plant extra

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        if self.username:
            client.username_pw_set(unquote(self.username), unquote(self.password or ""))
        client.reconnect_delay_set(1, int(RETRY_MAX_S))
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any = None) -> None:
        if reason.is_failure:
            log.warning("product source %s: connect refused (%s); retrying", self.description, reason)
            return
        client.subscribe(self.topic, qos=1)
        log.info("product source %s: following", self.description)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            product, since_ns = parse_payload(message.payload)
        except ProductSourceError as exc:
            self.timeline.rejected += 1
            log.error("product source %s: %s; keeping the product in force", self.description, exc)
            return
        if since_ns is None and message.retain and not self.timeline.changes:
            since_ns = 0  # the stored state when we subscribed: in force since before anything we captured
        self.timeline.change(product, since_ns)


class OpcUaProductFollower:
    """A subscription to one node on an asyncio loop in its own thread; reconnects with backoff."""

    def __init__(self, source: str, timeline: ProductTimeline) -> None:
        endpoint, _, node = source.partition("#")
        if not node or not urlsplit(endpoint).hostname:
            raise ProductSourceError(f"product source {source!r}: expected opc.tcp://host:port#NODE_ID "
                                     "(e.g. #ns=2;s=Line1.Product)")
        self.endpoint, self.node_id = endpoint, unquote(node)
        self.description = f"{endpoint} node {self.node_id}"
        self.timeline = timeline
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._follow()), name="product-opcua",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    async def _follow(self) -> None:
        delay = RETRY_MIN_S
        while not self._stop.is_set():
            try:
                await self._subscribe_until_lost()
                delay = RETRY_MIN_S
            except Exception as exc:  # any failure of the link: log, back off, reconnect
                log.warning("product source %s: %s; retrying in %.1fs", self.description, exc or type(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _subscribe_until_lost(self) -> None:
        from asyncua import Client  # the plant extra

        async with Client(self.endpoint, timeout=5) as client:
            handler = _DataChanges(self.timeline, self.description)
            subscription = await client.create_subscription(100, handler)
            await subscription.subscribe_data_change(client.get_node(self.node_id))
            log.info("product source %s: following", self.description)
            while not self._stop.is_set():
                await asyncio.sleep(0.2)
                await client.check_connection()  # raises once the server is gone


class _DataChanges:
    """asyncua's subscription handler: each new value of the node is a changeover."""

    def __init__(self, timeline: ProductTimeline, description: str) -> None:
        self.timeline, self.description = timeline, description

    def datachange_notification(self, _node: Any, value: Any, data: Any) -> None:
        stamp = data.monitored_item.Value.SourceTimestamp or data.monitored_item.Value.ServerTimestamp
        since_ns = _datetime_ns(stamp) if stamp is not None else None
        if not isinstance(value, str):
            self.timeline.rejected += 1
            log.error("product source %s: value %r is not a string; keeping the product in force",
                      self.description, value)
            return
        self.timeline.change(value, since_ns)


def check_product_source(source: str) -> str:
    """``source`` unchanged when a follower can be built from it, else :class:`ProductSourceError`."""
    product_follower(source, ProductTimeline(), client_id="check")
    return source


def _datetime_ns(stamp: datetime) -> int:
    """ns since the epoch of an OPC UA time, exactly (a float of seconds loses the last few hundred ns)."""
    moment = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


def product_follower(source: str, timeline: ProductTimeline, client_id: str) -> ProductFollower:
    """The follower for a ``--product-source`` string; :class:`ProductSourceError` when it names none."""
    scheme = urlsplit(source).scheme
    if scheme == "mqtt":
        return MqttProductFollower(source, timeline, client_id)
    if scheme == "opc.tcp":
        return OpcUaProductFollower(source, timeline)
    raise ProductSourceError(f"product source {source!r}: expected mqtt://host/TOPIC or opc.tcp://host:port#NODE_ID")


def wait_for_product(timeline: ProductTimeline, follower: ProductFollower, timeout_s: float) -> None:
    """Block until the plant has announced the product, up to ``timeout_s``; then say what frames will carry."""
    started = time.monotonic()
    if timeline.wait_for_first(timeout_s):
        log.info("product source %s: product %s after %.1fs", follower.description,
                 timeline.product_at(time.time_ns()), time.monotonic() - started)
    else:
        log.warning("product source %s: nothing heard in %.0fs; frames carry %s until it speaks",
                    follower.description, timeout_s, timeline.fallback or "no product")
