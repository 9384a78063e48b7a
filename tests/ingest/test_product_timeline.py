"""The product a frame carries: the PLC's changeovers by capture time, late announcements counted, bad input refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from linewatch.ingest.product_sources import ProductSourceError, check_product_source, parse_payload
from linewatch.ingest.product_timeline import KEEP_CHANGES, ProductTimeline
from linewatch.ingest.settings import CameraSettings

pytestmark = pytest.mark.unit


def test_the_product_in_force_is_the_last_change_at_or_before_the_capture_time() -> None:
    timeline = ProductTimeline(fallback="hinge")
    assert timeline.product_at(100) == "hinge"  # before the PLC said anything: LINEWATCH_PRODUCT
    timeline.change("gear", 200)
    timeline.change("bracket", 100)  # heard out of order: placed by its time
    assert [timeline.product_at(t) for t in (99, 100, 199, 200, 10**19)] == ["hinge", "bracket", "bracket", "gear",
                                                                             "gear"]


def test_a_change_announced_after_frames_it_covers_were_sent_counts_them() -> None:
    timeline = ProductTimeline()
    timeline.change("bracket", 0)
    assert [timeline.stamp(t) for t in (10, 20, 30)] == ["bracket"] * 3
    timeline.change("gear", 15)  # the PLC's time is earlier than the moment we heard of it
    assert timeline.late_stamped == 2  # frames captured at 20 and 30 went out as brackets
    assert timeline.stamp(20) == "gear"  # a frame captured then and sent now is stamped right


def test_repeats_are_not_changeovers_and_bad_ids_are_refused() -> None:
    timeline = ProductTimeline(fallback="hinge")
    assert timeline.change("gear", 10) is not None
    assert timeline.change("gear", 50) is None  # a retained message again after a reconnect
    assert timeline.change("bad product/../x", 60) is None
    assert timeline.rejected == 1 and timeline.product_at(70) == "gear" and len(timeline.changes) == 1


def test_memory_is_bounded_and_old_frames_get_the_oldest_product_kept() -> None:
    timeline = ProductTimeline(fallback="hinge")
    for i in range(KEEP_CHANGES + 10):
        timeline.change(f"p{i}", 100 + i)
    assert len(timeline.changes) == KEEP_CHANGES
    assert timeline.product_at(0) == "p10"


@pytest.mark.parametrize(("payload", "expected"), [
    (b"gear", ("gear", None)),
    (b" gear\n", ("gear", None)),
    (b'{"product": "gear", "since_ns": 1733}', ("gear", 1733)),
    (b'{"product": "gear"}', ("gear", None)),
])
def test_mqtt_payloads(payload: bytes, expected: tuple[str, int | None]) -> None:
    assert parse_payload(payload) == expected


@pytest.mark.parametrize("payload", [b'{"since_ns": 1}', b'{"product": 5}', b'{"product": "g", "since_ns": "x"}',
                                     b"{not json"])
def test_bad_mqtt_payloads_are_refused_with_the_reason(payload: bytes) -> None:
    with pytest.raises(ProductSourceError, match="product"):
        parse_payload(payload)


@pytest.mark.parametrize("source", ["mqtt://plc.local/line-1/product", "mqtt://u:p@10.0.0.5:8883/a/b",
                                    "opc.tcp://plc:4840#ns=2;s=Line1.Product", "opc.tcp://plc:4840/x#i=2258"])
def test_product_sources_that_can_be_followed(source: str) -> None:
    assert check_product_source(source) == source
    assert CameraSettings(product_source=source).product_source == source


@pytest.mark.parametrize("source", ["mqtt://plc/line/+", "mqtt://plc", "opc.tcp://plc:4840", "http://plc/x", "plc"])
def test_product_sources_that_cannot_be_followed_are_setting_errors(source: str) -> None:
    with pytest.raises(ValidationError, match="product source"):
        CameraSettings(product_source=source)


def test_opc_ua_times_convert_to_exact_nanoseconds() -> None:
    from datetime import UTC, datetime

    from linewatch.ingest.product_sources import _datetime_ns

    stamp = datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=UTC)
    assert _datetime_ns(stamp) == 1796637600_123456000
    assert _datetime_ns(stamp.replace(tzinfo=None)) == 1796637600_123456000  # asyncua's naive UTC times
