"""Checkpoint files: round trip, and refusal (never a deep traceback, never unpickling) of bad files."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from linewatch.detector.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from linewatch.detector.model.inference import AnomalyModel


def _state() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(12, dtype=torch.float32).view(3, 4), "a.count": torch.tensor(7),
            "b": torch.randn(5, dtype=torch.float16)}


def test_round_trip_keeps_tensors_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _state(), {"backbone": "x", "nested": {"thr": 0.5}})
    state, meta = load_checkpoint(path)
    for name, tensor in _state().items():
        if name != "b":
            assert torch.equal(state[name], tensor)
    assert state["b"].dtype == torch.float16
    assert meta["backbone"] == "x" and meta["nested"] == {"thr": 0.5}
    assert meta["format"] == "linewatch-stfpm"


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _state(), {})
    data = path.read_bytes()
    for cut in (4, 20, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"too short|truncated|not a safetensors"):
            load_checkpoint(path)


def test_flipped_weight_bytes_fail_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _state(), {})
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # inside the last tensor's bytes, header untouched
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)


def test_tampered_metadata_and_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _state(), {})
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = json.loads(header["__metadata__"]["linewatch"])
    meta["format_version"] = 99
    header["__metadata__"]["linewatch"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    (tmp_path / "text.safetensors").write_text("hello, I am not a model at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_edited_threshold_in_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _state(), {"calibration": {"image_threshold": 0.5}})
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = json.loads(header["__metadata__"]["linewatch"])
    meta["calibration"]["image_threshold"] = 99.0  # would silence every alarm
    header["__metadata__"]["linewatch"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    with pytest.raises(CheckpointError, match="metadata such as thresholds"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this would create a marker file: proof that a loader executed the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def test_pickle_payload_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    raw = tmp_path / "pickle.safetensors"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    zipped = tmp_path / "torchsave.safetensors"
    torch.save({"weights": _Payload(marker)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        with pytest.raises(CheckpointError):
            AnomalyModel.load(path, device="cpu")
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tmp_path: Path, tiny_model: Path) -> None:
    state, meta = load_checkpoint(tiny_model)
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "tensor_sha256")}
    dropped = {k: v for k, v in state.items() if not k.startswith("student._blocks.10.")}
    path = tmp_path / "mismatch.safetensors"
    save_checkpoint(path, dropped, meta)
    with pytest.raises(CheckpointError, match="do not match"):
        AnomalyModel.load(path, device="cpu")
    save_checkpoint(path, state, {**meta, "backbone": "vgg99"})
    with pytest.raises(CheckpointError, match="unknown backbone"):
        AnomalyModel.load(path, device="cpu")
