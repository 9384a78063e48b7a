"""OPC UA sinks: write each verdict to configured nodes of a PLC's server, and serve verdicts ourselves.

PLC writes: all of one verdict's fields go in one Write request, in the order the fields are
configured, so a PLC that triggers on one node (e.g. ``sequence``) should list it last. Values are
converted to each node's own data type (read once per node), and written without timestamps
because several PLC servers refuse client-supplied timestamps.

Our server: one object per camera under ``Objects/Linewatch``, with read-only variables whose
node ids are ``ns=<namespace of urn:linewatch:verdicts>;s=<camera>.<Field>`` (e.g. ``cam-1.Reject``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, Node, Server, ua

from linewatch.plant.aio import LoopThread
from linewatch.plant.mqtt import SinkError
from linewatch.plant.settings import OpcUaSettings
from linewatch.plant.verdict import REJECT, Verdict

log = logging.getLogger(__name__)

# field -> (browse name on our server, variant type there)
SERVED_FIELDS: dict[str, tuple[str, ua.VariantType]] = {
    "verdict": ("Verdict", ua.VariantType.String), "reject": ("Reject", ua.VariantType.Boolean),
    "late": ("Late", ua.VariantType.Boolean), "score": ("Score", ua.VariantType.Double),
    "raw_score": ("RawScore", ua.VariantType.Double), "part_id": ("PartId", ua.VariantType.String),
    "product": ("Product", ua.VariantType.String), "model_version": ("ModelVersion", ua.VariantType.String),
    "latency_ms": ("LatencyMs", ua.VariantType.Double), "capture_time": ("CaptureTime", ua.VariantType.DateTime),
    "line_id": ("Line", ua.VariantType.String), "camera_id": ("Camera", ua.VariantType.String),
    "sequence": ("Sequence", ua.VariantType.Int64),  # last: a client watching Sequence sees a complete set
}
_INTEGER_TYPES = {ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
                  ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64}
_FLOAT_TYPES = {ua.VariantType.Float, ua.VariantType.Double}


def field_value(verdict: Verdict, field: str) -> Any:
    """The plain value of one verdict field as the OPC UA side sees it."""
    if field == "reject":
        return verdict.verdict == REJECT
    if field == "capture_time":
        return datetime.fromtimestamp(verdict.capture_ns / 1e9, UTC)
    return getattr(verdict, field)


def to_variant(value: Any, vtype: ua.VariantType) -> ua.Variant:
    """``value`` converted to a node's data type (e.g. the verdict string to a PLC's Boolean or Int)."""
    if vtype == ua.VariantType.Boolean:
        value = value == REJECT if isinstance(value, str) else bool(value)
    elif vtype in _INTEGER_TYPES:
        value = int(value == REJECT) if isinstance(value, str) and value in ("pass", "reject") else int(value or 0)
    elif vtype in _FLOAT_TYPES:
        value = float(value or 0.0)
    elif vtype == ua.VariantType.String:
        value = "" if value is None else str(value)
    return ua.Variant(value, vtype)


def string_node_id(text: str, namespace: int) -> ua.NodeId:
    """``ns=<namespace>;s=<text>``."""
    return ua.NodeId(ua.String(text), ua.Int16(namespace))


class PlcWriter:
    """Writes verdict fields to the PLC's nodes (configured per camera or by template)."""

    name = "opcua_plc"

    def __init__(self, settings: OpcUaSettings, loop: LoopThread) -> None:
        if settings.plc_endpoint is None:
            raise ValueError("PlcWriter needs opcua.plc_endpoint")
        self.settings, self.loop = settings, loop
        self.client: Client | None = None
        self.types: dict[str, ua.VariantType] = {}

    def send(self, verdict: Verdict) -> None:
        """Write one verdict's fields in one request; raises SinkError (and reconnects next time) on failure."""
        nodes = self.settings.nodes_for(verdict.camera_id, verdict.line_id)
        if not nodes:
            return
        try:
            self.loop.call(self._write(verdict, nodes), self.settings.timeout_s * 2)
        except (OSError, TimeoutError, ua.UaError, ConnectionError) as exc:
            self.loop.call(self._drop(), self.settings.timeout_s)
            raise SinkError(f"OPC UA write to {self.settings.plc_endpoint} failed: {exc!r}") from exc

    def flush(self) -> None:
        """Writes are synchronous; nothing is pending."""

    async def _connect(self) -> Client:
        if self.client is None:
            client = Client(str(self.settings.plc_endpoint), timeout=self.settings.timeout_s)
            if self.settings.plc_username:
                client.set_user(self.settings.plc_username)
                if self.settings.plc_password:
                    client.set_password(self.settings.plc_password.get_secret_value())
            await client.connect()
            self.client = client
            log.info("OPC UA connected to %s", self.settings.plc_endpoint)
        return self.client

    async def _drop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.disconnect()
            except Exception:  # the connection is broken already; nothing left to close cleanly
                log.debug("OPC UA disconnect after a failure raised", exc_info=True)

    async def _write(self, verdict: Verdict, nodes: dict[str, str]) -> None:
        client = await self._connect()
        targets: list[Node] = []
        values: list[ua.DataValue] = []
        for field, node_id in nodes.items():
            node = client.get_node(node_id)
            if node_id not in self.types:
                try:
                    self.types[node_id] = await node.read_data_type_as_variant_type()
                except ua.UaStatusCodeError as exc:
                    raise ua.UaError(f"the PLC has no usable node {node_id} for {field!r}: {exc}") from exc
            targets.append(node)
            values.append(ua.DataValue(to_variant(field_value(verdict, field), self.types[node_id])))
        statuses = await client.write_values(targets, values, raise_on_partial_error=False)
        refused = [f"{node_id}: {status.name}" for node_id, status in zip(nodes.values(), statuses, strict=True)
                   if not status.is_good()]
        if refused:  # name the nodes: a wrong node id or type is a configuration fault the engineer must see
            raise ua.UaError(f"the PLC refused {len(refused)} of {len(nodes)} writes ({'; '.join(refused)})")

    def close(self) -> None:
        """Disconnect from the PLC."""
        self.loop.call(self._drop(), self.settings.timeout_s)


