"""The model's fixed vocabularies: backends, precisions, backbones and training recipes.

One place for each list of names, so parsers (``choices``), settings (pydantic validates the enum) and
loaders agree. Imports nothing heavy: ``linewatch --help`` and the settings must not load torch.
The members are ``str`` (:class:`enum.StrEnum`), so ``settings.backend == "torch"`` still holds.
"""

from __future__ import annotations

from enum import StrEnum


class Vocabulary(StrEnum):
    """A closed set of names; :meth:`values` is what a parser's ``choices`` lists."""

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Backend(Vocabulary):
    """Model runtimes (detector/model/backends); ``auto`` picks the fastest measured on this machine."""

    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Precision(Vocabulary):
    """Numeric precision of a model run; ``int8`` comes from an ``export --int8`` folder."""

    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"


class Backbone(Vocabulary):
    """Teacher/student networks (the specs are in detector/model/stfpm/backbones.py, which needs torch)."""

    EFFICIENTNET_LITE0 = "efficientnet_lite0"
    EFFICIENTNET_LITE1 = "efficientnet_lite1"
    EFFICIENTNET_LITE2 = "efficientnet_lite2"
    RESNET18 = "resnet18"
    WIDE_RESNET50_2 = "wide_resnet50_2"


class RecipeName(Vocabulary):
    """What ``linewatch train --recipe`` accepts (the recipes are in detector/model/training/recipes.py)."""

    AUTO = "auto"
    FINE = "fine"
    COARSE = "coarse"
    TILED = "tiled"
