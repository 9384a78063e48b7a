"""Device selection: auto picks CUDA only when present; an absent CUDA is a clear error."""

from __future__ import annotations

import pytest
import torch

from linewatch.detector.model.device import DeviceError, select_device


def test_auto_on_cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device(None) == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")


def test_auto_prefers_cuda_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    # only the selection logic: nothing is allocated on the (absent) GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="only 1 GPU"):
        select_device("cuda:3")


def test_cuda_requested_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(DeviceError, match=r"unknown device|unsupported"):
        select_device("tpu-ish")