class VerdictServer:
    """Our own OPC UA server: the latest verdict of each camera, read-only for clients."""

    name = "opcua_server"

    def __init__(self, settings: OpcUaSettings, loop: LoopThread) -> None:
        self.settings, self.loop = settings, loop
        self.server = Server()
        self.namespace = 0
        self.root: Node | None = None
        self.cameras: dict[str, dict[str, ua.NodeId]] = {}
        loop.call(self._start(), 30)

    async def _start(self) -> None:
        await self.server.init()
        self.server.set_endpoint(self.settings.server_endpoint)
        self.server.set_server_name("linewatch verdicts")
        self.namespace = await self.server.register_namespace(self.settings.namespace_uri)
        self.root = await self.server.nodes.objects.add_object(
            string_node_id("Linewatch", self.namespace), ua.QualifiedName("Linewatch", self.namespace))
        await self.server.start()
        log.info("OPC UA verdict server on %s (namespace %s)", self.settings.server_endpoint,
                 self.settings.namespace_uri)

    def node_id(self, camera_id: str, field: str) -> ua.NodeId:
        """Node id of one camera's field on this server."""
        return string_node_id(f"{camera_id}.{SERVED_FIELDS[field][0]}", self.namespace)

    async def _camera(self, camera_id: str) -> dict[str, ua.NodeId]:
        if camera_id not in self.cameras:
            assert self.root is not None
            obj = await self.root.add_object(string_node_id(camera_id, self.namespace),
                                             ua.QualifiedName(camera_id, self.namespace))
            ids: dict[str, ua.NodeId] = {}
            for field, (browse, vtype) in SERVED_FIELDS.items():
                initial = to_variant(datetime.fromtimestamp(0, UTC) if vtype == ua.VariantType.DateTime
                                     else None, vtype)
                await obj.add_variable(self.node_id(camera_id, field), ua.QualifiedName(browse, self.namespace),
                                       initial.Value, vtype)
                ids[field] = self.node_id(camera_id, field)
            self.cameras[camera_id] = ids
        return self.cameras[camera_id]

    async def _publish(self, verdict: Verdict) -> None:
        ids = await self._camera(verdict.camera_id)
        now: Any = datetime.now(UTC)  # asyncua's DateTime is a datetime; its stubs say otherwise
        for field, node_id in ids.items():
            variant = to_variant(field_value(verdict, field), SERVED_FIELDS[field][1])
            value = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
            await self.server.write_attribute_value(node_id, value)

    def send(self, verdict: Verdict) -> None:
        """Update the camera's variables (creating them on its first verdict)."""
        try:
            self.loop.call(self._publish(verdict), 10)
        except (TimeoutError, ua.UaError) as exc:
            raise SinkError(f"OPC UA server update failed: {exc!r}") from exc

    def flush(self) -> None:
        """Updates are synchronous; nothing is pending."""

    def close(self) -> None:
        """Stop serving."""
        self.loop.call(self.server.stop(), 10)
