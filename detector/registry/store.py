"""Content-addressed model-file store: a folder where each checkpoint is kept under its sha256.

``<root>/<first two hex digits>/<sha256>.safetensors``. A file is written once (temp + rename) and
never changed, so two registrations of the same bytes share one copy, and a detector that reads a
path from the registry always gets the bytes the version names. An S3-compatible bucket can hold the
same layout (see README.md); only the folder is implemented.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from linewatch.detector.model.checkpoint import file_sha256
from linewatch.detector.registry.errors import RegistryError


class FolderStore:
    """Model files in a local (or mounted shared) folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        """Where the file with this digest lives (whether or not it is there yet)."""
        return self.root / sha256[:2] / f"{sha256}.safetensors"

    def put(self, source: Path, sha256: str) -> Path:
        """Copy ``source`` into the store (no-op when the digest is already there); returns its path."""
        target = self.path_for(sha256)
        if target.is_file() and file_sha256(target) == sha256:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        if file_sha256(tmp) != sha256:  # the source changed while we copied it
            tmp.unlink(missing_ok=True)
            raise RegistryError(f"{source} changed while it was copied into the model store; register it again")
        tmp.replace(target)
        return target

    def get(self, sha256: str) -> Path:
        """Path of a stored file, verified against its digest."""
        target = self.path_for(sha256)
        if not target.is_file():
            raise RegistryError(f"model file {sha256[:12]} is missing from the store {self.root}")
        if file_sha256(target) != sha256:
            raise RegistryError(f"model file {target} does not match its digest (damaged); register it again")
        return target
