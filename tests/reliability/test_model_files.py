"""Model files: many damaged, tampered and pickle-bearing checkpoints, each refused; no code from a file ever runs.

tests/model/test_checkpoint.py proves each kind once at the library level; this sweeps many
damage points and also goes through ``linewatch detect --model`` (exit 2, one line, no traceback).
"""

from __future__ import annotations

import json
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.faults import ROOT, report, size

from linewatch.detector.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from linewatch.detector.model.inference import AnomalyModel
from linewatch.errors import ModelError

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


class _Payload:
    """Unpickling this creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "executed"))  # type: ignore[return-value]


def _rewrite_header(data: bytes, change: object) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change(header)  # type: ignore[operator]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + length:]


def bad_files(model: Path, tmp: Path, marker: Path, rng: random.Random) -> dict[str, Path]:
    """Name -> path of each bad checkpoint."""
    data = model.read_bytes()
    state, meta = load_checkpoint(model)
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "tensor_sha256")}
    files: dict[str, bytes] = {}
    for cut in sorted(rng.sample(range(1, len(data)), size(10, 100))):
        files[f"truncated_at_{cut}"] = data[:cut]
    for i in range(size(10, 100)):
        flipped = bytearray(data)
        (length,) = struct.unpack("<Q", data[:8])
        flipped[rng.randrange(8 + length, len(data))] ^= 1 << rng.randrange(8)  # a weight bit
        files[f"weight_bit_flip_{i}"] = bytes(flipped)
    files["header_garbage"] = data[:8] + b"\xff" * 64 + data[72:]
    files["metadata_version_99"] = _rewrite_header(data, lambda h: h["__metadata__"].update(linewatch=json.dumps(
        {**json.loads(h["__metadata__"]["linewatch"]), "format_version": 99})))
    files["metadata_threshold_edited"] = _rewrite_header(data, lambda h: h["__metadata__"].update(
        linewatch=json.dumps({**json.loads(h["__metadata__"]["linewatch"]), "calibration": {"image_threshold": 1e9}})))
    files["metadata_removed"] = _rewrite_header(data, lambda h: h.pop("__metadata__"))
    files["pickle_raw"] = pickle.dumps(_Payload(marker))
    files["empty"] = b""
    out = {name: tmp / f"{name}.safetensors" for name in files}
    for name, raw in files.items():
        out[name].write_bytes(raw)
    # Valid safetensors files with a fresh digest, but wrong shapes or metadata for the model.
    name = next(iter(state))
    shapes = dict(state, **{name: torch.zeros(3, 3)})
    save_checkpoint(out.setdefault("wrong_shape", tmp / "wrong_shape.safetensors"), shapes, meta)
    missing = {k: v for k, v in state.items() if k != name}
    save_checkpoint(out.setdefault("missing_tensor", tmp / "missing_tensor.safetensors"), missing, meta)
    save_checkpoint(out.setdefault("unknown_backbone", tmp / "unknown_backbone.safetensors"), state,
                    {**meta, "backbone": "evil"})
    torch.save({"state": _Payload(marker)}, out.setdefault("torch_save_pickle", tmp / "torch_save.safetensors"))
    return out


@pytest.mark.timeout(600)
def test_bad_checkpoints_are_refused_and_never_execute_code(tiny_model: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    files = bad_files(tiny_model, tmp_path, marker, random.Random(11))
    refused, accepted, other = [], [], []
    for name, path in files.items():
        try:
            AnomalyModel.load(path, device="cpu")
        except CheckpointError as exc:
            assert "\n" not in str(exc).strip(), name
            refused.append(name)
        except Exception as exc:  # anything else is a defect: not a clear error
            other.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            accepted.append(name)
    cli = {}
    for name in size(["pickle_raw"], ["pickle_raw", "torch_save_pickle", "wrong_shape",
                                                      "truncated_at_" + next(n for n in files if n.startswith(
                                                          "truncated_at_")).split("_")[-1], "weight_bit_flip_0"]):
        proc = subprocess.run([sys.executable, "-m", "linewatch.deploy.cli", "detect", "--model", str(files[name]),
                               "--device", "cpu", "--metrics-port", "0"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        cli[name] = (proc.returncode, "Traceback" in proc.stderr, proc.stderr.strip().splitlines()[-1:])
    figures = {"files_tried": len(files), "refused": len(refused), "accepted": accepted, "other_errors": other,
               "code_executed": marker.exists(), "cli": {k: {"exit": v[0], "traceback": v[1]} for k, v in cli.items()}}
    report("model_files", figures)
    assert not accepted and not other and not marker.exists()
    assert all(code == ModelError.exit_code and not traceback for code, traceback, _ in cli.values()), cli
