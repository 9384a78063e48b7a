"""Multiply-adds of each offline teacher, truncated at its default taps, at one input size.

Counted over the convolutions with forward hooks (output elements x kernel area x input channels per
group); batch norms and activations are left out. One backbone: the student costs the same again.

    .venv/bin/python benchmarks/teacher_macs.py --size 192
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import common
from linewatch.detector.model.stfpm.backbones import get_spec


def conv_macs(net: nn.Module, size: int) -> int:
    """Multiply-adds of ``net``'s convolutions on one (3, size, size) input."""
    total = 0

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        total += output.numel() * kh * kw * (module.in_channels // module.groups)

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args()
    common.print_header()
    base = None
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        spec = get_spec(name)
        macs = conv_macs(spec.build(spec.default_taps), args.size)
        base = base or macs
        print(f"{name} taps {spec.default_taps} @{args.size}: {macs / 1e6:.1f} M multiply-adds ({macs / base:.2f}x)")


if __name__ == "__main__":
    main()
