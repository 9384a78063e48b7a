"""Backend and precision names as tuples, importable without torch (defined in detector/model/vocabulary.py)."""

from linewatch.detector.model.vocabulary import Backend, Precision

BACKENDS = Backend.values()
PRECISIONS = Precision.values()
