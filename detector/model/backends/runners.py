"""Graph runners per runtime: ONNX Runtime and OpenVINO sessions behind one call signature."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.common.signal_stack import enlarge_signal_stack
from linewatch.detector.model.backends.errors import BackendError
from linewatch.detector.model.backends.graph import GraphRunner


def ort_runner(onnx_path: Path, threads: int, device: str) -> GraphRunner:
    """An ONNX Runtime session of the exported graph (CPU, or CUDA where its provider is installed)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError("the onnxruntime backend needs the onnxruntime package") from exc
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError("onnxruntime here has no CUDA provider; use --backend torch on CUDA")
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # no busy-waiting between batches (docs/decisions/0004-omp-wait-policy-passive.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    _require_masks_input([i.name for i in session.get_inputs()], onnx_path)
    lock = threading.Lock()

    def run(pixels: np.ndarray, thresholds: np.ndarray, masks: np.ndarray) -> list[np.ndarray]:
        with lock:
            return list(session.run(None, {"pixels": pixels, "thresholds": thresholds, "masks": masks}))

    return run


def _require_masks_input(names: list[str], path: Path) -> None:
    """Refuse a graph exported before region masks were a graph input (it would ignore every region)."""
    if "masks" not in names:
        raise BackendError(f"{path} has no 'masks' input (exported by an older linewatch, inputs {names}); "
                           "export it again: linewatch export --format openvino ...")


def openvino_capabilities() -> set[str]:
    """The CPU plugin's optimisation capabilities (FP32, BF16, INT8, ...)."""
    import openvino as ov

    return {str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")}


def openvino_runner(model_path: Path, threads: int, device: str, precision: str) -> GraphRunner:
    """A compiled OpenVINO model (an ONNX graph or IR) on the CPU at ``precision`` (fp32, bf16, int8)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendError("the openvino backend needs the openvino package") from exc
    if not device.startswith("cpu"):
        raise BackendError(f"the openvino backend runs on the CPU here, not {device}")
    if precision == "bf16" and "BF16" not in openvino_capabilities():
        raise BackendError("this CPU has no native bf16 (OpenVINO CPU capabilities: "
                           f"{', '.join(sorted(openvino_capabilities()))}); use fp32 or int8")
    core = ov.Core()
    # fp32 and int8 keep f32 for what is not quantized; OpenVINO would pick bf16 by itself on CPUs with
    # AMX/AVX-512 BF16, and then the fp32 backend would not be fp32
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
    # the CPU plugin may have set this thread a ~20 KiB alternate signal stack, too small for AMX state
    enlarge_signal_stack()
    _require_masks_input([name for port in compiled.inputs for name in port.get_names()], model_path)
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def run(pixels: np.ndarray, thresholds: np.ndarray, masks: np.ndarray) -> list[np.ndarray]:
        with lock:
            results = request.infer({"pixels": pixels, "thresholds": thresholds, "masks": masks})
            # copies: the request's output buffers are overwritten by its next call
            return [np.array(results[output]) for output in compiled.outputs]

    return run
