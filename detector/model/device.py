"""Choice of the torch device: CUDA when present, else CPU, with clear errors."""

from __future__ import annotations

import torch

from linewatch.errors import BackendError


class DeviceError(BackendError, ValueError):
    """The requested device is not available here."""


def select_device(requested: str | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda if available else cpu; ``"cuda[:N]"`` without CUDA -> :class:`DeviceError`."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {requested!r} requested but CUDA is not available on this machine "
                              "(no GPU or a CPU-only torch build); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {requested!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {requested!r}; use auto, cpu, cuda or cuda:N")
    return device
