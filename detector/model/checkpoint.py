"""Model checkpoints: one safetensors file, weights plus JSON metadata in its header.

Loading never unpickles anything: safetensors is a JSON header plus raw tensor bytes. A digest of the
tensors and one of the metadata (thresholds, taps, normalisation...) are kept in the header, so a
bit-flipped or edited file is refused, and every failure is a :class:`CheckpointError` with a
one-line reason instead of a traceback from deep inside a library. The digests detect damage and
casual edits, not a forger who recomputes them: keep model files on a trusted path.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linewatch.errors import ModelError

if TYPE_CHECKING:  # torch is imported where tensors are touched: reading metadata must work without it
    import torch

FORMAT = "linewatch-stfpm"
FORMAT_VERSION = 2  # 2: metadata digest added
_META_KEY = "linewatch"
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ModelError, ValueError):
    """The file is not a usable linewatch checkpoint; the message says why."""


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def metadata_digest(metadata: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``metadata`` without its own digest field."""
    body = {key: value for key, value in metadata.items() if key != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def rewritable_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` without what ``save_checkpoint`` stamps itself (format, version, digests), to save again."""
    return {k: v for k, v in metadata.items() if k not in ("format", "format_version", "tensor_sha256",
                                                              "metadata_sha256")}


def save_checkpoint(path: str | Path, model_state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write ``model_state`` and JSON ``metadata`` to ``path`` atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    meta = {**metadata, "format": FORMAT, "format_version": FORMAT_VERSION, "tensor_sha256": tensor_digest(state)}
    meta["metadata_sha256"] = metadata_digest(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    tmp.replace(path)


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header ourselves first, so foreign files fail with a clear message."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path} is too short to be a checkpoint ({size} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length <= 0 or length > _MAX_HEADER or 8 + length > size:
                raise CheckpointError(f"{path} is not a safetensors checkpoint (bad header length; truncated or "
                                      "another format such as a pickle/torch.save file)")
            header = json.loads(handle.read(length).decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a safetensors checkpoint (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a malformed header")
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + length + max(ends, default=0) > size:
        raise CheckpointError(f"{path} is truncated ({size} bytes, the header announces more data)")
    return header


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's checked metadata, from its header alone (stdlib only: no torch, no tensors read).

    Boxes without the detector's libraries (camera health) read calibrations this way; the weights'
    digest is checked only by :func:`load_checkpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raw = (_read_header(path).get("__metadata__") or {}).get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not a linewatch checkpoint (no metadata)")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a linewatch STFPM checkpoint")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {metadata.get('format_version')}; "
                              f"this linewatch reads version {FORMAT_VERSION}")
    if metadata.get("metadata_sha256") != metadata_digest(metadata):
        raise CheckpointError(f"{path} failed its integrity check (metadata such as thresholds differ from the "
                              "recorded digest; the file was edited or damaged)")
    return metadata


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a checkpoint; raises :class:`CheckpointError` for anything unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from exc
    if tensor_digest(state) != metadata.get("tensor_sha256"):
        raise CheckpointError(f"{path} failed its integrity check (weights differ from the recorded digest; "
                              "the file was modified or damaged)")
    return state, metadata


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the model version is its first 12 characters)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
