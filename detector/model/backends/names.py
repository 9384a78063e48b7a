"""Backend and precision names, importable without torch (the CLI builds its parsers from them)."""

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
