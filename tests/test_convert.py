"""scnet.convert: which layers change, the report, errors, and that a converted model trains."""
import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import scnet
from scnet.layers import SCConv


def _conv_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))


def test_torchvision_resnet50_keeps_conv_params_and_trains() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10)
    before = _conv_params(model)
    report = scnet.convert(model)
    print(report)
    assert _conv_params(model) == before == report.conv_params_before == report.conv_params_after == 23_454_912
    assert len(report.converted) == 16 and not report.skipped
    assert (round(report.macs_before / 1e9, 3), round(report.macs_after / 1e9, 3)) == (4.087, 3.923)  # 10-class head: 2 M MACs less than 1000-class
    assert isinstance(model.layer2[0].conv2, SCConv) and model.layer2[0].conv2.stride == 2
    assert "converted 16 convolution(s)" in str(report) and "23,454,912 -> 23,454,912" in str(report)

    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_timm_basic_blocks_including_width_changes() -> None:
    model = timm.create_model("resnet18")
    report = scnet.convert(model, input_size=None)
    assert len(report.converted) == 16 and report.macs_before is None
    # layer2.0.conv1 maps 64 -> 128 with stride 2: 9 * in * (in + out) / 2 parameters instead of 9 * in * out.
    assert sum(p.numel() for p in model.layer2[0].conv1.parameters() if p.dim() == 4) == 9 * 64 * (64 + 128) // 2
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("build", [torchvision.models.resnext50_32x4d, torchvision.models.wide_resnet50_2])
def test_resnext_and_wide_resnet(build) -> None:
    model = build()
    before = _conv_params(model)
    report = scnet.convert(model, input_size=None)
    assert len(report.converted) == 16 and _conv_params(model) == before
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_predicate_selects_any_conv() -> None:
    model = torchvision.models.vgg11()
    report = scnet.convert(model, predicate=lambda name, conv: conv.in_channels > 3, input_size=(3, 64, 64))
    assert len(report.converted) == 7 and isinstance(model.features[3], SCConv)
    assert isinstance(model.features[0], nn.Conv2d)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize(
    "conv,reason",
    [
        (nn.Conv2d(8, 8, 1), "kernel 1x1"),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), "depthwise"),
        (nn.Conv2d(3, 8, 3, padding=1), "odd channel count"),
        (nn.Conv2d(8, 8, 3, padding=0), "padding"),
        (nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), "reflect"),
    ],
)
def test_explicitly_selected_ineligible_layers_raise(conv: nn.Conv2d, reason: str) -> None:
    with pytest.raises(ValueError, match=f"cannot convert the selected layers: 0: .*{reason}"):
        scnet.convert(nn.Sequential(conv), predicate=lambda name, c: True, input_size=None)


def test_nothing_eligible_says_so() -> None:
    with pytest.raises(ValueError, match="MobileNetV2 has no convertible 3x3 convolution"):
        scnet.convert(torchvision.models.mobilenet_v2())
    model = torchvision.models.resnet18()
    scnet.convert(model, input_size=None)
    with pytest.raises(ValueError, match="no convertible"):  # a second pass finds only SCConv layers
        scnet.convert(model, input_size=None)
    with pytest.raises(ValueError, match="selected by the predicate"):
        scnet.convert(model, predicate=lambda name, c: c.kernel_size == (3, 3) and "fc" in name, input_size=None)
