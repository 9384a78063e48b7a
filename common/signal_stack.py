"""An alternate signal stack big enough for the CPU's register state, so a signal never kills the process.

Python runs its signal handlers (SIGTERM, SIGINT: common/signals.py) with ``SA_ONSTACK``, on the thread's
alternate signal stack where one is set, and ``faulthandler.register`` (the SIGUSR1 stack dump of
deploy/cli.py) sets one of SIGSTKSZ plus the kernel's minimum frame: about 20 KiB on a CPU with AMX. Once a
thread has used AMX tiles (OpenVINO bf16, torch bf16 training on such a CPU) the kernel saves them in every
signal frame, and on a Xeon with AMX a SIGTERM then ended the process with SIGSEGV on that 20 KiB stack
instead of the graceful stop (tests/test_foundation.py reproduces it after a bf16 run). A stack several
times the kernel's minimum frame (``AT_MINSIGSTKSZ``) leaves the handler room.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

AT_MINSIGSTKSZ = 51  # getauxval key: the kernel's minimum signal frame for this CPU (Linux >= 5.14)
SS_DISABLE = 2
MIN_BYTES = 64 * 1024
_kept: list[ctypes.Array[ctypes.c_char]] = []  # the kernel writes into these: they live as long as the process


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return libc


def current_signal_stack() -> int:
    """Size in bytes of this thread's alternate signal stack (0: none, or not Linux)."""
    libc = _libc()
    if libc is None:
        return 0
    current = _StackT()
    if libc.sigaltstack(None, ctypes.byref(current)) != 0 or current.ss_flags & SS_DISABLE:
        return 0
    return int(current.ss_size)


def needed_signal_stack() -> int:
    """The alternate stack size this CPU needs: four of the kernel's minimum frames, at least 64 KiB."""
    libc = _libc()
    return max(MIN_BYTES, 4 * int(libc.getauxval(AT_MINSIGSTKSZ))) if libc is not None else MIN_BYTES


def install_signal_stack(size: int) -> bool:
    """Give this thread an alternate signal stack of ``size`` bytes (kept for the life of the process)."""
    libc = _libc()
    if libc is None:
        return False
    buffer = ctypes.create_string_buffer(size)
    stack = _StackT(ctypes.addressof(buffer), 0, size)
    if libc.sigaltstack(ctypes.byref(stack), None) != 0:
        log.warning("could not set a %d-byte signal stack (errno %d): a signal may end the process on a CPU "
                    "with AMX", size, ctypes.get_errno())
        return False
    _kept.append(buffer)
    return True


def enlarge_signal_stack() -> int:
    """Give this thread an alternate signal stack of :func:`needed_signal_stack` bytes where it has a smaller
    one; returns the size in use (0 where there is none: handlers then run on the thread's own stack)."""
    size, needed = current_signal_stack(), needed_signal_stack()
    if size == 0 or size >= needed:
        return size
    return needed if install_signal_stack(needed) else size
