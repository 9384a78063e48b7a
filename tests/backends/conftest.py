"""Fixtures of the backend tests: two torch threads, one export cache per session, an INT8 export of
the session's ``tiny_model`` calibrated on the synthetic good parts it was trained on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.synthetic_parts import synthetic_good_folder


@pytest.fixture(scope="session", autouse=True)
def _backend_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Two threads like the model tests; exported graphs and the auto table in a session folder, not ~/.cache."""
    torch.set_num_threads(2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LINEWATCH_CACHE_DIR", str(tmp_path_factory.mktemp("backend-cache")))
        yield


@pytest.fixture(scope="session")
def int8_export(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``linewatch export --format openvino --int8`` of the tiny model (NNCF on its good training parts)."""
    from linewatch.detector.model.export import export_openvino

    root = tmp_path_factory.mktemp("int8")
    return export_openvino(tiny_model, root / "ov-int8", int8=True,
                           calibration_data=synthetic_good_folder(root / "good"))
