"""How every long-running ``linewatch`` command reacts to SIGINT (Ctrl-C) and SIGTERM (``kill``, Docker, Kubernetes).

Two forms, chosen by what the command owns:

- :func:`stop_on_signals`: the first signal sets a :class:`threading.Event` that the command's loop
  watches, so it finishes what it holds (flushes, commits) and returns. A second signal means the
  operator will not wait: the default action ends the process at once. For commands whose state is
  safe to cut (only acknowledged work is committed) and that own no child processes.
- :func:`interrupt_on_signals`: SIGTERM acts like Ctrl-C: the first signal raises
  :class:`KeyboardInterrupt` in the main thread, so ``finally`` blocks run; further signals are
  ignored until the block is left, so that cleanup stops every child process it started (children
  run in their own sessions and never see the terminal's Ctrl-C: dying early would orphan them).

Both restore the previous handlers on exit, and do nothing off the main thread, where Python cannot
install handlers (the caller's event still works for programmatic stops).

The entry point calls :func:`forget_caught_interrupts` before it exits: without it, a process run as
``python -m`` could die by SIGINT in place of the status it chose (see there).

Long-running commands do not call these themselves: common/service_runner.py installs
:func:`stop_on_signals` for each of them, so every service answers signals the same way.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from linewatch.common.signal_stack import enlarge_signal_stack

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], None]


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """Inside, the first SIGINT/SIGTERM sets ``stop`` (a new event when None, yielded); a second one kills."""
    event = stop if stop is not None else threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if event.is_set():
            log.warning("signal %d again: exiting without finishing", signum)
            _die_by(signum)
        log.info("signal %d: finishing and stopping (again to exit at once)", signum)
        event.set()

    with _handling(on_signal):
        yield event


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Inside, the first SIGINT/SIGTERM raises KeyboardInterrupt; later ones are ignored while it unwinds."""
    interrupted = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted:
            log.warning("signal %d again: still stopping what was started", signum)
            return
        interrupted = True
        log.info("signal %d: stopping", signum)
        raise KeyboardInterrupt

    with _handling(on_signal):
        yield


@contextlib.contextmanager
def _handling(handler: Handler) -> Iterator[None]:
    """Install ``handler`` for SIGINT and SIGTERM while inside (main thread only), then put back the old ones."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    enlarge_signal_stack()  # Python's handlers run on the alternate stack: room for AMX state (signal_stack.py)
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():  # None: set outside Python; the default is the best guess
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def _die_by(signum: int) -> None:
    """End the process the way ``signum`` does by default (exit status 128+signum, no cleanup)."""
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def forget_caught_interrupts() -> None:
    """Make the exit status the one the program returns, even after a KeyboardInterrupt it caught.

    CPython (3.8 to 3.13 at least) remembers a KeyboardInterrupt that ended a string ``exec``/``eval``
    in a process-wide flag, even when a caller catches it, and under ``python -m`` it reads that flag
    after the interpreter finalised: the process then kills itself with SIGINT (status -2) in place of
    the exit status it chose. Such an ``exec`` runs whenever a dataclass or namedtuple is built, so a
    SIGTERM that lands while ``linewatch demo`` imports a module (interrupt_on_signals raises
    KeyboardInterrupt there) turned its exit 130 into a SIGINT death. Every string ``exec`` starts by
    clearing the flag, so one harmless ``exec`` at the end forgets what the program already handled.
    """
    exec("None", {})  # a constant string: the exec itself is the point (see above)
