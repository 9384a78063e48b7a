"""The alternate signal stack is made big enough for the CPU's register state (AMX tiles), and only where one
is set: a thread without one runs handlers on its own stack, which has room."""

from __future__ import annotations

import sys
import threading

import pytest

from linewatch.common.signal_stack import (
    current_signal_stack,
    enlarge_signal_stack,
    install_signal_stack,
    needed_signal_stack,
)

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack via glibc: Linux only")]


def test_a_small_signal_stack_is_enlarged_and_none_stays_none() -> None:
    seen: dict[str, int] = {}

    def fresh_thread() -> None:  # a new thread starts without an alternate stack
        seen["without"] = enlarge_signal_stack()
        assert install_signal_stack(8192 + 11952)  # what OpenVINO's CPU plugin set (20144 bytes)
        seen["small"] = current_signal_stack()
        seen["enlarged"] = enlarge_signal_stack()
        seen["after"] = current_signal_stack()

    thread = threading.Thread(target=fresh_thread)
    thread.start()
    thread.join()
    needed = needed_signal_stack()
    assert needed >= 64 * 1024
    assert seen == {"without": 0, "small": 20144, "enlarged": needed, "after": needed}
