"""``load_model(path, backend, device)``: one checkpoint (or export folder), any runtime, the same results.

``auto`` picks the fastest backend measured on this machine for this model, device and thread count.
The measurement (``linewatch.detector.evaluation.bench.measure`` at the detector's default micro-batch, briefly,
in a worker thread) runs at the first load and is kept in a table, ``backend_table.json`` in the cache folder,
keyed by model version, device, threads and CPU model; later loads read the table. Why measure rather than rank
by rule: docs/decisions/0005-backend-auto.md. On CUDA, ``auto`` is torch (OpenVINO runs on the CPU here; ONNX
Runtime's CUDA provider is not installed).

Precision: with no precision asked for, ``auto`` also times OpenVINO bf16 where the CPU runs bf16 natively and
the model carries thresholds calibrated at bf16 (``linewatch train`` adds them on such a CPU; ``linewatch
calibrate --precision bf16`` on another). A run at bf16 judges frames by its bf16 thresholds, never by fp32 ones.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch

from linewatch.detector.evaluation.bench import measure
from linewatch.detector.model.backends.errors import BackendError
from linewatch.detector.model.backends.graph import GraphModel
from linewatch.detector.model.backends.names import BACKENDS, PRECISIONS
from linewatch.detector.model.backends.runners import openvino_capabilities, openvino_runner, ort_runner
from linewatch.detector.model.checkpoint import CheckpointError
from linewatch.detector.model.device import select_device
from linewatch.detector.model.export import EXPORT_INFO, GRAPH_VERSION, ExportError, export_graph
from linewatch.detector.model.inference import AnomalyModel, InferenceModel, build_model
from linewatch.detector.model.metadata import MetadataError, ModelMetadata

log = logging.getLogger(__name__)

AUTO_BATCH = 8  # the detector's typical micro-batch under load
AUTO_SECONDS = 0.6  # per backend and round; two interleaved rounds, the better of each backend counts
AUTO_ROUNDS = 2


def cache_dir() -> Path:
    """Where exported graphs and the measured backend table live (``LINEWATCH_CACHE_DIR`` overrides)."""
    override = os.environ.get("LINEWATCH_CACHE_DIR")
    base = Path(override) if override else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "linewatch"
    return base


def cpuinfo_field(name: str) -> str | None:
    """The first ``name`` line of /proc/cpuinfo ("model name", "vendor_id"), or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (the table's key: a measurement holds for one CPU kind)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def available_backends(device: torch.device) -> list[str]:
    """Backends that can run on ``device`` in this environment, torch first."""
    found = ["torch"]
    if device.type == "cpu":
        found += [name for name in ("onnxruntime", "openvino") if _importable(name)]
    return found


def load_model(path: str | Path, backend: str = "auto", device: str | None = "auto", *, precision: str | None = None,
               threads: int | None = None) -> InferenceModel:
    """A checkpoint (``.safetensors``) or an export folder on ``backend``; any problem raises a ValueError subclass.

    ``precision``: None is fp32, or under ``auto`` whichever calibrated precision runs fastest here (above).
    ``threads``: intra-op threads of ONNX Runtime / OpenVINO (default: torch's current count, which the
    detector sets from its ``torch_threads`` setting); torch's own are set per thread by the caller.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision is not None and precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    path = Path(path)
    n_threads = threads or torch.get_num_threads()
    if path.is_dir():
        return _load_export(path, backend, device, precision or "fp32", n_threads)
    resolved = select_device(device)
    if precision == "int8":
        raise BackendError("INT8 runs from an export folder: linewatch export --model M --format openvino --int8 "
                           "--calibration-data DIR --out DIR, then load that folder")
    if backend == "auto":
        return _auto(path, resolved, precision, n_threads)
    return _load_checkpoint(path, backend, resolved, precision or "fp32", n_threads)


def load_to_calibrate(path: str | Path, precision: str, threads: int | None = None) -> InferenceModel:
    """A checkpoint on OpenVINO at ``precision``, to measure its thresholds there (``linewatch train`` on a CPU with
    native bf16, ``linewatch calibrate --precision``): as :func:`load_model`, without warning that the thresholds
    at ``precision`` are missing, since they are what is being measured."""
    return _load_checkpoint(Path(path), "openvino", select_device("cpu"), precision, threads or torch.get_num_threads(),
                            warn_uncalibrated=False)


def _load_checkpoint(path: Path, backend: str, device: torch.device, precision: str, threads: int, *,
                     warn_uncalibrated: bool = True) -> InferenceModel:
    if backend == "torch":
        if precision != "fp32":
            raise BackendError(f"the torch backend runs fp32 here; {precision} is an openvino precision")
        return AnomalyModel.load(path, device=str(device))
    if backend == "onnxruntime" and precision != "fp32":
        raise BackendError(f"the onnxruntime backend runs fp32; {precision} is an openvino precision")
    model = _calibrated_at(cast(GraphModel, GraphModel.load(path, device=str(device))), precision,  # load builds cls
                           warn_uncalibrated)
    graph = _cached_graph(model, "" if precision == "fp32" else f"-{precision}")
    if backend == "onnxruntime":
        return model.attach(ort_runner(graph, threads, str(device)), "onnxruntime", precision)
    return model.attach(openvino_runner(graph, threads, str(device), precision), "openvino", precision)


def _calibrated_at(model: GraphModel, precision: str, warn_uncalibrated: bool = True) -> GraphModel:
    """``model`` judging by the thresholds measured at ``precision``, where the checkpoint has them."""
    calibration = model.metadata.calibration_at(precision)
    if calibration is None:
        if warn_uncalibrated:
            log.warning("model %s has no thresholds calibrated at %s: it judges by its fp32 ones, which a %s run "
                        "shifts slightly (linewatch calibrate --precision %s GOOD_DIR calibrates it there)",
                        model.model_version, precision, precision, precision)
        return model
    if calibration is model.calibration:
        return model
    return GraphModel(model.model, replace(model.metadata, calibration=calibration), model.model_version,
                      model.device)


def _cached_graph(model: AnomalyModel, tag: str = "") -> Path:
    """The model's exported graph (ONNX), exported once per model version, graph version and torch version.

    ``tag`` names a graph whose calibrated head differs (the normalisation's spread of another precision)."""
    target = cache_dir() / "graphs" / f"{model.model_version}{tag}-g{GRAPH_VERSION}-torch{torch.__version__}.onnx"
    if not target.is_file():
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            export_graph(model, partial)
            partial.replace(target)  # atomic: a concurrent loader sees the whole file or none
        except ExportError as exc:
            raise BackendError(f"cannot export the model for this backend: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
    return target


def _load_export(folder: Path, backend: str, device: str | None, precision: str, threads: int) -> InferenceModel:
    """An export folder from ``linewatch export --format openvino`` (fp32 or int8 IR)."""
    info_path = folder / EXPORT_INFO
    if not info_path.is_file() or not (folder / "model.xml").is_file():
        raise BackendError(f"{folder} is not a linewatch OpenVINO export (no {EXPORT_INFO} / model.xml)")
    if backend not in ("auto", "openvino"):
        raise BackendError(f"{folder} is an OpenVINO export; load it with --backend openvino (or auto)")
    if select_device(device).type != "cpu":
        raise BackendError(f"{folder} is an OpenVINO export; it runs on the CPU (--device cpu)")
    try:
        info = json.loads(info_path.read_text())
        metadata = ModelMetadata.from_dict(info["metadata"])
        exported = str(info["precision"])
        version = str(info["model_version"])
    except (OSError, ValueError, KeyError, MetadataError) as exc:
        raise CheckpointError(f"{info_path}: unreadable export description ({exc})") from exc
    if exported == "int8" and precision not in ("fp32", "int8"):
        raise BackendError(f"{folder} is INT8; it cannot run as {precision}")
    run_as = "int8" if exported == "int8" else precision
    # the network's torch weights are not needed (the graph holds them); its pre-processing is
    model = GraphModel(build_model(metadata), metadata, version, torch.device("cpu"))
    if run_as == "bf16":  # the fp32 graph at bf16: its thresholds are graph inputs, so the bf16 ones apply
        model = _calibrated_at(model, run_as)
    return model.attach(openvino_runner(folder / "model.xml", threads, "cpu", run_as), "openvino", run_as)


def _table_key(model_version: str, device: torch.device, threads: int, precision: str | None = None) -> str:
    return (f"{model_version}|{device.type}|{threads}|{cpu_name()}|torch {torch.__version__}"
            f"|{precision or 'any precision'}")


def _read_table() -> dict[str, Any]:
    try:
        table = json.loads((cache_dir() / "backend_table.json").read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def record_measurement(model_version: str, device: torch.device, threads: int, fps: dict[str, float],
                       precision: str | None = None) -> str:
    """Store frames/s per runtime (``backend`` or ``backend:precision``) for this model/device/threads/CPU and
    asked-for precision; returns the fastest."""
    best = max(fps, key=lambda name: fps[name])
    table = _read_table()
    table[_table_key(model_version, device, threads, precision)] = {
        "backend": best, "frames_per_s": fps, "batch": AUTO_BATCH, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    target = cache_dir() / "backend_table.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(table, indent=1, sort_keys=True))
    partial.replace(target)
    return best


def runtime_label(backend: str, precision: str) -> str:
    """How the table names a runtime: the backend, with ``:precision`` where that is not fp32."""
    return backend if precision == "fp32" else f"{backend}:{precision}"


def _runtimes(device: torch.device, metadata: ModelMetadata, precision: str | None) -> list[tuple[str, str]]:
    """(backend, precision) pairs ``auto`` compares: every available backend at fp32 (or at the precision
    asked for), plus OpenVINO bf16 where nothing was asked for, the CPU has native bf16 and the model has
    bf16 thresholds."""
    backends = available_backends(device)
    if precision is not None and precision != "fp32":
        return [("openvino", precision)] if "openvino" in backends else []
    pairs = [(name, "fp32") for name in backends]
    if (precision is None and "openvino" in backends and metadata.calibration_at("bf16") is not None
            and "BF16" in openvino_capabilities()):
        pairs.append(("openvino", "bf16"))
    return pairs


def _auto(path: Path, device: torch.device, precision: str | None, threads: int) -> InferenceModel:
    """The fastest runtime for this model here: from the table, else measured now (and recorded)."""
    torch_model = AnomalyModel.load(path, device=str(device))
    runtimes = _runtimes(device, torch_model.metadata, precision)
    if not runtimes:
        raise BackendError(f"no backend here runs {precision}: it needs openvino on the CPU")
    if len(runtimes) == 1:
        backend, run_as = runtimes[0]
        return torch_model if backend == "torch" else _load_checkpoint(path, backend, device, run_as, threads)
    by_label = {runtime_label(*pair): pair for pair in runtimes}
    entry = _read_table().get(_table_key(torch_model.model_version, device, threads, precision))
    if isinstance(entry, dict) and entry.get("backend") in by_label:
        backend, run_as = by_label[str(entry["backend"])]
        log.info("runtime %s for model %s (measured %s: %s frames/s)", entry["backend"], torch_model.model_version,
                 entry.get("measured"), entry.get("frames_per_s"))
        return torch_model if backend == "torch" else _load_checkpoint(path, backend, device, run_as, threads)
    models: dict[str, InferenceModel] = {"torch": torch_model}
    for label, (backend, run_as) in by_label.items():
        if backend == "torch":
            continue
        try:
            models[label] = _load_checkpoint(path, backend, device, run_as, threads)
        except BackendError as exc:  # a runtime that cannot take this model is not a candidate
            log.warning("runtime %s skipped: %s", label, exc)
    fps: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(AUTO_ROUNDS):  # interleaved, so a burst of load elsewhere hits every backend alike
        for name, model in models.items():
            fps[name].append(measure(model, AUTO_BATCH, AUTO_SECONDS, threads=threads, min_batches=2).frames_per_s)
    best_fps = {name: max(values) for name, values in fps.items()}
    chosen = record_measurement(torch_model.model_version, device, threads, best_fps, precision)
    log.info("runtime %s for model %s (measured now, frames/s %s; median %s)", chosen, torch_model.model_version,
             best_fps, {n: statistics.median(v) for n, v in fps.items()})
    return models[chosen]
