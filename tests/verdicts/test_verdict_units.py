"""Verdict decisions, ordering, OPC UA value conversion and settings (no services)."""

from __future__ import annotations

import pytest
from asyncua import ua
from verdict_helpers import result

from linewatch.plant.mqtt import verdict_topic
from linewatch.plant.opcua import field_value, to_variant
from linewatch.plant.settings import DeadlineSettings, MqttSettings, OpcUaSettings, VerdictsSettings
from linewatch.plant.verdict import OrderGuard, ResultError, decide, parse_result

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def verdict_at(score: float, latency_ms: float, policy: str = "reject", extra: dict[str, str] | None = None):
    parsed, body = parse_result(result("cam-1", 7, score, capture_ns=T0, extra=extra))
    return decide(parsed, body, now_ns=T0 + int(latency_ms * MS), deadline_ms=200.0, late_policy=policy)  # type: ignore[arg-type]


def test_on_time_verdict_follows_the_model() -> None:
    good, bad = verdict_at(0.2, 150), verdict_at(0.8, 150)
    assert (good.verdict, good.late, bad.verdict, bad.late) == ("pass", False, "reject", False)
    assert good.latency_ms == 150 and good.deadline_ms == 200 and good.product is None and good.part_id is None


@pytest.mark.parametrize(("policy", "expected"), [("reject", "reject"), ("pass", "pass"), ("as_scored", "pass")])
def test_late_verdict_gets_the_late_policy(policy: str, expected: str) -> None:
    late = verdict_at(0.2, 201, policy)
    assert late.late and late.verdict == expected and late.scored_verdict == "pass"


def test_product_and_part_id_pass_through_when_present() -> None:
    verdict = verdict_at(0.2, 1, extra={"product": "widget", "part_id": "P-1"})
    assert (verdict.product, verdict.part_id) == ("widget", "P-1")


@pytest.mark.parametrize("raw", [b"", b"[]", b"{\"camera_id\": 1}", b"\xff", b"{\"schema_version\": 99}"])
def test_unreadable_results_are_refused(raw: bytes) -> None:
    with pytest.raises(ResultError):
        parse_result(raw)


def test_order_guard_refuses_redeliveries() -> None:
    guard = OrderGuard()
    assert guard.is_new("a", 0)
    guard.mark("a", 5)
    assert not guard.is_new("a", 5) and not guard.is_new("a", 2) and guard.is_new("a", 6) and guard.is_new("b", 0)


def test_values_follow_the_plc_node_types() -> None:
    rejected = verdict_at(0.9, 1)
    assert to_variant(field_value(rejected, "verdict"), ua.VariantType.Boolean).Value is True
    assert to_variant(field_value(rejected, "verdict"), ua.VariantType.Int16).Value == 1
    assert to_variant(field_value(rejected, "sequence"), ua.VariantType.UInt32).Value == 7
    assert to_variant(field_value(rejected, "product"), ua.VariantType.String).Value == ""
    assert to_variant(field_value(rejected, "score"), ua.VariantType.Float).Value == pytest.approx(0.9)
    assert field_value(rejected, "capture_time").timestamp() == pytest.approx(T0 / 1e9)


def test_node_template_and_camera_overrides() -> None:
    settings = OpcUaSettings(plc_node_template={"reject": "ns=3;s={line}.{camera}.Reject"},
                             plc_nodes={"cam-2": {"reject": "ns=3;i=42"}})
    assert settings.nodes_for("cam-1", "L1") == {"reject": "ns=3;s=L1.cam-1.Reject"}
    assert settings.nodes_for("cam-2", "L1") == {"reject": "ns=3;i=42"}
    with pytest.raises(ValueError, match="unknown verdict fields"):
        OpcUaSettings(plc_node_template={"colour": "ns=1;i=1"}).nodes_for("c", "l")


def test_deadlines_per_camera_and_safe_topics() -> None:
    deadlines = DeadlineSettings(default_ms=500, cameras={"fast": 120})
    assert (deadlines.for_camera("fast"), deadlines.for_camera("other")) == (120, 500)
    assert verdict_topic("lw", "line/1", "cam+#") == "lw/line_1/cam__"


def test_command_line_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from linewatch.plant import cli

    monkeypatch.setenv("LINEWATCH_DEADLINES__CAMERAS", '{"cam-9": 90}')
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["verdicts", "--mqtt-port", "1999", "--deadline-ms", "250", "--late-policy", "pass",
                              "--serve-opcua", "opc.tcp://127.0.0.1:4999/x/", "--plc-endpoint", "opc.tcp://plc:4840"])
    settings = cli.settings_from_args(args)
    assert (settings.mqtt.port, settings.deadlines.default_ms, settings.deadlines.late_policy) == (1999, 250, "pass")
    assert settings.deadlines.for_camera("cam-9") == 90
    assert settings.opcua.serve and settings.opcua.server_endpoint == "opc.tcp://127.0.0.1:4999/x/"
    assert settings.opcua.plc_endpoint == "opc.tcp://plc:4840"


def test_mqtt_qos_comes_from_the_environment_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    # environment values are strings: "2" must mean QoS 2, and an impossible QoS must be refused
    monkeypatch.setenv("LINEWATCH_MQTT__QOS", "2")
    assert VerdictsSettings().mqtt.qos == 2
    with pytest.raises(ValueError, match="less than or equal to 2"):
        MqttSettings.model_validate({"qos": "3"})
